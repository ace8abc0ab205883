"""Keeping one healthy process per tenant: the loop that applies lifecycle.py's decisions.

A process is never routed to before its health check passes (spawner.py). A crash restarts it
after a backoff; a crash loop marks it failed for supervisor.failed_cooldown_s, after which it
is tried again. A replacement (restart, reload) is blue/green: the new process starts, passes
its health check, takes the traffic, and only then does the old one drain and stop; one that
never gets healthy is stopped and the old one keeps serving. Every process holds the read end
of a lifeline pipe (tenant_process.py), so none outlives the gateway, SIGKILL included.

Sleep (tenant_defaults.idle_stop_s): a process with no lease on its route (no request, no
upload) for idle_stop_s is stopped and the route kept, "sleeping". The next request asks the
route to wake it: one start, every request meanwhile held in the proxy's retry hold. A wake that
fails is a crash like any other (the crash policy applies), and the requests held for it get the
crash page at once rather than wait out the restarts. A wake first asks `make_room` (awake.py,
supervisor.max_awake_tenants) to put other idle tenants to sleep, the same way (`put_to_sleep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any, cast

from .backends import TenantRoute, TenantState
from .config import TenantConfig
from .lifecycle import AwakeTenant, CrashPolicy, Lifecycle, State
from .process import TenantProcess
from .spawner import Spawner, StartFailed

log = logging.getLogger(__name__)


class TenantSupervisor:
    """Keeps one healthy process for one tenant, and replaces it without losing a request."""

    def __init__(self, spawner: Spawner, route: TenantRoute,
                 make_room: Callable[[str], None] | None = None) -> None:
        self.spawner = spawner
        self.route = route
        self.make_room = make_room  # called with our name as we wake: the cap on awake tenants
        self.config = route.config
        self.current: TenantProcess | None = None
        self.lifecycle = Lifecycle()
        self.policy = CrashPolicy(spawner.config.gateway.supervisor)
        self.restarts = 0
        self.last_failure: dict[str, Any] | None = None  # {"reason", "time"}: for status, reload
        self.failed_config: TenantConfig | None = None  # what last_failure was a start of
        self._retry_at = 0.0  # when a failed tenant is tried again (monotonic)
        self._waking_since = 0.0  # when the start in progress was asked for by a request; 0: no
        self._lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._put_asleep = asyncio.Event()  # put_to_sleep: _watch lets the process retire
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        route.waker = self._kick.set

    @property
    def name(self) -> str:
        return self.config.name

    def start(self, process: TenantProcess | None = None, *, asleep: bool = False) -> None:
        """Supervise: start a process, or watch `process` (adopted from an old worker), or
        (`asleep`) wait for the first request to start one."""
        if process is not None:
            self._install(process)
        elif asleep:
            self.lifecycle = Lifecycle(State.SLEEPING)
            self.route.set_state("sleeping")
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
        if state is State.STARTING:
            self.route.wake_failed = False
        if state is not State.RUNNING:  # running: published with its backend (_install)
            self.route.set_state(cast(TenantState, state.value), reason)

    async def _run(self) -> None:
        while not self._stopping:
            if self.current is not None:
                await self._watch(self.current)
            elif self.lifecycle.state is State.FAILED:
                await self._cool_down()
            elif self.lifecycle.state is State.SLEEPING:
                await self._sleep_until_woken()
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
                if self._waking_since:  # until it serves or is started afresh
                    self.route.wake_failed = True  # before the new state is shown
                    self._waking_since = 0.0
                await self._wait_for_kick(self._crashed(str(exc), config))

    async def _sleep_until_woken(self) -> None:
        """No process until a request (route.wake) or an operator (replace) asks for one."""
        await self._kick.wait()
        self._kick.clear()
        if self.lifecycle.state is State.SLEEPING and not self._stopping:
            self._waking_since = time.monotonic()
            self._enter(State.STARTING)
            if self.make_room is not None:  # counts us as awake (starting) already
                self.make_room(self.name)

    async def _watch(self, running: TenantProcess) -> None:
        self._put_asleep.clear()
        put_asleep = asyncio.ensure_future(self._put_asleep.wait())  # by the cap: stop watching
        either: set[asyncio.Future[Any]] = {running.exited, put_asleep}
        try:
            while not running.exited.done() and not put_asleep.done():
                await asyncio.wait(either, timeout=self._until_idle(running),
                                   return_when=asyncio.FIRST_COMPLETED)
                if (not running.exited.done() and not put_asleep.done()
                        and await self._fall_asleep(running)):
                    return
        finally:
            put_asleep.cancel()
        if self._stopping or running is not self.current or running.retiring:
            return
        self.current = None
        reason = f"tenant {self.name!r} {running.describe_exit()}"
        self.route.withdraw(running.backend, "restarting", reason)
        # Before any await: a handover may pause us there.
        wait_s = self._crashed(reason, self.config)
        await running.stop(0)
        await self._wait_for_kick(wait_s)

    def _until_idle(self, running: TenantProcess) -> float | None:
        """How long until `running` may be put to sleep (None: it never sleeps)."""
        idle_stop_s = self.config.settings.idle_stop_s
        if idle_stop_s <= 0 or running is not self.current or running.retiring:
            return None
        if self.route.busy or running.backend.in_flight:
            return idle_stop_s  # a lease given back later moves last_active on
        return max(idle_stop_s - self.route.idle_for(), 0.0)

    async def _fall_asleep(self, running: TenantProcess) -> bool:
        """Stop `running` if it has been idle for idle_stop_s; keep the route, "sleeping"."""
        async with self._lock:  # not while a replacement is under way
            if self._stopping or running.exited.done() or self._until_idle(running) != 0.0:
                return False
            self._sleep(running, {"reason": "idle"})
        return True

    def awake(self) -> AwakeTenant | None:
        """What the cap on awake tenants needs to know of us; None if we do not count (we
        never sleep, or have no process and are not starting one)."""
        if self.config.settings.idle_stop_s <= 0 or self._stopping or self.lifecycle.state not in (
                State.STARTING, State.RUNNING, State.RESTARTING):
            return None
        return AwakeTenant(self.name, self.route.last_active, self._may_sleep_now())

    def _may_sleep_now(self) -> bool:
        running = self.current
        return (running is not None and self.lifecycle.state is State.RUNNING
                and not running.retiring and not running.exited.done()
                and not self._lock.locked()  # no start, replacement or handover under way
                and not self.route.busy and not running.backend.in_flight)

    def put_to_sleep(self, waking: str) -> None:
        """Sleep now, as if idle: the cap on awake tenants needs room (for tenant `waking`, or
        "" after a reload). Synchronous, called only when awake() said we may sleep now: no
        other task has run since."""
        running = self.current
        if running is not None and self._may_sleep_now():
            self._sleep(running, {"reason": "cap", **({"waking": waking} if waking else {})})
            self._put_asleep.set()

    def _sleep(self, running: TenantProcess, why: dict[str, str]) -> None:
        """Stop `running` in the background; the route stays, "sleeping"."""
        idle_s = self.route.idle_for()
        self.current = None
        running.retiring = True
        self.route.withdraw(running.backend, "sleeping")
        self.lifecycle.move(State.SLEEPING)
        log.info("tenant_sleeping", extra={"tenant": self.name, "idle_s": round(idle_s, 1),
                                           "generation": running.handle.generation, **why})
        task = asyncio.ensure_future(self._retire(running))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

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
        self.route.last_active = max(self.route.last_active, time.monotonic())
        self.route.publish(process.backend)
        if self._waking_since:
            log.info("tenant_woke", extra={
                "tenant": self.name, "generation": process.handle.generation,
                "wake_s": round(time.monotonic() - self._waking_since, 3)})
            self._waking_since = 0.0

    async def replace(self, config: TenantConfig | None = None) -> None:
        """Blue/green: start a new process, switch to it once healthy, drain and stop the old.

        If the new process never gets healthy, the old one keeps serving and StartFailed is
        raised. A failed or not yet started tenant is simply (re)started; a sleeping one sleeps
        on, and its next wake starts `config`.
        """
        config = config or self.config
        async with self._lock:
            if self.current is None and self.lifecycle.state is State.SLEEPING:
                self.config = self.route.config = config  # the next wake starts it
                return
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
            "idle_s": round(self.route.idle_for(), 1),
            "restarts": self.restarts,
            "last_failure": self.last_failure,
        }
