"""Keeping one healthy process per tenant: the loop that applies lifecycle.py's decisions.

A process is never routed to before its health check passes (spawner.py). A crash restarts it
after a backoff; a crash loop marks it failed for supervisor.failed_cooldown_s, after which it
is tried again. A replacement (restart, reload) is blue/green: the new process starts, passes
its health check, takes the traffic, and only then does the old one drain and stop; one that
never gets healthy is stopped and the old one keeps serving. Every process holds the read end
of a lifeline pipe (tenant_process.py), so none outlives the gateway, SIGKILL included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any, cast

from .backends import TenantRoute, TenantState
from .config import TenantConfig
from .lifecycle import CrashPolicy, Lifecycle, State
from .process import TenantProcess
from .spawner import Spawner, StartFailed

log = logging.getLogger(__name__)


class TenantSupervisor:
    """Keeps one healthy process for one tenant, and replaces it without losing a request."""

    def __init__(self, spawner: Spawner, route: TenantRoute) -> None:
        self.spawner = spawner
        self.route = route
        self.config = route.config
        self.current: TenantProcess | None = None
        self.lifecycle = Lifecycle()
        self.policy = CrashPolicy(spawner.config.gateway.supervisor)
        self.restarts = 0
        self.last_failure: dict[str, Any] | None = None  # {"reason", "time"}: for status, reload
        self.failed_config: TenantConfig | None = None  # what last_failure was a start of
        self._retry_at = 0.0  # when a failed tenant is tried again (monotonic)
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

    def _enter(self, state: State, reason: str = "") -> None:
        """Move to `state` (IllegalTransition if the table forbids it) and show it to the proxy."""
        self.lifecycle.move(state)
        if state is not State.RUNNING:  # running: published with its backend (_install)
            self.route.set_state(cast(TenantState, state.value), reason)

    async def _run(self) -> None:
        while not self._stopping:
            if self.current is not None:
                await self._watch(self.current)
            elif self.lifecycle.state is State.FAILED:
                await self._cool_down()
            else:
                await self._start()

    async def _start(self) -> None:
        try:
            async with self._lock:
                if self._stopping or self.current is not None:
                    return
                config = self.config
                self._install(await self.spawner.launch(config))
        except StartFailed as exc:
            if not self._stopping:
                await self._wait_for_kick(self._crashed(str(exc), config))

    async def _watch(self, running: TenantProcess) -> None:
        await asyncio.wait({running.exited})
        if self._stopping or running is not self.current or running.retiring:
            return
        self.current = None
        reason = f"tenant {self.name!r} {running.describe_exit()}"
        self.route.withdraw(running.backend, "restarting", reason)
        # Before any await: a handover may pause us there.
        wait_s = self._crashed(reason, self.config)
        await running.stop(0)
        await self._wait_for_kick(wait_s)

    def _crashed(self, reason: str, config: TenantConfig) -> float:
        """Apply the crash policy; how long to wait before the next start (0: failed, see
        _cool_down)."""
        self._record_failure(reason, config)
        self.restarts += 1
        self.policy.settings = self.spawner.config.gateway.supervisor  # reloads apply
        state, wait_s = self.policy.after_crash(time.monotonic())
        self._enter(state, reason)
        if state is State.FAILED:
            self._retry_at = time.monotonic() + wait_s
            log.error("tenant_failed", extra={
                "tenant": self.name, "reason": reason,
                "crashes": self.policy.settings.crash_loop_restarts,
                "retry_in_s": None if math.isinf(wait_s) else wait_s,
            })
            return 0
        log.warning("tenant_crashed", extra={"tenant": self.name, "reason": reason,
                                             "restart_in_s": wait_s})
        return wait_s

    def _record_failure(self, reason: str, config: TenantConfig) -> None:
        self.last_failure = {"reason": reason, "time": time.time()}
        self.failed_config = config

    async def _cool_down(self) -> None:
        """A failed tenant rests until its cool-down is over, or an operator restarts it."""
        await self._wait_for_kick(self._retry_at - time.monotonic())
        if self.lifecycle.state is State.FAILED and not self._stopping:
            log.info("tenant_cooled_down", extra={"tenant": self.name})
            self.policy.reset()
            self._enter(State.STARTING)

    async def _wait_for_kick(self, timeout_s: float) -> None:
        """Sleep `timeout_s` (math.inf: for ever), or until replace() asks for a start."""
        if timeout_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if math.isinf(timeout_s) else timeout_s):
                    await self._kick.wait()
        self._kick.clear()

    def _install(self, process: TenantProcess) -> None:
        self.lifecycle.move(State.RUNNING)
        self.policy.healthy()
        self.current = process
        self.route.publish(process.backend)

    async def replace(self, config: TenantConfig | None = None) -> None:
        """Blue/green: start a new process, switch to it once healthy, drain and stop the old.

        If the new process never gets healthy, the old one keeps serving and StartFailed is
        raised. A failed or not yet started tenant is simply (re)started.
        """
        config = config or self.config
        async with self._lock:
            if self.current is None:
                self.config = self.route.config = config
                self.policy.reset()
                self._enter(State.STARTING)
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
            self.current = process
            self.route.publish(process.backend)
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
            if process is not None:
                self.route.withdraw(process.backend, "stopped")
                process.retiring = True
            self._enter(State.STOPPED)
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
