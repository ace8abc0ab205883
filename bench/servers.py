"""Servers that bench/proxy runs in processes of their own (never imported by the gateway).

    python bench/servers.py gateway CONFIG TENANT BACKEND
        The gateway's real request path (GatewayApp: routing, headers, limiter, pool, access
        log) under the uvicorn settings of server.py, with TENANT's route published to a fixed
        BACKEND address instead of a supervised Datasette. That is how the ceiling (a trivially
        fast upstream) is measured without a test switch in the package.
    python bench/servers.py aiohttp BACKEND
        The comparison proxy for the hot path's HTTP client: a raw ASGI app forwarding through
        aiohttp's client, as in the first measurement that chose backend_client.

Both listen on 127.0.0.1 on a free port and print it as one line on stdout; BACKEND is
unix:PATH or tcp:HOST:PORT (backend_client.BackendAddress).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import uvloop

from gateway.app import GatewayApp
from gateway.backend_client import BackendAddress
from gateway.backends import Backend, TenantRoute
from gateway.config import load_config
from gateway.http_server import uvicorn_server
from gateway.logs import setup_logging
from gateway.master import bind_tcp
from gateway.proxy import HOP_BY_HOP, Receive, Send
from gateway.runtime import Gateway

Scope = MutableMapping[str, Any]


async def serve(app: Any) -> None:
    sock = bind_tcp("127.0.0.1", 0)
    print(sock.getsockname()[1], flush=True)
    await uvicorn_server(app, drain_s=1).serve(sockets=[sock])


def gateway_on_fixed_backend(config_path: Path, tenant: str, backend: BackendAddress) -> Any:
    config = load_config(config_path)
    setup_logging(config.gateway.log.level)
    gateway = Gateway(config)
    route = TenantRoute(config.tenants[tenant], config.gateway.proxy.max_connections_per_tenant)
    timeout = config.gateway.proxy.connect_timeout_s
    route.publish(Backend(backend, generation=1, connect_timeout=timeout))
    gateway.routes[tenant] = route
    return GatewayApp(gateway)


def aiohttp_proxy(backend: BackendAddress) -> Any:
    import aiohttp

    hop_by_hop = {name.decode() for name in HOP_BY_HOP}
    session: aiohttp.ClientSession | None = None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal session
        if session is None:
            connector = (
                aiohttp.UnixConnector(path=backend.path, limit=100)
                if backend.path
                else aiohttp.TCPConnector(limit=100)
            )
            session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        host = f"{backend.host}:{backend.port}" if backend.host else "backend"
        url = f"http://{host}{scope['raw_path'].decode()}"
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode()
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k.decode() not in hop_by_hop
        ]
        async with session.request(
            scope["method"], url, headers=headers, allow_redirects=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        ) as response:
            await send({
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (k, v) for k, v in response.raw_headers if k.lower().decode() not in hop_by_hop
                ],
            })
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    return app


def main(argv: list[str]) -> None:
    kind, *args = argv
    if kind == "gateway":
        config, tenant, backend = args
        app = gateway_on_fixed_backend(Path(config), tenant, BackendAddress.parse(backend))
    elif kind == "aiohttp":
        (backend,) = args
        app = aiohttp_proxy(BackendAddress.parse(backend))
    else:
        raise SystemExit(f"unknown server {kind!r}")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(app))


if __name__ == "__main__":
    main(sys.argv[1:])
