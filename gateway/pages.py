"""The gateway's own HTML and JSON answers: error pages, and the templates behind every page."""

from __future__ import annotations

import json

from .asgi import Send
from .errors import RequestError
from .html import SECURITY_HEADERS, page, render, templates

__all__ = ["SECURITY_HEADERS", "page", "render", "send_error", "send_page", "templates"]

async def send_page(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"text/html; charset=utf-8",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", content_type),
            (b"content-length", b"%d" % len(body)),
            (b"cache-control", b"no-store"),
            *SECURITY_HEADERS,
            *(headers or []),
        ],
    })
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, error: RequestError, *, request_id: str, as_json: bool, site_name: str,
    apex_url: str = "",
) -> None:
    """A clear page naming the status, the tenant and the request id, with a way on (the
    apex's home, sign in: `apex_url`); never a stack trace."""
    if as_json:
        body = json.dumps({
            "ok": False,
            "status": error.status,
            "error": error.title,
            "message": str(error),
            "tenant": error.tenant,
            "request_id": request_id,
        }).encode()
        await send_page(send, error.status, body, content_type=b"application/json",
                        headers=error.headers)
        return
    body = render(
        "error.html",
        title=error.title,
        status=error.status,
        message=str(error),
        tenant=error.tenant,
        request_id=request_id,
        site_name=site_name,
        apex_url=apex_url,
    )
    await send_page(send, error.status, body, headers=error.headers)
