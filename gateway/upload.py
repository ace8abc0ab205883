"""`/-/upload` on tenant hosts: the page where members pick CSV files, and the endpoint that
streams one file into the tenant's importer (importer/), which runs as the tenant, sandboxed.

    client --multipart/form-data--> FormParser: parts as they arrive
                                      |-- the file's bytes ------------> importer stdin
                                      |<-- progress, staged, done ------ importer stdout
                                      \\-- the form's choices, at end --> importer fd 3 (commit)

Nothing is held whole: uvicorn hands over ~64 KB at a time and each piece waits until the
importer has taken it, so backpressure reaches the client through TCP. The gateway never opens
a tenant's file: it picks the database file name and the importer, as the tenant, writes it.
If the upload fails or the client goes away, fd 3 closes without an instruction and nothing is
written. A new database file is served after a hot swap of the tenant (Gateway.restart_tenant).

Answers are JSON. A client that accepts application/x-ndjson (the page does) gets, once the
upload is in, one JSON line per step: progress (rows so far), then done or error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from . import sandbox
from .config import UploadSettings
from .errors import GatewayError, RequestError
from .importer.commit import MODES
from .importer.dialect import DELIMITER_NAMES
from .importer.errors import ImportFailed
from .importer.names import check_table_name, table_name_for
from .pages import render, send_error, send_page
from .proxy import Message, Receive, ResponseAborted, Scope, Send

if TYPE_CHECKING:
    from .backends import TenantRoute
    from .runtime import Gateway

log = logging.getLogger(__name__)

UPLOAD_PATH = "/-/upload"
SCRIPT_PATH = "/-/upload.js"
PATHS = frozenset({UPLOAD_PATH, SCRIPT_PATH})
NDJSON = b"application/x-ndjson"

_NEW_DATABASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_MAX_FIELD_BYTES = 1024
_MAX_PARTS = 16
_PROGRESS_LINES_EVERY_S = 0.2
_MULTIPART_OVERHEAD = 64 * 1024  # headers and small fields around the file, for Content-Length
_DELIMITERS = {name: char for char, name in DELIMITER_NAMES.items()}
_SCRIPT = (Path(__file__).parent / "static" / "upload.js").read_bytes()

# Decides whether this request may upload to this tenant: returns who (for the log), or
# raises a RequestError (401, 403, a redirect to sign in...) to answer instead.
Authorize = Callable[[Scope, "TenantRoute"], Awaitable[str]]


class BadUpload(RequestError):
    status = 400
    title = "Bad upload"


class UploadTooLarge(RequestError):
    status = 413
    title = "File too large"


class CannotImport(RequestError):
    status = 422
    title = "Cannot import this file"


class UploadFailed(RequestError):
    status = 500
    title = "Upload failed"


class UploadStalled(RequestError):
    status = 408
    title = "Upload stalled"


class Forbidden(RequestError):
    status = 403
    title = "Not allowed"


# --- the form (pure) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where one uploaded file goes, decided from the form and the tenant's databases."""

    database: str  # Datasette's name for it: the file name without its suffix
    file_name: str
    create_database: bool
    table: str
    mode: str

    def instruction(self) -> bytes:
        """What the importer reads on fd 3 (importer.commit.Target)."""
        return json.dumps({"database": self.file_name, "table": self.table, "mode": self.mode,
                           "create_database": self.create_database}).encode()


def choose_target(fields: Mapping[str, str], filename: str,
                  databases: tuple[str, ...]) -> Target:
    """The form's `database`, `table` and `mode`, checked. Defaults: the tenant's first database
    (or a new one named "data"), a table named after the file, create."""
    mode = fields.get("mode", "").strip() or "create"
    if mode not in MODES:
        raise BadUpload(f"Unknown mode {mode!r}: use create, replace or append.")
    try:
        table = check_table_name(fields.get("table", "").strip() or table_name_for(filename))
    except ImportFailed as exc:
        raise BadUpload(str(exc)) from None
    existing = {file_name.rsplit(".", 1)[0]: file_name for file_name in databases}
    database = fields.get("database", "").strip() or min(existing, default="data")
    if database in existing:
        return Target(database, existing[database], False, table, mode)
    if not _NEW_DATABASE.fullmatch(database):
        raise BadUpload(f"{database!r} cannot name a new database: use up to 64 letters, digits,"
                        " '_' and '-', starting with a letter or digit.")
    return Target(database, f"{database}.db", True, table, mode)


def importer_options(fields: Mapping[str, str], filename: str) -> list[str]:
    """Command-line options for the importer from the form's optional encoding and delimiter."""
    options = ["--filename", filename]
    encoding = fields.get("encoding", "").strip()
    if encoding and encoding != "auto":
        options += ["--encoding", encoding]
    delimiter = fields.get("delimiter", "").strip()
    if delimiter and delimiter != "auto":
        if delimiter not in _DELIMITERS:
            raise BadUpload("The delimiter must be auto, comma, semicolon, tab or pipe.")
        options += ["--delimiter", _DELIMITERS[delimiter]]
    return options


def table_path(database: str, table: str) -> str:
    """Datasette's URL of a table (its tilde-encoding, datasette.utils.tilde_encode, which the
    gateway does not import: loading Datasette takes most of a second)."""
    return f"/{_tilde_encode(database)}/{_tilde_encode(table)}"


_TILDE_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _tilde_encode(text: str) -> str:
    return "".join(chr(b) if b in _TILDE_SAFE else "+" if b == 0x20 else f"~{b:02X}"
                   for b in text.encode())


# --- multipart/form-data, as it arrives (pure) ------------------------------------------------


@dataclass(slots=True)
class Part:
    name: str
    filename: str | None


@dataclass(slots=True)
class FormParser:
    """Request body chunks -> events: ("part", Part), ("data", bytes), ("end", None) per part."""

    boundary: bytes
    events: list[tuple[str, Any]] = field(default_factory=list)
    finished: bool = False
    _header_name: bytes = b""
    _header_value: bytes = b""
    _disposition: bytes = b""
    _parser: MultipartParser | None = None

    def __post_init__(self) -> None:
        self._parser = MultipartParser(self.boundary, {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda data, start, end: self._add_name(data[start:end]),
            "on_header_value": lambda data, start, end: self._add_value(data[start:end]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": lambda data, start, end: self.events.append(
                ("data", bytes(data[start:end]))),
            "on_part_end": lambda: self.events.append(("end", None)),
            "on_end": self._on_end,
        })

    def feed(self, chunk: bytes) -> list[tuple[str, Any]]:
        assert self._parser is not None
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise BadUpload(f"The request body is not valid multipart/form-data ({exc}).") from None
        events, self.events = self.events, []
        return events

    def _on_part_begin(self) -> None:
        self._disposition = b""

    def _add_name(self, data: bytes) -> None:
        self._header_name += data

    def _add_value(self, data: bytes) -> None:
        self._header_value += data

    def _on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self.events.append(("part", Part(
            name, None if filename is None else filename.decode("utf-8", "replace"))))

    def _on_end(self) -> None:
        self.finished = True


def multipart_boundary(headers: list[tuple[bytes, bytes]]) -> bytes:
    content_type = next((v for k, v in headers if k == b"content-type"), b"")
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise BadUpload("Send the file as multipart/form-data, in a field named 'file' (curl:"
                        " -F file=@data.csv).")
    return boundary


def content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    value = next((v for k, v in headers if k == b"content-length"), None)
    return int(value) if value is not None and value.isdigit() else None


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    return next((v for k, v in headers if k == name), b"")


def too_large(settings: UploadSettings) -> UploadTooLarge:
    return UploadTooLarge(f"The file is larger than this site's limit of"
                          f" {settings.max_file_mb:,} MB.")


def check_same_origin(scope: Scope) -> None:
    """Browsers say where a request comes from; refuse other origins (cross-site request
    forgery: another site's page posting a file with the member's cookies). curl says nothing."""
    headers = scope["headers"]
    site = header(headers, b"sec-fetch-site")
    if site and site not in (b"same-origin", b"none"):
        raise Forbidden("Uploads are accepted only from this site's own upload page.")
    origin = header(headers, b"origin")
    if origin and origin != f"{scope['scheme']}://".encode() + header(headers, b"host"):
        raise Forbidden("Uploads are accepted only from this site's own upload page.")


# --- the importer process (I/O) ---------------------------------------------------------------


class Importer:
    """One `python -m gateway.importer`: bytes in, events out, then the commit instruction."""

    def __init__(self, process: asyncio.subprocess.Process, commit_fd: int) -> None:
        self.process = process
        self.commit_fd = commit_fd
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.accepting = True  # False once it stopped reading (it found the file broken)
        self.output: list[str] = []
        self._readers = [asyncio.ensure_future(self._read_events()),
                         asyncio.ensure_future(self._read_errors())]

    @classmethod
    async def start(cls, argv: list[str], env: dict[str, str]) -> Importer:
        commit_read, commit_write = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, "--commit-fd", str(commit_read), env=env, pass_fds=(commit_read,),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True,
            )
        except OSError as exc:
            os.close(commit_write)
            raise UploadFailed(f"The importer could not be started ({exc.strerror}).") from None
        finally:
            os.close(commit_read)
        return cls(process, commit_write)

    async def write(self, data: bytes) -> None:
        stdin = self.process.stdin
        if not self.accepting or stdin is None:
            return
        try:
            stdin.write(data)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            self.accepting = False

    async def end_of_file(self) -> None:
        stdin = self.process.stdin
        if stdin is not None:
            stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await stdin.wait_closed()

    def commit(self, target: Target) -> None:
        os.write(self.commit_fd, target.instruction())
        self.cancel()

    def cancel(self) -> None:
        """Close fd 3: without an instruction written before, the importer writes nothing."""
        if self.commit_fd >= 0:
            os.close(self.commit_fd)
            self.commit_fd = -1

    async def until(self, *names: str) -> AsyncIterator[dict[str, Any]]:
        """Events up to and including the first one named in `names` (or the importer's exit)."""
        while True:
            event = await self.events.get()
            yield event
            if event["event"] in names or event["event"] == "exit":
                return

    async def close(self, kill: bool = False) -> None:
        """Make sure the process is gone (killed if it still runs) and its pipes are read.
        After an import it may still be checkpointing the database: give it a minute."""
        self.cancel()
        await self.end_of_file()
        if self.process.returncode is None and not kill:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 60)
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)

    async def _read_events(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                self.output.append(line.decode("utf-8", "replace").rstrip())
                continue
            self.events.put_nowait(event)
        await self.process.wait()
        self.events.put_nowait({"event": "exit", "status": self.process.returncode})

    async def _read_errors(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.output.append(line.decode("utf-8", "replace").rstrip())
            del self.output[:-20]


# --- the endpoint -----------------------------------------------------------------------------


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
        streaming = NDJSON in header(scope["headers"], b"accept")
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
