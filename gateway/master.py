"""The process an operator starts: it holds the listening sockets and runs the gateway itself in
a worker process, which it can replace without dropping a connection.

    gateway serve  (this module: small, no request handling, rarely changes)
      └── gateway worker        the gateway: proxy, supervisor, control socket
            └── tenants         sandboxed Datasette processes

`gateway upgrade` (or SIGUSR2 here) works like nginx's binary upgrade: a new worker starts from
the code now on disk, inherits the listening sockets, and adopts the running tenant processes
from the old worker (handover.py); once it serves, the old worker stops accepting, drains and
exits. The tenants never stop. Splitting the process this way keeps the PID that Docker, tini or
systemd watch alive through an upgrade.

Signals: SIGTERM/SIGINT stop everything gracefully, SIGHUP reloads (forwarded to the worker),
SIGUSR2 upgrades. As a subreaper, this process reaps tenant processes orphaned by an old worker.
A worker that dies unexpectedly is restarted; the worker dies with this process (PDEATHSIG), and
tenants with their worker (the lifeline), so nothing outlives `gateway serve`, SIGKILL included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config, load_config, parse_listen
from .errors import ConfigError
from .linux import PR_SET_CHILD_SUBREAPER, prctl
from .logs import setup_logging

log = logging.getLogger(__name__)

_WORKER_CRASHES_TOLERATED = 5
_WORKER_CRASH_WINDOW_S = 60.0
_UPGRADE_TIMEOUT_S = 120.0


def bind_listeners(config: Config) -> dict[str, socket.socket]:
    """The sockets the gateway serves on, bound once here and inherited by every worker."""
    listen = config.gateway.listen
    listeners = {"http": bind_tcp(listen.host, listen.http_port)}
    if config.tls_enabled:
        listeners["https"] = bind_tcp(listen.host, listen.https_port)
    if config.gateway.metrics.listen:  # here too, so that it survives upgrades
        host, port = parse_listen(config.gateway.metrics.listen) or ("", 0)
        listeners["metrics"] = bind_tcp(host, port)
    return listeners


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
    return sock


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    channel: socket.socket  # master's end of a SOCK_SEQPACKET pair
    ready: asyncio.Future[None]  # the worker serves (and, after a handover, owns the tenants)
    exited: asyncio.Future[int]

    @property
    def pid(self) -> int:
        return self.process.pid


class Master:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        self.listeners = bind_listeners(self.config)
        self.worker: Worker | None = None
        self.starting: Worker | None = None  # a new worker taking over, during an upgrade
        self.retired: dict[int, Worker] = {}  # old workers draining after an upgrade
        self.stopping = False
        self.upgrading = False
        self.exit_code = 0
        self._crashes: list[float] = []
        self._done: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        prctl(PR_SET_CHILD_SUBREAPER, 1, "become the subreaper of its orphans")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        loop.add_signal_handler(signal.SIGUSR2, self._upgrade_soon)
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        self.worker = self._spawn_worker(handover=None)
        log.info("master_started", extra={
            "listening": {name: address_of(sock) for name, sock in self.listeners.items()},
            "worker": self.worker.pid,
        })
        await self._done
        return self.exit_code

    def _spawn_worker(self, handover: socket.socket | None) -> Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = [theirs.fileno(), *(sock.fileno() for sock in self.listeners.values())]
        argv = [
            sys.executable, "-m", "gateway", "--config", str(self.config_path), "worker",
            "--master-fd", str(theirs.fileno()), "--master-pid", str(os.getpid()),
            *[arg for name, sock in self.listeners.items()
              for arg in ("--listen-fd", f"{name}={sock.fileno()}")],
        ]
        if handover is not None:
            argv += ["--handover-fd", str(handover.fileno())]
            fds.append(handover.fileno())
        process = subprocess.Popen(argv, pass_fds=fds)
        theirs.close()
        loop = asyncio.get_running_loop()
        worker = Worker(process, ours, loop.create_future(), loop.create_future())
        ours.setblocking(False)
        loop.add_reader(ours.fileno(), self._on_message, worker)
        return worker

    def _on_message(self, worker: Worker) -> None:
        try:
            data = worker.channel.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(worker.channel.fileno())
            return
        message = json.loads(data)
        if message.get("op") == "ready" and not worker.ready.done():
            worker.ready.set_result(None)
        elif message.get("op") == "upgrade":
            self._upgrade_soon()

    def _upgrade_soon(self) -> None:
        task = asyncio.ensure_future(self.upgrade())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def upgrade(self) -> None:
        """Start a new worker that takes over from the current one (see the module docstring)."""
        old = self.worker
        if old is None or self.stopping or self.upgrading:
            log.warning("upgrade_ignored", extra={"stopping": self.stopping,
                                                  "upgrading": self.upgrading})
            return
        self.upgrading = True
        started = time.monotonic()
        try:
            try:
                self.config = load_config(self.config_path)
            except ConfigError as exc:
                log.error("upgrade_failed", extra={"error": str(exc)})
                _send(old.channel, {"op": "upgrade_failed", "error": str(exc)})
                return
            old_side, new_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            new = self.starting = self._spawn_worker(handover=new_side)
            new_side.close()
            socket.send_fds(old.channel, [json.dumps({"op": "handover"}).encode()],
                            [old_side.fileno()])
            old_side.close()
            waiting: set[asyncio.Future[Any]] = {new.ready, new.exited}
            done, _ = await asyncio.wait(waiting, timeout=_UPGRADE_TIMEOUT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if new.ready not in done:
                error = "the new worker exited" if new.exited in done else "timed out"
                log.error("upgrade_failed", extra={"error": error, "worker": new.pid})
                with contextlib.suppress(ProcessLookupError):
                    new.process.kill()
                return
            self.retired[old.pid] = old
            self.worker = new
            log.info("upgrade_done", extra={"old_worker": old.pid, "new_worker": new.pid,
                                            "seconds": round(time.monotonic() - started, 3)})
        finally:
            self.starting = None
            self.upgrading = False

    def _forward(self, sig: signal.Signals) -> None:
        if self.worker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.worker.pid, sig)

    def stop(self) -> None:
        """Graceful: stop listening here, let the worker drain and stop its tenants."""
        if self.stopping:
            return
        self.stopping = True
        log.info("master_stopping")
        for sock in self.listeners.values():
            sock.close()  # the workers hold their own copies until they have drained
        for worker in [self.worker, *self.retired.values()]:
            if worker is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
        self._finish_if_idle()

    def _reap(self) -> None:
        """Collect every exited child: workers, and tenants orphaned by an old worker."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self._on_exit(pid, os.waitstatus_to_exitcode(status))
        self._finish_if_idle()

    def _on_exit(self, pid: int, code: int) -> None:
        for worker in (self.worker, self.starting, *self.retired.values()):
            if worker is not None and worker.pid == pid:
                break
        else:
            return  # a tenant process orphaned by an old worker
        worker.process.returncode = code
        if not worker.exited.done():
            worker.exited.set_result(code)
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(worker.channel.fileno())
        worker.channel.close()
        if self.retired.pop(pid, None) is not None:
            log.info("worker_retired", extra={"worker": pid, "exit_code": code})
        elif worker is self.worker:
            self.worker = None
            if self.stopping:
                self.exit_code = code
            elif not worker.ready.done():
                # It never served: a config it refuses, a port, a broken install. Starting it
                # again would fail the same way, so say so once and stop.
                log.error("worker_start_failed", extra={"worker": pid, "exit_code": code})
                self.exit_code = code or 1
                self.stop()
            else:
                self._restart_worker(pid, code)

    def _restart_worker(self, pid: int, code: int) -> None:
        now = time.monotonic()
        self._crashes = [t for t in self._crashes if now - t < _WORKER_CRASH_WINDOW_S] + [now]
        if len(self._crashes) > _WORKER_CRASHES_TOLERATED:
            log.error("worker_crash_loop", extra={"worker": pid, "exit_code": code})
            self.exit_code = 1
            self.stop()
            return
        log.error("worker_crashed", extra={"worker": pid, "exit_code": code})
        self.worker = self._spawn_worker(handover=None)

    def _finish_if_idle(self) -> None:
        if (self.stopping and self.worker is None and not self.retired
                and self._done is not None and not self._done.done()):
            self._done.set_result(None)


def _send(channel: socket.socket, message: dict[str, object]) -> None:
    with contextlib.suppress(OSError):
        channel.send(json.dumps(message).encode())


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def serve(config_path: Path) -> int:
    """`gateway serve`: run until SIGTERM/SIGINT; the exit status of the last worker."""
    config = load_config(config_path)
    setup_logging(config.gateway.log.level)
    master = Master(config_path)
    return asyncio.run(master.run())
