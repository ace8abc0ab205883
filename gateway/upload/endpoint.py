"""`/-/upload` and `/-/upload.js` on tenant hosts: the upload page, and the POST that streams
one file into a new importer process, commits it where the form says and answers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import sandbox
from ..asgi import Message, Receive, ResponseAborted, Scope, Send, content_length, header
from ..config import UploadSettings
from ..errors import GatewayError, RequestError
from ..pages import render, send_error, send_page
from .errors import BadUpload, CannotImport, UploadFailed, UploadStalled, too_large
from .form import Target, choose_target, importer_options, table_path
from .importer_process import Importer
from .request import FormParser, Part, check_same_origin, multipart_boundary

if TYPE_CHECKING:
    from ..backends import TenantRoute
    from ..runtime import Gateway

log = logging.getLogger(__name__)

UPLOAD_PATH = "/-/upload"
SCRIPT_PATH = "/-/upload.js"
PATHS = frozenset({UPLOAD_PATH, SCRIPT_PATH})
NDJSON = b"application/x-ndjson"

_MAX_FIELD_BYTES = 1024
_MAX_PARTS = 16
_PROGRESS_LINES_EVERY_S = 0.2
_MULTIPART_OVERHEAD = 64 * 1024  # headers and small fields around the file, for Content-Length
_SCRIPT = (Path(__file__).parent.parent / "static" / "upload.js").read_bytes()

# Decides whether this request may upload to this tenant: returns who (for the log), or
# raises a RequestError (401, 403, a redirect to sign in...) to answer instead.
Authorize = Callable[[Scope, "TenantRoute"], Awaitable[str]]


class Uploads:
    """Answers /-/upload and /-/upload.js on tenant hosts."""

    def __init__(self, gateway: Gateway, authorize: Authorize) -> None:
        self.gateway = gateway
        self.authorize = authorize

    @property
    def settings(self) -> UploadSettings:
        return self.gateway.config.gateway.upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send, route: TenantRoute,
                       request_id: str) -> None:
        if scope["path"] == SCRIPT_PATH:
            await send_page(send, 200, _SCRIPT, content_type=b"text/javascript; charset=utf-8")
            return
        if scope["method"] in ("GET", "HEAD"):
            await self.authorize(scope, route)
            await self._page(send, route)
        elif scope["method"] == "POST":
            try:  # the API answers JSON, whatever the client accepts
                who = await self.authorize(scope, route)
                await self._upload(scope, receive, send, route, who)
            except RequestError as error:
                error.tenant = route.name
                _log_failure(route, error, request_id)
                await send_error(send, error, request_id=request_id, as_json=True,
                                 site_name=self.gateway.domain)
        else:
            raise BadUpload("Use GET for the upload page and POST to upload.")

    async def _page(self, send: Send, route: TenantRoute) -> None:
        title = route.config.settings.title or route.name
        databases = [name.rsplit(".", 1)[0] for name in route.config.databases]
        body = render("upload.html", title=f"Upload CSV files · {title}", site_name=title,
                      apex_url="/", databases=databases, max_file_mb=self.settings.max_file_mb)
        await send_page(send, 200, body)

    async def _upload(self, scope: Scope, receive: Receive, send: Send, route: TenantRoute,
                      who: str) -> None:
        check_same_origin(scope)
        headers = scope["headers"]
        form = FormParser(multipart_boundary(headers))
        limit = self.settings.max_file_mb * 1024 * 1024
        length = content_length(headers)
        if length is not None and length > limit + _MULTIPART_OVERHEAD:
            raise too_large(self.settings)
        started = time.monotonic()
        fields: dict[str, str] = {}
        upload = _Upload(self, route, fields, limit)
        try:
            async for kind, value in _form_events(form, receive, self.settings.idle_timeout_s):
                await upload.handle(kind, value)
            if not form.finished:
                raise BadUpload("The request body ended before the end of the form.")
            importer, filename = upload.finish()
            await importer.end_of_file()
        except BaseException:
            await upload.abandon()
            raise
        try:
            await self._import(scope, send, route, importer, fields, filename, who, started)
        finally:
            await importer.close()

    async def _import(self, scope: Scope, send: Send, route: TenantRoute, importer: Importer,
                      fields: dict[str, str], filename: str, who: str, started: float) -> None:
        """The upload is in: let the importer finish, commit where the form says, answer."""
        streaming = NDJSON in (header(scope["headers"], b"accept") or b"")
        if streaming:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", NDJSON), (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff")]})
        try:
            staged = await self._wait(importer, "staged", send if streaming else None)
            target = choose_target(fields, filename, route.config.databases)
            importer.commit(target)
            done = await self._wait(importer, "done", send if streaming else None)
            answer = await self._publish(route, target, done)
        except RequestError as error:
            if not streaming:
                raise
            _log_failure(route, error, "")
            line = {"event": "error", "status": error.status, "message": str(error)}
            await _send_line(send, line, more=False)
            return
        log.info("upload_imported", extra={
            "tenant": route.name, "user": who, "database": target.database,
            "table": target.table, "mode": target.mode, "rows": answer["rows"],
            "bytes": staged.get("bytes"), "duration_s": round(time.monotonic() - started, 3),
            "importer_cpu_s": done.get("cpu_s"), "importer_rss_mb": done.get("max_rss_mb")})
        if streaming:
            await _send_line(send, {"event": "done", **answer}, more=False)
        else:
            await send_page(send, 200, json.dumps(answer).encode(),
                            content_type=b"application/json")

    async def _wait(self, importer: Importer, name: str, send: Send | None) -> dict[str, Any]:
        """The importer's `name` event; on the way, progress lines for a streaming client (at
        most five a second: the ones queued while the upload arrived come all at once)."""
        sent = 0.0
        async for event in importer.until(name, "error"):
            if event["event"] == name:
                return event
            if event["event"] == "error":
                raise CannotImport(event["message"])
            due = time.monotonic() - sent >= _PROGRESS_LINES_EVERY_S
            if event["event"] == "progress" and send is not None and due:
                sent = time.monotonic()
                await _send_line(send, {"event": "progress", "rows": event["rows"]})
        log.error("importer_failed", extra={"status": importer.process.returncode,
                                            "output": importer.output[-5:]})
        raise UploadFailed("The import stopped unexpectedly; nothing was changed. Try again, or"
                           " tell the site's operator.")

    async def _publish(self, route: TenantRoute, target: Target, done: dict[str, Any]
                       ) -> dict[str, Any]:
        """A new database file needs a hot swap of the tenant before Datasette serves it."""
        answer = {"ok": True, "database": done["database"], "table": done["table"],
                  "rows": done["rows"], "columns": done["columns"], "mode": target.mode,
                  "url": table_path(done["database"], done["table"])}
        if target.file_name not in route.config.databases:
            try:
                await self.gateway.restart_tenant(route.name)
            except GatewayError as exc:
                log.error("upload_restart_failed", extra={"tenant": route.name,
                                                          "error": str(exc)})
                answer["warning"] = (f"The table was imported into the new database"
                                     f" {target.database!r}, but the site could not restart to"
                                     " show it yet; the operator has been told.")
        return answer


def _log_failure(route: TenantRoute, error: RequestError, request_id: str) -> None:
    log.warning("upload_failed", extra={"tenant": route.name, "status": error.status,
                                        "reason": str(error), "request_id": request_id})


class _Upload:
    """One request's form: small fields kept, the file streamed into a new importer."""

    def __init__(self, uploads: Uploads, route: TenantRoute, fields: dict[str, str],
                 limit: int) -> None:
        self.uploads = uploads
        self.route = route
        self.fields = fields
        self.limit = limit
        self.parts = 0
        self.part: Part | None = None
        self.value = b""
        self.importer: Importer | None = None
        self.filename: str | None = None
        self.received = 0

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
                    raise too_large(self.uploads.settings)
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
        spawner = self.uploads.gateway.spawner
        tenant = self.route.config
        uid = await asyncio.to_thread(spawner.tenant_user, tenant)
        argv, env = sandbox.importer_command(
            spawner.isolation, uid=uid if uid is not None else os.getuid(),
            settings=tenant.settings, data_dir=tenant.data_dir, importer_args=options)
        self.importer = await Importer.start(argv, env)

    def finish(self) -> tuple[Importer, str]:
        if self.importer is None or self.filename is None:
            raise BadUpload("The form has no file: send it in a field named 'file' (curl:"
                            " -F file=@data.csv).")
        return self.importer, self.filename

    async def abandon(self) -> None:
        if self.importer is not None:
            await self.importer.close(kill=True)


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


async def _send_line(send: Send, event: dict[str, Any], more: bool = True) -> None:
    await send({"type": "http.response.body", "body": json.dumps(event).encode() + b"\n",
                "more_body": more})
