"""Starting tenant processes the same way every time: folders, sandbox, pipes, health check.

The Spawner turns a TenantConfig into a healthy TenantProcess (or StartFailed), or adopts a
process an old worker started (handover.py). What blocks (walking and chowning a tenant's
folder, fork and exec) runs in a thread, so starting one tenant never stalls the requests of
another. Keeping a process running is supervisor.py's; one process's pipes are process.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from . import sandbox, spares
from .backend_client import BackendAddress, ConnectionPool
from .backends import Backend
from .config import Config, TenantConfig
from .datasette_settings import setting_args
from .errors import BackendUnavailable, GatewayError
from .keys import tenant_secret
from .process import ProcessHandle, TenantProcess
from .tenant_files import make_private_dir, prepare_tenant_dir, tenant_uid
from .zygote import Zygote

log = logging.getLogger(__name__)

_HEALTH_POLL_S = 0.005
_SPARES_TRIED = 3  # spares handed over for one start, each found dead, before a cold start


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
        self._uid_lock = threading.Lock()
        self._spares: spares.SparePool | None = None

    async def start_spares(self) -> None:
        """Keep sandbox.spare_processes spares ready (spares.py), when this machine allows."""
        size = self.config.gateway.sandbox.spare_processes
        if size == 0 or self._spares is not None or not sandbox.can_use_spares(self.isolation):
            return
        await asyncio.to_thread(spares.remove_unhanded, self.run_dir)  # an old worker's
        failure = await asyncio.to_thread(spares.probe, self.run_dir)
        if failure is not None:
            log.warning("spares_unavailable", extra={"error": failure})
            return
        zygote = None
        if self.config.gateway.sandbox.fork_spares:
            zygote = Zygote(self.run_dir)
            try:
                await asyncio.to_thread(zygote.ensure_running)
            except OSError as exc:
                log.warning("zygote_unavailable", extra={"error": str(exc)})
                zygote = None
        self._spares = spares.SparePool(self.run_dir, size, zygote)
        self._spares.fill()

    async def stop_spares(self) -> None:
        if self._spares is not None:
            pool, self._spares = self._spares, None
            await pool.close()
        await asyncio.to_thread(spares.release_root, self.run_dir)

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
        """Socket and spare folders left by processes of an earlier gateway (all gone: they die
        with it)."""
        spares.remove_stale(self.run_dir)
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
        try:
            return await self._launch(tenant)
        except OSError as exc:  # the gateway's side failed (a full disk, a mount, a pipe): the
            # supervisor handles it as any failed start; it must not end its loop
            raise StartFailed(f"tenant {tenant.name!r} could not be started: {exc}") from None

    async def _launch(self, tenant: TenantConfig) -> TenantProcess:
        started = time.perf_counter()
        process, spare = None, None
        for _ in range(_SPARES_TRIED):
            spare = await self._take_spare()
            if spare is None:
                break
            process = await self._hand_spare(tenant, spare)  # None: that spare had died
            if process is not None:
                break
        if process is None:  # no spare, or each one died as it was handed over: start cold
            spare = None
            process = await self._spawn(tenant, self.next_generation())
        generation = process.handle.generation
        try:
            # Inside bwrap, Datasette (the process that drains on SIGTERM) has a pid of its own.
            with contextlib.suppress(TimeoutError):
                child_pid = await asyncio.wait_for(asyncio.shield(process.child_pid), 10)
                if child_pid is not None:
                    process.handle.signal_pid = child_pid
            await self._wait_healthy(tenant, process)
            if spare is not None:
                await asyncio.to_thread(spares.answering, spare)
        except BaseException:
            await process.stop(0)
            raise
        log.info("tenant_started", extra={
            "tenant": tenant.name, "generation": generation, "pid": process.handle.signal_pid,
            "ready_s": round(time.perf_counter() - started, 3), "isolation": self.isolation.level,
            "spare": spare is not None,
        })
        return process

    def tenant_user(self, tenant: TenantConfig) -> int | None:
        """The uid the tenant's processes run as (None: the gateway cannot switch users), its
        folders' owners and modes made right for it."""
        # One at a time: a uid is free until its data folder is chowned to it, and tenants start
        # in parallel threads; two that both saw uid N free would share it.
        with self._uid_lock:
            uid = None
            if self.isolation.switches_user:
                paths = self.config.gateway.paths
                uid = tenant_uid(tenant.directory, paths.tenants_dir, self.config.gateway.sandbox)
            prepare_tenant_dir(tenant.directory, uid)
        return uid

    async def _spawn(self, tenant: TenantConfig, generation: int) -> TenantProcess:
        gateway = self.config.gateway
        uid = await asyncio.to_thread(self.tenant_user, tenant)
        run_dir = self.run_dir / str(generation)  # short: socket paths are limited to 107 bytes
        await asyncio.to_thread(make_private_dir, run_dir, uid)
        paths = self._tenant_paths(tenant, run_dir)
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
        fds = (lifeline_read, lifeline_write, status_read, status_write, output_read, output_write)
        spawning = asyncio.ensure_future(asyncio.to_thread(
            subprocess.Popen,
            launch.argv,
            env=launch.env,
            pass_fds=(lifeline_read, status_write),
            stdin=subprocess.DEVNULL,
            stdout=output_write,
            stderr=output_write,
            start_new_session=True,  # a terminal's Ctrl-C reaches the gateway, not tenants
        ))
        try:
            popen = await asyncio.shield(spawning)  # a thread cannot be stopped half-way
        except OSError as exc:
            _close(fds)
            raise StartFailed(f"cannot start {launch.argv[0]}: {exc}") from None
        except asyncio.CancelledError:
            spawning.add_done_callback(lambda _: _abandon(spawning, fds))
            raise
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
        return TenantProcess(handle, backend, popen)

    async def _take_spare(self) -> spares.Spare | None:
        """A spare to hand the tenant, or None: no spares here, or none could be started (then
        the start is cold rather than failed)."""
        if self._spares is None:
            return None
        try:
            return await self._spares.take()
        except OSError as exc:
            log.error("spare_start_failed", extra={"error": str(exc)})
            return None

    async def _hand_spare(self, tenant: TenantConfig, spare: spares.Spare
                          ) -> TenantProcess | None:
        """`tenant`'s process, made of a spare: its folders bound in, then the handoff. None
        if the spare had died (it is discarded)."""
        uid = await asyncio.to_thread(self.tenant_user, tenant)
        if uid is None:  # can_use_spares: only as root, where tenants have users
            raise StartFailed(f"tenant {tenant.name!r}: no uid for a spare")
        paths = self._tenant_paths(tenant, spare.run_dir)  # renamed at the handoff; /run/ds inside
        view = sandbox.sandbox_view(self.isolation, paths)
        databases = [str(view.data_dir / name) for name in tenant.databases]
        handoff = spares.Handoff(
            uid=uid,
            secret=tenant_secret(self.master_key, tenant.name),
            rlimits=sandbox.spare_rlimits(tenant.settings),
            wal=databases,
            datasette_args=self._datasette_args(tenant, view, databases),
            read_only=[str(path) for path in (view.metadata_file, view.plugins_dir) if path],
        )
        generation = self.next_generation()
        handing = asyncio.ensure_future(asyncio.to_thread(
            spares.hand_over, spare, generation=generation, uid=uid, data_dir=paths.data_dir,
            metadata_file=paths.metadata_file, plugins_dir=paths.plugins_dir, handoff=handoff))
        try:
            await asyncio.shield(handing)  # a thread cannot be stopped half-way
        except BrokenPipeError:  # it died since it was taken (killed, the OOM killer)
            await asyncio.to_thread(spares.discard, spare)
            log.warning("spare_exited", extra={"spare": spare.name,
                                               "status": spare.process.returncode})
            return None
        except OSError as exc:
            await asyncio.to_thread(spares.discard, spare)
            raise StartFailed(f"tenant {tenant.name!r}: cannot hand it a spare: {exc}") from None
        except asyncio.CancelledError:
            handing.add_done_callback(
                lambda _: asyncio.ensure_future(asyncio.to_thread(spares.discard, spare)))
            raise
        handle = ProcessHandle(
            tenant=tenant.name,
            generation=generation,
            pid=spare.process.pid,
            signal_pid=spare.process.pid,
            lifeline_fd=spare.lifeline_fd,
            output_fd=spare.output_fd,
            status_fd=spare.status_fd,
            run_dir=spare.run_dir,
            uid=uid,
        )
        backend = Backend(
            BackendAddress(path=str(spare.run_dir / sandbox.SOCKET_NAME)),
            generation=generation,
            connect_timeout=self.config.gateway.proxy.connect_timeout_s,
        )
        # A forked spare is the zygote's child: its exit is watched through a pidfd and its
        # status pipe, as an adopted process's is.
        if isinstance(spare.process, spares.ForkedProcess):
            spare.process.close()
            return TenantProcess(handle, backend, None)
        return TenantProcess(handle, backend, spare.process)

    def _tenant_paths(self, tenant: TenantConfig, run_dir: Path) -> sandbox.TenantPaths:
        return sandbox.TenantPaths(
            venv=sandbox.venv_prefix(),
            package_parent=sandbox.gateway_package_parent(),
            data_dir=tenant.data_dir,
            run_dir=run_dir,
            metadata_file=tenant.directory / tenant.metadata_file if tenant.metadata_file else None,
            plugins_dir=tenant.directory / "plugins" if tenant.has_plugins else None,
        )

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


def _close(fds: tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _abandon(spawning: asyncio.Future[subprocess.Popen[bytes]], fds: tuple[int, ...]) -> None:
    """The start was cancelled while fork and exec ran in their thread: end what they made.
    (The fds are closed only now: closing them while the thread forks could hand their numbers
    to another file.) Closing the lifeline's write end ends the tenant by itself."""
    _close(fds)
    if not spawning.cancelled() and spawning.exception() is None:
        spawning.result().kill()


async def _probe(address: BackendAddress, host: bytes) -> int | None:
    pool = ConnectionPool(address, connect_timeout=1.0)
    try:
        connection = await pool.acquire(reuse=False)
    except BackendUnavailable:
        return None
    try:
        # Datasette's cheapest page that still goes through every plugin's hooks: the probe is
        # a new tenant's first request, paid for by every wake (/-/versions.json runs SQL: a
        # forked tenant's first request took 10.6 ms of its CPU, this one 8.6 ms).
        connection.send_head("GET", b"/-/actor.json", [(b"host", host)])
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
