"""`/-/upload` and `/-/upload.js` on tenant hosts: the upload page, and the POST that streams
one file into a new importer process, commits it where the form says and answers."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..asgi import Message, Receive, ResponseAborted, Scope, Send, content_length, header
from ..config import UploadSettings
from ..errors import GatewayError, RequestError
from ..pages import render, send_error, send_page
from .errors import BadUpload, CannotImport, UploadFailed, UploadStalled, too_large, too_long
from .form import Target, choose_target, importer_options, table_path
from .importer_process import MAX_EVENT_BYTES, Importer
from .port import Authorize, ServeDatabase, TenantCommand
from .request import FormParser, Part, check_same_origin, multipart_boundary
from .tables import delete_table

if TYPE_CHECKING:
    from ..backends import TenantRoute

log = logging.getLogger(__name__)

UPLOAD_PATH = "/-/upload"
SCRIPT_PATH = "/-/upload.js"
DELETE_PATH = "/-/upload/delete"
PATHS = frozenset({UPLOAD_PATH, SCRIPT_PATH, DELETE_PATH})
NDJSON = b"application/x-ndjson"

_MAX_FIELD_BYTES = 1024
_MAX_PARTS = 16
_PROGRESS_LINES_EVERY_S = 0.2
_MULTIPART_OVERHEAD = 64 * 1024  # headers and small fields around the file, for Content-Length
_SCRIPT = (Path(__file__).parent.parent / "static" / "upload.js").read_bytes()


class Uploads:
    """Answers /-/upload, /-/upload.js and /-/upload/delete on tenant hosts."""

    def __init__(self, *, settings: Callable[[], UploadSettings], authorize: Authorize,
                 tenant_command: TenantCommand, serve_database: ServeDatabase) -> None:
        self.settings = settings
        self.authorize = authorize
        self.tenant_command = tenant_command
        self.serve_database = serve_database

    async def __call__(self, scope: Scope, receive: Receive, send: Send, route: TenantRoute,
                       request_id: str) -> None:
        path, method = scope["path"], scope["method"]
        if path == SCRIPT_PATH:
            await send_page(send, 200, _SCRIPT, content_type=b"text/javascript; charset=utf-8")
            return
        if method in ("GET", "HEAD") and path == UPLOAD_PATH:
            await self.authorize(scope, route)
            await self._page(scope, send, route)
        elif method == "POST":
            try:  # the API answers JSON, whatever the client accepts
                with route.lease():  # the tenant is not put to sleep while its data changes
                    if path == DELETE_PATH:
                        who = await self.authorize(scope, route, owner=True)
                        await delete_table(self.tenant_command, scope, receive, send, route,
                                           who)
                    else:
                        who = await self.authorize(scope, route)
                        await self._upload(scope, receive, send, route, who)
            except RequestError as error:
                error.tenant = route.name
                _log_failure(route, error, request_id)
                await send_error(send, error, request_id=request_id, as_json=True,
                                 site_name=route.name)
        else:
            raise BadUpload("Use GET for the upload page and POST to upload.")

    async def _page(self, scope: Scope, send: Send, route: TenantRoute) -> None:
        try:
            await self.authorize(scope, route, owner=True)
            owner = True
        except RequestError:
            owner = False
        title = route.config.settings.title or route.name
        databases = [name.rsplit(".", 1)[0] for name in route.config.databases]
        body = render("upload.html", title=f"Upload CSV files · {title}", site_name=title,
                      apex_url="/", databases=databases, max_file_mb=self.settings().max_file_mb,
                      owner=owner)
        await send_page(send, 200, body)

    async def _upload(self, scope: Scope, receive: Receive, send: Send, route: TenantRoute,
                      who: str) -> None:
        """Receive the file into an importer and stage it, within upload.max_duration_s; then
        commit, publish and answer. Whatever fails, the importer is killed and reaped."""
        check_same_origin(scope)
        settings = self.settings()
        headers = scope["headers"]
        form = FormParser(multipart_boundary(headers))
        limit = settings.max_file_mb * 1024 * 1024
        length = content_length(headers)
        if length is not None and length > limit + _MULTIPART_OVERHEAD:
            raise too_large(settings)
        started = time.monotonic()
        upload = _Upload(self, route, {}, limit, settings)
        stream = _Answer(send, streaming=NDJSON in (header(headers, b"accept") or b""))
        imported = False
        try:
            try:
                async with asyncio.timeout(settings.max_duration_s) as deadline:
                    importer, filename = await upload.receive(form, receive)
                    await stream.start()
                    staged = await _unless_gone(receive, _wait(importer, "staged", stream))
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise too_long(settings) from None
            target = choose_target(upload.fields, filename, route.config.databases)
            importer.commit(target.instruction())
            done = await _wait(importer, "done", stream)
            answer = await self._publish(route, target, staged, done)
            imported = True
            log.info("upload_imported", extra={
                "tenant": route.name, "user": who, "database": target.database,
                "table": target.table, "mode": target.mode, "rows": answer["rows"],
                "bytes": staged.get("bytes"), "duration_s": round(time.monotonic() - started, 3),
                "importer_cpu_s": done.get("cpu_s"), "importer_rss_mb": done.get("max_rss_mb")})
            if stream.started:
                await stream.line({"event": "done", **answer}, more=False)
            else:
                await send_page(send, 200, json.dumps(answer).encode(),
                                content_type=b"application/json")
        except RequestError as error:
            if not stream.started:
                raise
            _log_failure(route, error, "")
            await stream.line({"event": "error", "status": error.status,
                               "message": str(error)}, more=False)
        finally:  # after a commit, once the answer is out: the importer may be checkpointing
            await upload.close(kill=not imported)

    async def _publish(self, route: TenantRoute, target: Target, staged: dict[str, Any],
                       done: dict[str, Any]) -> dict[str, Any]:
        """A new database file needs a hot swap of the tenant before Datasette serves it."""
        answer = {"ok": True, "database": done["database"], "table": done["table"],
                  "rows": done["rows"], "columns": done["columns"], "mode": target.mode,
                  "url": table_path(done["database"], done["table"]),
                  "notes": _notes(staged, done)}
        if target.file_name not in route.config.databases:
            try:
                await self.serve_database(route.name)
            except GatewayError as exc:
                log.error("upload_restart_failed", extra={"tenant": route.name,
                                                          "error": str(exc)})
                answer["warning"] = (f"The table was imported into the new database"
                                     f" {target.database!r}, but the site could not restart to"
                                     " show it yet; the operator has been told.")
        return answer


class _Answer:
    """The answer to a client that accepts JSON lines: started once the upload is in."""

    def __init__(self, send: Send, *, streaming: bool) -> None:
        self.send = send
        self.streaming = streaming
        self.started = False
        self.sent_at = 0.0

    async def start(self) -> None:
        if self.streaming:
            await self.send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", NDJSON), (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff")]})
            self.started = True

    async def progress(self, rows: int) -> None:
        """At most five lines a second: the ones queued while the upload arrived come at once."""
        if self.started and time.monotonic() - self.sent_at >= _PROGRESS_LINES_EVERY_S:
            self.sent_at = time.monotonic()
            await self.line({"event": "progress", "rows": rows})

    async def line(self, event: dict[str, Any], more: bool = True) -> None:
        await self.send({"type": "http.response.body",
                         "body": json.dumps(event).encode() + b"\n", "more_body": more})


async def _wait(importer: Importer, name: str, stream: _Answer) -> dict[str, Any]:
    """The importer's `name` event, with progress lines on the way; an answer whatever ends."""
    async for event in importer.until(name, "error"):
        if event["event"] == name:
            return event
        if event["event"] == "error":
            raise CannotImport(str(event.get("message")))
        if event["event"] == "progress" and isinstance(event.get("rows"), int):
            await stream.progress(event["rows"])
        if event.get("too_large"):
            raise CannotImport(f"The file's first line is too long to be its header: the column"
                               f" names take more than {MAX_EVENT_BYTES // 1048576} MB.")
    log.error("importer_failed", extra={"status": importer.process.returncode,
                                        "output": importer.output[-5:]})
    raise UploadFailed("The import stopped unexpectedly; nothing was changed. Try again, or"
                       " tell the site's operator.")


async def _unless_gone(receive: Receive, waiting: Awaitable[dict[str, Any]]
                       ) -> dict[str, Any]:
    """What `waiting` gives, unless the client hangs up first (the page's Cancel button, once
    the file is in): then nothing is committed."""
    work = asyncio.ensure_future(waiting)
    gone = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        raise ResponseAborted("the client went away before the import")
    finally:
        work.cancel()
        gone.cancel()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _notes(*events: dict[str, Any]) -> list[str]:
    """What the importer changed or guessed (decimal commas, the encoding, a renamed header...),
    from its staged and done events, each note once."""
    notes: list[str] = []
    for event in events:
        for note in event.get("notes") or []:
            if isinstance(note, str) and note not in notes:
                notes.append(note)
    return notes


def _log_failure(route: TenantRoute, error: RequestError, request_id: str) -> None:
    log.warning("upload_failed", extra={"tenant": route.name, "status": error.status,
                                        "reason": str(error), "request_id": request_id})


class _Upload:
    """One request's form: small fields kept, the file streamed into a new importer."""

    def __init__(self, uploads: Uploads, route: TenantRoute, fields: dict[str, str],
                 limit: int, settings: UploadSettings) -> None:
        self.uploads = uploads
        self.route = route
        self.fields = fields
        self.limit = limit
        self.settings = settings
        self.parts = 0
        self.part: Part | None = None
        self.value = b""
        self.importer: Importer | None = None
        self.filename: str | None = None
        self.received = 0

    async def receive(self, form: FormParser, receive: Receive) -> tuple[Importer, str]:
        """The whole request body, the file into the importer; then the end of its stdin."""
        async for kind, value in _form_events(form, receive, self.settings.idle_timeout_s):
            await self.handle(kind, value)
        if not form.finished:
            raise BadUpload("The request body ended before the end of the form.")
        if self.importer is None or self.filename is None:
            raise BadUpload("The form has no file: send it in a field named 'file' (curl:"
                            " -F file=@data.csv).")
        await self.importer.end_of_file()
        return self.importer, self.filename

    async def handle(self, kind: str, value: Any) -> None:
        if kind == "part":
            self.parts += 1
            if self.parts > _MAX_PARTS:
                raise BadUpload(f"The form has more than {_MAX_PARTS} fields.")
            self.part, self.value = value, b""
            if value.filename is not None:
                await self._start_file(value)
        elif kind == "data":
            assert self.part is not None
            if self.part.filename is None:
                self.value += value
                if len(self.value) > _MAX_FIELD_BYTES:
                    raise BadUpload(f"The form field {self.part.name!r} is too long.")
            elif self.importer is not None:
                self.received += len(value)
                if self.received > self.limit:
                    raise too_large(self.settings)
                await self.importer.write(value)
        elif kind == "end" and self.part is not None and self.part.filename is None:
            if self.importer is not None and self.part.name in ("encoding", "delimiter"):
                raise BadUpload(f"Send the {self.part.name!r} field before the file.")
            self.fields[self.part.name] = self.value.decode("utf-8", "replace")

    async def _start_file(self, part: Part) -> None:
        if part.name != "file":
            raise BadUpload(f"Unexpected file in the field {part.name!r}; send it as 'file'.")
        if self.importer is not None:
            raise BadUpload("Send one file per request (the upload page sends them one by one).")
        self.filename = part.filename or "upload.csv"
        options = importer_options(self.fields, self.filename)
        choose_target(self.fields, self.filename, self.route.config.databases)  # fail early
        argv, env = await self.uploads.tenant_command(self.route.config, "gateway.importer",
                                                      options)
        self.importer = await Importer.start(argv, env)

    async def close(self, *, kill: bool) -> None:
        if self.importer is not None:
            await self.importer.close(kill=kill)


async def _form_events(form: FormParser, receive: Receive, idle_timeout_s: float
                       ) -> AsyncIterator[tuple[str, Any]]:
    while True:
        try:
            async with asyncio.timeout(idle_timeout_s):
                message: Message = await receive()
        except TimeoutError:
            raise UploadStalled(f"Nothing arrived for {idle_timeout_s:g} s, so the upload was"
                                " abandoned and nothing was imported.") from None
        if message["type"] == "http.disconnect":
            raise ResponseAborted("the client went away while uploading")
        for event in form.feed(message.get("body", b"")):
            yield event
        if not message.get("more_body", False):
            return
