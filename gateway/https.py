"""The HTTP side of HTTPS: plain HTTP redirects to HTTPS; HTTPS answers carry HSTS.

With TLS on, the plain HTTP listener serves nothing but redirects: 308 (the method and body are
kept, RFC 9110 15.4.9) to the same host, path and query on the HTTPS port. It redirects even
before the first certificate exists, so links made while it is being issued already point at
HTTPS. Only the gateway's own names are redirected; any other Host gets a 404.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .asgi import ASGIApp, Message, Receive, Scope, Send, header
from .config import TlsSettings
from .routing import route_host

if TYPE_CHECKING:
    from .runtime import Gateway


def hsts_header(tls: TlsSettings) -> bytes:
    value = f"max-age={tls.hsts_max_age_s}"
    if tls.hsts_include_subdomains:
        value += "; includeSubDomains"
    return value.encode()


class RedirectToHttps:
    def __init__(self, gateway: Gateway, https_port: int) -> None:
        self.gateway = gateway
        self.port_suffix = "" if https_port == 443 else f":{https_port}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        start = time.perf_counter()
        route = route_host(header(scope["headers"], b"host"), self.gateway.domain)
        if route.kind == "unknown":
            status, headers, body = 404, [], b"No site here.\n"
        else:
            location = f"https://{route.host}{self.port_suffix}".encode() + (
                scope.get("raw_path") or scope["path"].encode())
            if scope["query_string"]:
                location += b"?" + scope["query_string"]
            status, headers, body = 308, [(b"location", location)], b""
        await _answer(send, status, headers, body)
        self.gateway.access_log.write(
            start=start, host=route.host, tenant=route.tenant, method=scope["method"],
            path=scope["path"], status=status, bytes_sent=len(body), attempts=0,
            request_id="",
        )


class StrictTransportSecurity:
    """Adds Strict-Transport-Security (RFC 6797) to every answer of the wrapped app."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        header = (b"strict-transport-security", hsts_header(self.gateway.config.gateway.tls))

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, sending)


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]],
                  body: bytes) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"%d" % len(body))],
    })
    await send({"type": "http.response.body", "body": body})
