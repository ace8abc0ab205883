"""Prometheus metrics at /metrics, on a listener of its own that is not public ([metrics]).

    requests.py   per-tenant request counters, one call per request from app.py
    events.py     counts of log events: sign-ins, uploads, certificates, reloads
    collector.py  everything else, read at scrape time

The master binds the listener (master.py), so it survives upgrades like the public ones; each
worker serves it with a small uvicorn server of its own.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, make_asgi_app

from .collector import GatewayCollector
from .events import EventCounts

if TYPE_CHECKING:
    from ..runtime import Gateway

PATH = "/metrics"


class Metrics:
    """The /metrics ASGI app; counts log events from when it is made until `close`."""

    def __init__(self, gateway: Gateway, connections: Callable[[], int]) -> None:
        self.events = EventCounts()
        logging.getLogger().addHandler(self.events)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # the gateway's own CPU, memory, open files
        self.registry.register(
            GatewayCollector(gateway, gateway.request_metrics, self.events, connections)
        )
        self._app = make_asgi_app(self.registry)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == PATH and scope["method"] in ("GET", "HEAD"):
            await self._app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
        await send({"type": "http.response.body", "body": f"Metrics are at {PATH}.\n".encode()})

    def close(self) -> None:
        logging.getLogger().removeHandler(self.events)


class MetricsServer:
    """Serves Metrics on the inherited listener until `stop`."""

    def __init__(self, gateway: Gateway, listener: socket.socket,
                 connections: Callable[[], int]) -> None:
        from ..server import uvicorn_server

        self.metrics = Metrics(gateway, connections)
        self.server = uvicorn_server(self.metrics, drain_s=1)
        self._serving = asyncio.ensure_future(self.server.serve(sockets=[listener]))

    async def stop(self) -> None:
        self.server.should_exit = True
        await self._serving
        self.metrics.close()
