"""uvicorn, set up as every listener of the gateway wants it (public, control, metrics).

The gateway brings its own event loop, signal handling, TLS context and proxy-header policy;
uvicorn brings the HTTP/1 protocol (with the edge's limits on public listeners:
http_protocol.py) and its graceful shutdown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any

import uvicorn

from .asgi import ASGIApp
from .config import LimitsSettings
from .http_protocol import protocol_class


class UvicornServer(uvicorn.Server):
    """uvicorn's server, minus its signal handlers: the gateway handles signals itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def uvicorn_server(
    app: ASGIApp, *, drain_s: float, ssl: Any = None, limits: LimitsSettings | None = None
) -> UvicornServer:
    """A uvicorn server for `app`; the public ones get the edge's connection `limits`."""
    config = uvicorn.Config(
        app,
        lifespan="off",
        http=protocol_class(limits) if limits is not None else "httptools",
        ws="none",  # the gateway proxies HTTP only (http_protocol.py refuses upgrades)
        loop="none",
        access_log=False,
        proxy_headers=False,  # the gateway is the edge: no client gets to claim an address
        server_header=False,
        timeout_graceful_shutdown=max(int(drain_s), 1),
        timeout_keep_alive=limits.keepalive_timeout_s if limits is not None else 5,  # type: ignore[arg-type]
        log_config=None,
    )
    config.load()
    config.ssl = ssl  # after load(), which resets it: the gateway brings its own SSLContext
    return UvicornServer(config)
