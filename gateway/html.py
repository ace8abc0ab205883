"""The gateway's own pages, as a page module needs them: the templates, and the headers every
page the gateway renders itself carries. Imports nothing of ours, so that auth/ renders its
pages without importing the app's error pages (pages.py).
"""

from __future__ import annotations

import time
from typing import Any

import jinja2
from starlette.responses import Response

templates = jinja2.Environment(
    loader=jinja2.PackageLoader("gateway", "templates"),
    autoescape=jinja2.select_autoescape(default=True),
    enable_async=False,
)
templates.filters["datetime"] = lambda seconds: time.strftime("%Y-%m-%d %H:%M UTC",
                                                              time.gmtime(seconds))

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
