"""Prometheus metrics at /metrics, on a listener of its own that is not public ([metrics]).

    requests.py   per-tenant request counters, one call per request from app.py
    events.py     counts of log events: sign-ins, uploads, certificates, reloads
    tenants.py    per-tenant metrics, read and written at scrape time
    collector.py  gateway-wide metrics, a prometheus_client collector
    backup.py     replication's: lag, failed syncs, the object storage

The master binds the listener (master.py), so it survives upgrades like the public ones; each
worker serves it with a small uvicorn server of its own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from ..asgi import Receive, Scope, Send
from ..http_server import uvicorn_server
from .backup import BackupCollector
from .collector import GatewayCollector
from .tenants import render_tenants

if TYPE_CHECKING:
    from ..runtime import Gateway

log = logging.getLogger(__name__)

PATH = "/metrics"


class Metrics:
    """The /metrics ASGI app."""

    def __init__(self, gateway: Gateway, connections: Callable[[], int]) -> None:
        self.events = gateway.events
        self.gateway = gateway
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # the gateway's own CPU, memory, open files
        self.registry.register(GatewayCollector(gateway, self.events, connections))
        self.registry.register(BackupCollector(gateway.backups))

    def render(self) -> bytes:
        tenants = render_tenants(self.gateway, self.gateway.request_metrics, self.events)
        return generate_latest(self.registry) + tenants.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """GET /metrics, uncompressed: on loopback, gzip (which Prometheus asks for) would
        cost the gateway more than it saves (bench/metrics.py)."""
        if scope["type"] != "http":
            return
        if scope["path"] == PATH and scope["method"] in ("GET", "HEAD"):
            status, content_type, body = 200, CONTENT_TYPE_PLAIN_0_0_4, self.render()
        else:
            status, content_type = 404, "text/plain; charset=utf-8"
            body = f"Metrics are at GET {PATH}.\n".encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body",
                    "body": body if scope["method"] != "HEAD" else b""})

class MetricsServer:
    """Serves Metrics on the inherited listener until `stop`."""

    def __init__(self, gateway: Gateway, listener: socket.socket,
                 connections: Callable[[], int]) -> None:
        host = listener.getsockname()[0]
        if not _is_private(host):
            log.warning("metrics_listener_public", extra={
                "address": host, "hint": "anyone who can reach it sees every tenant's metrics:"
                " set [metrics] listen to a loopback or private address"})
        self.metrics = Metrics(gateway, connections)
        self.server = uvicorn_server(self.metrics, drain_s=1)
        self._serving = asyncio.ensure_future(self.server.serve(sockets=[listener]))

    async def stop(self) -> None:
        self.server.should_exit = True
        await self._serving


def _is_private(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not address.is_unspecified and (address.is_loopback or address.is_private)
