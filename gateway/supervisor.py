"""Tenant processes: spawn, health gate, crash restarts with backoff, blue/green replace, stop.

Lifecycle of one tenant (TenantSupervisor):

    starting --healthy--> running --exit--> restarting --healthy--> running
                             |                  \\--too many crashes--> failed --restart--> starting
                             \\--replace: new one healthy, switch, drain old--> running
    any --stop--> stopped

A process is never routed to before its health check passes. A replacement that never gets
healthy is stopped and the old process keeps serving. Every process holds the read end of a
lifeline pipe (see tenant_process.py), so none outlives the gateway, SIGKILL included. One
process's pipes, exit and stopping are process.py's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from . import sandbox
from .backend_client import BackendAddress, ConnectionPool
from .backends import Backend, TenantRoute
from .config import Config, TenantConfig
from .datasette_settings import setting_args
from .errors import BackendUnavailable, GatewayError
from .keys import tenant_secret
from .process import ProcessHandle, TenantProcess
from .tenant_files import make_private_dir, prepare_tenant_dir, tenant_uid

log = logging.getLogger(__name__)

_HEALTH_POLL_S = 0.005


class StartFailed(GatewayError):
    """A new tenant process exited or stayed unhealthy; the message says why."""


class Spawner:
    """Everything needed to start tenant processes the same way every time."""

    def __init__(self, config: Config, isolation: sandbox.Isolation, master_key: bytes) -> None:
        self.config = config
        self.isolation = isolation
        self.master_key = master_key
        self.run_dir = config.gateway.paths.run_dir
        self._generation = _highest_generation(self.run_dir)

    def continue_generations(self, generation: int) -> None:
        """After a handover: never reuse a generation (a socket folder) the old worker used."""
        self._generation = max(self._generation, generation)

    async def adopt(self, tenant: TenantConfig, handle: ProcessHandle) -> TenantProcess:
        """Take over a process another worker started; StartFailed if it does not answer."""
        backend = Backend(
            BackendAddress(path=str(handle.run_dir / sandbox.SOCKET_NAME)),
            generation=handle.generation,
            connect_timeout=self.config.gateway.proxy.connect_timeout_s,
        )
        process = TenantProcess(handle, backend, popen=None)
        process.child_pid.cancel()  # known already: handle.signal_pid
        host = f"{tenant.name}.{self.config.domain}".encode()
        status = None if process.exited.done() else await _probe(backend.address, host)
        if status is None or status >= 500:
            await process.stop(0)
            raise StartFailed(f"tenant {tenant.name!r}: the adopted process does not answer")
        return process

    def remove_stale_run_dirs(self) -> None:
        """Socket folders left by processes of an earlier gateway (all gone: they die with it)."""
        with contextlib.suppress(FileNotFoundError):
            for entry in self.run_dir.iterdir():
                if entry.name.isdigit() and entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)

    def current_generation(self) -> int:
        return self._generation

    def next_generation(self) -> int:
        self._generation += 1
        return self._generation

    async def launch(self, tenant: TenantConfig) -> TenantProcess:
        """Start a new process for `tenant` and return it once healthy (else StartFailed)."""
        generation = self.next_generation()
        process = await self._spawn(tenant, generation)
        started = time.perf_counter()
        try:
            await self._wait_healthy(tenant, process)
        except BaseException:
            await process.stop(0)
            raise
        log.info("tenant_started", extra={
            "tenant": tenant.name, "generation": generation, "pid": process.handle.signal_pid,
            "ready_s": round(time.perf_counter() - started, 3), "isolation": self.isolation.level,
        })
        return process

    def tenant_user(self, tenant: TenantConfig) -> int | None:
        """The uid the tenant's processes run as (None: the gateway cannot switch users), its
        folders' owners and modes made right for it."""
        uid = None
        if self.isolation.switches_user:
            paths = self.config.gateway.paths
            uid = tenant_uid(tenant.directory, paths.tenants_dir, self.config.gateway.sandbox)
        prepare_tenant_dir(tenant.directory, uid)
        return uid

    async def _spawn(self, tenant: TenantConfig, generation: int) -> TenantProcess:
        gateway = self.config.gateway
        uid = self.tenant_user(tenant)
        run_dir = self.run_dir / str(generation)  # short: socket paths are limited to 107 bytes
        make_private_dir(run_dir, uid)
        paths = sandbox.TenantPaths(
            venv=sandbox.venv_prefix(),
            package_parent=sandbox.gateway_package_parent(),
            data_dir=tenant.data_dir,
            run_dir=run_dir,
            metadata_file=tenant.directory / tenant.metadata_file if tenant.metadata_file else None,
            plugins_dir=tenant.directory / "plugins" if tenant.has_plugins else None,
        )
        view = sandbox.sandbox_view(self.isolation, paths)
        databases = [str(view.data_dir / name) for name in tenant.databases]
        lifeline_read, lifeline_write = os.pipe()
        status_read, status_write = os.pipe()
        output_read, output_write = os.pipe()
        launch = sandbox.launch(
            self.isolation,
            uid=uid if uid is not None else os.getuid(),
            settings=tenant.settings,
            paths=paths,
            lifeline_fd=lifeline_read,
            status_fd=status_write,
            secret=tenant_secret(self.master_key, tenant.name),
            databases=databases,
            datasette_args=self._datasette_args(tenant, view, databases),
        )
        try:
            popen = subprocess.Popen(
                launch.argv,
                env=launch.env,
                pass_fds=(lifeline_read, status_write),
                stdin=subprocess.DEVNULL,
                stdout=output_write,
                stderr=output_write,
                start_new_session=True,  # a terminal's Ctrl-C reaches the gateway, not tenants
            )
        except OSError as exc:
            for fd in (lifeline_read, lifeline_write, status_read, status_write, output_read,
                       output_write):
                os.close(fd)
            raise StartFailed(f"cannot start {launch.argv[0]}: {exc}") from None
        for fd in (lifeline_read, status_write, output_write):
            os.close(fd)
        if not self.isolation.uses_bwrap:
            os.close(status_read)
            status_read = -1
        handle = ProcessHandle(
            tenant=tenant.name,
            generation=generation,
            pid=popen.pid,
            signal_pid=popen.pid,
            lifeline_fd=lifeline_write,
            output_fd=output_read,
            status_fd=status_read,
            run_dir=run_dir,
            uid=uid,
        )
        backend = Backend(
            BackendAddress(path=str(launch.socket_path)),
            generation=generation,
            connect_timeout=gateway.proxy.connect_timeout_s,
        )
        process = TenantProcess(handle, backend, popen)
        # Inside bwrap, Datasette (the process that drains on SIGTERM) has a pid of its own.
        with contextlib.suppress(TimeoutError):
            child_pid = await asyncio.wait_for(asyncio.shield(process.child_pid), 10)
            if child_pid is not None:
                handle.signal_pid = child_pid
        return process

    def _datasette_args(
        self, tenant: TenantConfig, view: sandbox.TenantPaths, databases: list[str]
    ) -> list[str]:
        args = ["serve", *databases, "--uds", str(view.run_dir / sandbox.SOCKET_NAME)]
        if view.metadata_file is not None:
            args += ["--metadata", str(view.metadata_file)]
        if view.plugins_dir is not None:
            args += ["--plugins-dir", str(view.plugins_dir)]
        settings: dict[str, Any] = dict(tenant.settings.datasette)
        settings["force_https_urls"] = self.config.tls_enabled
        return args + setting_args(settings)

    async def _wait_healthy(self, tenant: TenantConfig, process: TenantProcess) -> None:
        """Poll the new socket until Datasette answers HTTP (any status below 500)."""
        deadline = time.monotonic() + tenant.settings.start_timeout_s
        socket_path = process.backend.address.path
        host = f"{tenant.name}.{self.config.domain}".encode()
        while True:
            if process.exited.done():
                raise StartFailed(f"tenant {tenant.name!r} {process.describe_exit()}")
            if time.monotonic() > deadline:
                raise StartFailed(
                    f"tenant {tenant.name!r} did not pass its health check within"
                    f" {tenant.settings.start_timeout_s:g} s"
                )
            if os.path.exists(socket_path):
                status = await _probe(process.backend.address, host)
                if status is not None and status < 500:
                    return
            await asyncio.wait({process.exited}, timeout=_HEALTH_POLL_S)


async def _probe(address: BackendAddress, host: bytes) -> int | None:
    pool = ConnectionPool(address, connect_timeout=1.0)
    try:
        connection = await pool.acquire(reuse=False)
    except BackendUnavailable:
        return None
    try:
        connection.send_head("GET", b"/-/versions.json", [(b"host", host)])
        status, _ = await connection.read_head(5.0)
        while await connection.read_body():
            pass
        return status
    except BackendUnavailable:
        return None
    finally:
        connection.close()


def _highest_generation(run_dir: Path) -> int:
    highest = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in run_dir.iterdir():
            if entry.name.isdigit():
                highest = max(highest, int(entry.name))
    return highest


class TenantSupervisor:
    """Keeps one healthy process for one tenant, and replaces it without losing a request."""

    def __init__(self, spawner: Spawner, route: TenantRoute) -> None:
        self.spawner = spawner
        self.route = route
        self.config = route.config
        self.current: TenantProcess | None = None
        self.restarts = 0
        self.last_failure: dict[str, Any] | None = None  # {"reason", "time"}: for status, reload
        self.failed_config: TenantConfig | None = None  # what last_failure was a start of
        self._crashes: collections.deque[float] = collections.deque()
        self._lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return self.config.name

    def start(self, process: TenantProcess | None = None) -> None:
        """Supervise: start a process, or watch `process` (adopted from an old worker)."""
        if process is not None:
            self._install(process)
        self._task = asyncio.ensure_future(self._run())

    async def pause(self) -> None:
        """Stop supervising (for a handover); the process keeps running and serving."""
        await self._lock.acquire()  # waits for a replacement in progress to finish
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def resume(self) -> None:
        """The handover failed: supervise again."""
        self._lock.release()
        self._task = asyncio.ensure_future(self._run())

    def release(self) -> None:
        """The handover succeeded: forget the process (a new worker owns it now)."""
        if self.current is not None:
            self.current.release()
            self.current = None
        self._stopping = True
        self._lock.release()

    async def _run(self) -> None:
        supervisor = self.spawner.config.gateway.supervisor
        backoff = supervisor.restart_backoff_initial_s
        while not self._stopping:
            if self.current is None:
                if self.route.state == "failed":
                    await self._kick.wait()
                    self._kick.clear()
                    continue
                try:
                    async with self._lock:
                        if self._stopping or self.current is not None:
                            continue
                        config = self.config
                        process = await self.spawner.launch(config)
                        self._install(process)
                    backoff = supervisor.restart_backoff_initial_s
                except StartFailed as exc:
                    if self._stopping:
                        return
                    backoff = await self._after_crash(str(exc), backoff, config)
                    continue
            running = self.current
            if running is None:
                continue
            await asyncio.wait({running.exited})
            if self._stopping or running is not self.current or running.retiring:
                continue
            self.current = None
            reason = f"tenant {self.name!r} {running.describe_exit()}"
            self.route.withdraw(running.backend, "restarting", reason)
            await running.stop(0)
            backoff = await self._after_crash(reason, backoff, self.config)

    async def _after_crash(self, reason: str, backoff: float, config: TenantConfig) -> float:
        """Record a crash; mark the tenant failed in a crash loop, else wait `backoff`."""
        settings = self.spawner.config.gateway.supervisor
        now = time.monotonic()
        self._record_failure(reason, config)
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > settings.crash_loop_window_s:
            self._crashes.popleft()
        self.restarts += 1
        if len(self._crashes) >= settings.crash_loop_restarts:
            log.error("tenant_failed", extra={"tenant": self.name, "reason": reason,
                                              "crashes": len(self._crashes)})
            self.route.set_state("failed", reason)
            return settings.restart_backoff_initial_s
        log.warning("tenant_crashed", extra={"tenant": self.name, "reason": reason,
                                             "restart_in_s": backoff})
        if self.route.backend is None:
            self.route.set_state("restarting", reason)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(backoff):
                await self._kick.wait()
        self._kick.clear()
        return min(backoff * 2, settings.restart_backoff_max_s)

    def _record_failure(self, reason: str, config: TenantConfig) -> None:
        self.last_failure = {"reason": reason, "time": time.time()}
        self.failed_config = config

    def _install(self, process: TenantProcess) -> Backend | None:
        self.current = process
        return self.route.publish(process.backend)

    async def replace(self, config: TenantConfig | None = None) -> None:
        """Blue/green: start a new process, switch to it once healthy, drain and stop the old.

        If the new process never gets healthy, the old one keeps serving and StartFailed is
        raised. A failed or not yet started tenant is simply (re)started.
        """
        config = config or self.config
        async with self._lock:
            if self.current is None:
                self.config = self.route.config = config
                self._crashes.clear()
                self.route.set_state("starting")
                self._kick.set()
                return
            try:
                process = await self.spawner.launch(config)
            except StartFailed as exc:
                self._record_failure(str(exc), config)
                raise
            old = self.current
            self.config = self.route.config = config
            old.retiring = True
            self._install(process)
            log.info("tenant_switched", extra={"tenant": self.name,
                                               "from": old.handle.generation,
                                               "to": process.handle.generation})
        # The caller (a reload, `tenant restart`) is done once the new process serves; the old
        # one drains in the background, for up to drain_timeout_s.
        task = asyncio.ensure_future(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def retired(self) -> None:
        """Wait until every replaced process has drained and stopped."""
        await asyncio.gather(*self._retiring)

    async def _retire(self, old: TenantProcess) -> None:
        drain_s = self.spawner.config.gateway.proxy.drain_timeout_s
        drained = await old.backend.drain(drain_s)
        if not drained:
            log.warning("tenant_drain_timeout", extra={"tenant": self.name,
                                                       "in_flight": old.backend.in_flight})
        await old.stop(self.config.settings.stop_timeout_s)

    async def stop(self) -> None:
        """Stop routing to the tenant, let in-flight requests finish, stop the process."""
        self._stopping = True
        if self._task is not None:  # also abandons a start in progress (it cleans up after itself)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        async with self._lock:
            process, self.current = self.current, None
            self.route.set_state("stopped")
            if process is not None:
                self.route.withdraw(process.backend, "stopped")
                process.retiring = True
        if process is not None:
            await self._retire(process)
        await self.retired()

    def status(self) -> dict[str, Any]:
        process = self.current
        return {
            "name": self.name,
            "state": self.route.state,
            "failure": self.route.failure,
            "public": self.config.settings.public,
            "databases": list(self.config.databases),
            "generation": process.handle.generation if process else None,
            "pid": process.handle.signal_pid if process else None,
            "uid": process.handle.uid if process else None,
            "uptime_s": round(time.time() - process.started_at, 1) if process else None,
            "in_flight": process.backend.in_flight if process else 0,
            "restarts": self.restarts,
            "last_failure": self.last_failure,
        }
