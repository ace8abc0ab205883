"""The worker process: the gateway itself, on sockets inherited from the master (master.py).

Signals only set things in motion (uvicorn's capture_signals idea): SIGHUP reloads, SIGTERM and
SIGINT start a graceful stop: stop accepting, let in-flight requests finish, stop tenants, exit 0.
An upgrade ends the same way except that the tenants are handed to the new worker, not stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import uvloop
from starlette.requests import Request
from starlette.responses import JSONResponse

from . import handover
from .app import GatewayApp
from .asgi import ASGIApp
from .config import Config, load_config
from .control import bind_control_socket, build_control_app, control_socket_path
from .errors import ConfigError, GatewayError
from .http_server import UvicornServer, uvicorn_server
from .https import RedirectToHttps, StrictTransportSecurity
from .linux import PR_SET_PDEATHSIG, prctl
from .logs import setup_logging
from .master import address_of
from .runtime import Gateway

log = logging.getLogger(__name__)

_UPGRADE_WAIT_S = 150.0
_IDLE_GRACE_S = 2.0


class Worker:
    def __init__(
        self,
        config: Config,
        listeners: dict[str, socket.socket],
        master: socket.socket,
        handover_socket: socket.socket | None,
    ) -> None:
        self.config = config
        self.metrics_listener = listeners.pop("metrics", None)  # not public: see metrics/
        self.listeners = listeners
        self.master = master
        self.handover_socket = handover_socket
        self.gateway = Gateway(config)
        # A configured port 0 is known only now; sign-in links name the port browsers use.
        self.gateway.auth.listening({name: sock.getsockname()[1]
                                     for name, sock in listeners.items()})
        self.app = GatewayApp(self.gateway)
        self.stopping = asyncio.Event()
        self.handed_over = False
        self._upgrade_result: asyncio.Future[dict[str, int]] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    async def run(self) -> None:
        gateway = self.gateway
        drain_s = self.config.gateway.proxy.drain_timeout_s
        limits = self.config.gateway.limits
        public = [(uvicorn_server(app, drain_s=drain_s, ssl=context, limits=limits), sockets)
                  for app, context, sockets in self._public_apps()]
        self._install_signal_handlers()
        if self.handover_socket is not None:
            tenants, generation, cluster_lease = await asyncio.to_thread(
                handover.receive_tenants, self.handover_socket
            )
            await gateway.adopt(tenants, generation, cluster_lease)
        else:
            await gateway.start()
        serving = [asyncio.ensure_future(server.serve(sockets=sockets))
                   for server, sockets in public]
        for (server, _), task in zip(public, serving, strict=True):
            await _started(server, task)
        gateway.history.start()
        metrics = None
        if self.metrics_listener is not None:
            from .metrics import MetricsServer

            metrics = MetricsServer(gateway, self.metrics_listener, lambda: sum(
                len(server.server_state.connections) for server, _ in public))
        if self.handover_socket is not None:
            handover.send(self.handover_socket, {"op": "ready", "pid": os.getpid()})
            self.handover_socket.close()
        control_path = control_socket_path(self.config)
        control = uvicorn_server(self._control_app(), drain_s=5)
        controlling = asyncio.ensure_future(control.serve(sockets=[
            bind_control_socket(control_path)
        ]))
        handover.send(self.master, {"op": "ready"})
        asyncio.get_running_loop().add_reader(self.master.fileno(), self._on_master_message)
        log.info("gateway_listening", extra={
            **{name: address_of(sock) for name, sock in self.listeners.items()},
            **({"metrics": address_of(self.metrics_listener)} if self.metrics_listener else {}),
            "control": str(control_path), "domain": gateway.domain, "worker": os.getpid(),
            "tenants": sorted(gateway.routes),
        })
        await self.stopping.wait()
        servers = [server for server, _ in public]
        log.info("gateway_stopping", extra={"handed_over": self.handed_over, "connections": sum(
            len(server.server_state.connections) for server in servers)})
        await self._drain(servers)
        await asyncio.gather(*serving)
        if self.handed_over:
            if gateway.cluster is not None:  # the new worker carries on with its lease
                await gateway.cluster.stop(revoke=False)
            await gateway.settled()  # processes replaced before the hand-over finish draining
        else:
            await gateway.stop()
        control.should_exit = True
        await controlling
        if metrics is not None:
            await metrics.stop()
        await gateway.history.stop()
        if not self.handed_over:
            with contextlib.suppress(FileNotFoundError):
                control_path.unlink()
        log.info("gateway_stopped", extra={"handed_over": self.handed_over})

    async def _drain(self, public: list[UvicornServer]) -> None:
        """Stop accepting; every response from now on says `Connection: close`, so busy clients
        go away after their next response. Then uvicorn closes idle connections and waits for
        in-flight requests (up to proxy.drain_timeout_s).

        Closing an idle keep-alive connection races with a client that sends on it just then;
        letting busy clients leave first makes that race rare (wrk's connections, never idle,
        all leave within milliseconds)."""
        self.gateway.draining = True
        for server in public:
            for listener in server.servers:
                listener.close()
        deadline = time.monotonic() + _IDLE_GRACE_S
        while any(s.server_state.connections for s in public) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for server in public:
            server.should_exit = True

    def _public_apps(self) -> list[tuple[ASGIApp, ssl.SSLContext | None, list[socket.socket]]]:
        """What each listener serves: the gateway on HTTP; or, with TLS, redirects on HTTP and
        the gateway on HTTPS."""
        certificates = self.gateway.certificates
        https = self.listeners.get("https")
        if https is None or certificates is None:
            return [(self.app, None, list(self.listeners.values()))]
        return [
            (RedirectToHttps(self.gateway, https.getsockname()[1]), None,
             [self.listeners["http"]]),
            (StrictTransportSecurity(self.app, self.gateway), certificates.live.listener, [https]),
        ]

    def _control_app(self) -> ASGIApp:
        async def upgrade(request: Request) -> JSONResponse:
            return JSONResponse({"result": await self.request_upgrade()})

        return build_control_app(self.gateway, {"/upgrade": upgrade})

    async def request_upgrade(self) -> dict[str, int]:
        """Ask the master for a new worker; wait until it has taken over (or failed)."""
        if self._upgrade_result is not None and not self._upgrade_result.done():
            raise GatewayError("an upgrade is already in progress")
        self._upgrade_result = asyncio.get_running_loop().create_future()
        handover.send(self.master, {"op": "upgrade"})
        try:
            async with asyncio.timeout(_UPGRADE_WAIT_S):
                return await self._upgrade_result
        except TimeoutError:
            raise GatewayError("the upgrade did not finish in time; see the log") from None

    def _on_master_message(self) -> None:
        try:
            message, fds = handover.receive(self.master)
        except BlockingIOError:
            return
        if not message:  # the master is gone: so are we (PDEATHSIG may not have fired yet)
            os._exit(1)
        if message.get("op") == "handover" and fds:
            self._spawn(self._hand_over(socket.socket(fileno=fds[0])))
        elif message.get("op") == "upgrade_failed":
            self._settle_upgrade(GatewayError(f"upgrade failed: {message.get('error')}"))

    async def _hand_over(self, peer: socket.socket) -> None:
        """Give every running tenant to the new worker; stop once it serves."""
        gateway = self.gateway
        tenants = await gateway.detach()
        try:
            lease = gateway.cluster.lease.id if gateway.cluster is not None else 0
            await asyncio.to_thread(handover.send_tenants, peer, tenants,
                                    gateway.spawner.current_generation(), lease)
            reply, _ = await asyncio.to_thread(handover.receive, peer)
            if reply.get("op") != "ready":
                raise ConnectionError("the new worker exited before it was ready")
            new_worker = int(reply["pid"])
        except Exception as exc:  # whatever failed, the new worker did not take over: carry on
            gateway.resume()
            error = str(exc) or type(exc).__name__
            log.error("handover_failed", extra={"error": error})
            self._settle_upgrade(GatewayError(f"upgrade failed: {error}; nothing changed"))
            return
        finally:
            peer.close()
        gateway.release()
        self.handed_over = True
        log.info("handover_done", extra={"tenants": [t.handle.tenant for t in tenants]})
        self._settle_upgrade({"old_worker": os.getpid(), "new_worker": new_worker})
        self.stopping.set()

    def _settle_upgrade(self, outcome: dict[str, int] | Exception) -> None:
        future = self._upgrade_result
        if future is None or future.done():
            return
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._spawn_reload)

    def _spawn_reload(self) -> None:
        self._spawn(self._reload())

    def _spawn(self, job: Any) -> None:
        task = asyncio.ensure_future(job)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reload(self) -> None:
        try:
            await self.gateway.reload()
        except ConfigError as exc:
            log.error("reload_rejected", extra={"error": str(exc)})


async def _started(server: UvicornServer, serving: asyncio.Future[None]) -> None:
    """Wait until `server` listens; raise what stopped it if serve() ended first."""
    while not server.started:
        if serving.done():
            serving.result()  # raises what made serve() fail
            raise GatewayError("the listener stopped before it started")
        await asyncio.sleep(0.005)



def run_worker(
    config_path: Path,
    *,
    master_fd: int,
    master_pid: int,
    listen_fds: dict[str, int],
    handover_fd: int | None,
) -> None:
    """`gateway worker` (started by the master only)."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "die with the master")
    if os.getppid() != master_pid:  # the master died before PDEATHSIG was armed
        raise SystemExit(1)
    config = load_config(config_path)
    setup_logging(config.gateway.log.level)
    master = socket.socket(fileno=master_fd)
    master.setblocking(False)
    listeners = {name: socket.socket(fileno=fd) for name, fd in listen_fds.items()}
    peer = socket.socket(fileno=handover_fd) if handover_fd is not None else None

    async def main() -> None:
        await Worker(config, listeners, master, peer).run()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())

