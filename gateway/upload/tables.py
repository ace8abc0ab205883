"""POST /-/upload/delete: an owner deletes a table they no longer want. As for an upload, the
gateway never opens the tenant's file: `python -m gateway.upload.drop_table` does it, as the
tenant, in the importer's sandbox, told which table on fd 3."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from ..asgi import Receive, ResponseAborted, Scope, Send, header
from ..pages import send_page
from .errors import BadUpload, NoSuchTable, UploadFailed
from .importer_process import Importer
from .port import TenantCommand
from .request import check_same_origin

if TYPE_CHECKING:
    from ..backends import TenantRoute

log = logging.getLogger(__name__)

_MAX_FORM_BYTES = 4096
_DROP_S = 60  # the drop waits for the database's write lock: an import committing, say


async def delete_table(tenant_command: TenantCommand, scope: Scope, receive: Receive,
                       send: Send, route: TenantRoute, who: str) -> None:
    check_same_origin(scope)
    fields = await _form(scope, receive)
    database, table = fields.get("database", "").strip(), fields.get("table", "").strip()
    files = {name.rsplit(".", 1)[0]: name for name in route.config.databases}
    if database not in files:
        raise NoSuchTable(f"There is no database {database!r}.")
    if not table:
        raise BadUpload("Name the table to delete (curl: -d database=data -d table=t).")
    argv, env = await tenant_command(route.config, "gateway.upload.drop_table", [])
    dropper = await Importer.start(argv, env)
    finished = False
    try:
        await dropper.end_of_file()
        dropper.commit(json.dumps({"database": files[database], "table": table}).encode())
        async with asyncio.timeout(_DROP_S):
            async for event in dropper.until("done", "error"):
                if event["event"] == "error":
                    raise (NoSuchTable if event.get("status") == 404 else BadUpload)(
                        str(event.get("message")))
                if event["event"] == "done":
                    finished = True
                    table = str(event["table"])
    except TimeoutError:
        raise UploadFailed("The table could not be deleted: its database stayed busy for"
                           f" {_DROP_S} seconds. Try again.") from None
    finally:
        await dropper.close(kill=not finished)
    if not finished:
        raise UploadFailed("The table could not be deleted; nothing was changed. Try again, or"
                           " tell the site's operator.")
    log.info("table_deleted", extra={"tenant": route.name, "user": who, "database": database,
                                     "table": table})
    answer = {"ok": True, "database": database, "table": table, "deleted": True}
    await send_page(send, 200, json.dumps(answer).encode(), content_type=b"application/json")


async def _form(scope: Scope, receive: Receive) -> dict[str, str]:
    kind = (header(scope["headers"], b"content-type") or b"").split(b";")[0].strip()
    if kind != b"application/x-www-form-urlencoded":
        raise BadUpload("Send the database and the table as a form (curl: -d database=data"
                        " -d table=t).")
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ResponseAborted("the client went away")
        body += message.get("body", b"")
        if len(body) > _MAX_FORM_BYTES:
            raise BadUpload("The form is too long.")
        if not message.get("more_body", False):
            return dict(parse_qsl(body.decode("utf-8", "replace")))
