"""The gateway's own HTML and JSON answers: error pages, and the templates behind every page."""

from __future__ import annotations

import json
from typing import Any

import jinja2
from starlette.responses import Response

from .asgi import Send
from .errors import RequestError

templates = jinja2.Environment(
    loader=jinja2.PackageLoader("gateway", "templates"),
    autoescape=jinja2.select_autoescape(default=True),
    enable_async=False,
)

# Sent with every page the gateway itself renders (never added to a tenant's responses).
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"content-security-policy",
     b"default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
     b" form-action 'self' https: http:; frame-ancestors 'none'"),
]


def render(template: str, **context: Any) -> bytes:
    return templates.get_template(template).render(**context).encode()


def page(body: bytes, status: int = 200) -> Response:
    """A page of the apex site (Starlette), with the same headers as send_page's."""
    headers = {k.decode(): v.decode() for k, v in SECURITY_HEADERS}
    return Response(body, status, headers={"cache-control": "no-store", **headers},
                    media_type="text/html")


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
    send: Send, error: RequestError, *, request_id: str, as_json: bool, site_name: str
) -> None:
    """A clear page naming the status, the tenant and the request id; never a stack trace."""
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
    )
    await send_page(send, error.status, body, headers=error.headers)
