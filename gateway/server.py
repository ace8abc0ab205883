"""The process: listening sockets, uvicorn servers, signals, and an orderly way out.

Signals only set things in motion (uvicorn's capture_signals idea): SIGHUP reloads, SIGTERM and
SIGINT start a graceful stop: stop accepting, finish in-flight requests, stop tenants, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn
import uvloop

from .app import GatewayApp
from .config import Config, load_config
from .control import bind_control_socket, build_control_app, control_socket_path
from .errors import ConfigError
from .logs import setup_logging
from .runtime import Gateway

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's server, minus its signal handlers: the gateway handles signals itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _uvicorn_server(app: Any, *, drain_s: float, ssl: Any = None) -> _Server:
    config = uvicorn.Config(
        app,
        lifespan="off",
        http="httptools",
        loop="none",
        access_log=False,
        proxy_headers=False,  # the gateway is the edge: no client gets to claim an address
        server_header=False,
        timeout_graceful_shutdown=int(drain_s) or None,
        log_config=None,
    )
    config.ssl = ssl
    config.load()
    return _Server(config)


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class GatewayProcess:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.gateway = Gateway(config)
        self.app = GatewayApp(self.gateway)
        self.stopping = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()

    async def run(self) -> None:
        gateway = self.gateway
        listen = self.config.gateway.listen
        drain_s = self.config.gateway.proxy.drain_timeout_s
        http_socket = bind_tcp(listen.host, listen.http_port)
        control_path = control_socket_path(self.config)
        control_socket = bind_control_socket(control_path)
        public = _uvicorn_server(self.app, drain_s=drain_s)
        control = _uvicorn_server(build_control_app(gateway), drain_s=5)
        self._install_signal_handlers()
        log.info("gateway_listening", extra={
            "http": f"{listen.host}:{http_socket.getsockname()[1]}",
            "control": str(control_path), "domain": gateway.domain,
            "tenants": sorted(self.config.tenants),
        })
        try:
            await gateway.start()
            servers = [
                asyncio.ensure_future(public.serve(sockets=[http_socket])),
                asyncio.ensure_future(control.serve(sockets=[control_socket])),
            ]
            await self.stopping.wait()
            log.info("gateway_stopping", extra={"in_flight_connections":
                                                len(public.server_state.connections)})
            gateway.draining = True
            public.should_exit = True
            await servers[0]
            await gateway.stop()
            control.should_exit = True
            await servers[1]
            log.info("gateway_stopped")
        finally:
            gateway.kill_all()
            with contextlib.suppress(FileNotFoundError):
                control_path.unlink()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._spawn, self._reload)

    def _spawn(self, job: Any) -> None:
        task = asyncio.ensure_future(job())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reload(self) -> None:
        try:
            await self.gateway.reload()
        except ConfigError as exc:
            log.error("reload_rejected", extra={"error": str(exc)})


def serve(config_path: Path) -> None:
    """Run the gateway until SIGTERM/SIGINT. Raises ConfigError before starting if invalid."""
    config = load_config(config_path)
    setup_logging(config.gateway.log.level)

    async def main() -> None:
        await GatewayProcess(config).run()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
