"""Tenant -> live backend: which process gets the next request, switched atomically, drained.

A TenantRoute is what the proxy knows of one tenant: its config, its current Backend (or none
while it starts, restarts or sleeps), and whether it has failed. The supervisor publishes a
backend once its health check passes and withdraws it when the process dies; a swap publishes
the new one, then drains the old one, so every request is served by exactly one of them.
Whatever works for a tenant (a request, an upload) holds a lease on its route: a tenant is put
to sleep only when none is held and the last ended idle_stop_s ago.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Literal

from .backend_client import BackendAddress, ConnectionPool
from .config import TenantConfig

TenantState = Literal["starting", "running", "restarting", "failed", "sleeping", "stopped"]


class Backend:
    """A tenant process as the proxy sees it: address, connection pool, requests in flight."""

    def __init__(self, address: BackendAddress, *, generation: int, connect_timeout: float,
                 tls: ssl.SSLContext | None = None) -> None:
        self.address = address
        self.generation = generation
        self.pool = ConnectionPool(address, connect_timeout, tls)
        self.in_flight = 0
        self._drained: asyncio.Event | None = None

    def begin(self) -> None:
        self.in_flight += 1

    def end(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._drained is not None:
            self._drained.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until no request is in flight (True) or `timeout` passes (False); close the pool."""
        try:
            if self.in_flight:
                self._drained = asyncio.Event()
                try:
                    async with asyncio.timeout(timeout):
                        await self._drained.wait()
                except TimeoutError:
                    return False
            return True
        finally:
            self.pool.close()

    def __repr__(self) -> str:
        return f"<Backend {self.address} gen={self.generation} in_flight={self.in_flight}>"


class TenantRoute:
    """The proxy's view of one tenant. Mutated only by the supervisor."""

    def __init__(self, config: TenantConfig, max_connections: int) -> None:
        self.config = config
        self.backend: Backend | None = None
        self.state: TenantState = "starting"
        self.failure = ""
        self.limiter = asyncio.Semaphore(max_connections)
        # Requests whose body is streamed to the tenant hold a slot while the body arrives, as
        # fast as the client likes to send it: at most half the slots, so that such clients
        # (slow or hostile) always leave room for everyone else.
        self.body_limiter = asyncio.Semaphore(max(1, max_connections // 2))
        self.busy = 0  # leases held: requests and uploads in progress
        self.last_active = time.monotonic()  # when the last lease was taken or given back
        self.wake_failed = False  # the last wake's start failed: answer the crash page at once
        self.waker: Callable[[], None] | None = None  # the supervisor's: start a sleeping tenant
        self._changed = asyncio.Event()

    @property
    def name(self) -> str:
        return self.config.name

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Keep the tenant awake while the block runs (it does not wake a sleeping one)."""
        self.busy += 1
        self.last_active = time.monotonic()
        try:
            yield
        finally:
            self.busy -= 1
            self.last_active = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since the last lease ended; 0 while one is held."""
        return 0.0 if self.busy else time.monotonic() - self.last_active

    def wake(self) -> None:
        """A request needs the sleeping tenant: ask its supervisor for one start (asking again
        while it starts changes nothing)."""
        if self.state == "sleeping" and self.waker is not None:
            self.waker()

    def publish(self, backend: Backend) -> Backend | None:
        """Send new requests to `backend` from now on; return the one it replaces."""
        previous, self.backend = self.backend, backend
        self.state, self.failure = "running", ""
        self.wake_failed = False
        self._notify()
        return previous

    def withdraw(self, backend: Backend, state: TenantState, failure: str = "") -> None:
        """`backend` is gone: stop routing to it (if it is still the current one)."""
        if self.backend is backend:
            self.backend = None
            self.state, self.failure = state, failure
            self._notify()

    def set_state(self, state: TenantState, failure: str = "") -> None:
        self.state, self.failure = state, failure
        self._notify()

    async def wait_for_change(self, timeout: float) -> None:
        """Sleep until the backend or state changes, or `timeout` seconds pass."""
        if timeout <= 0:
            return
        event = self._changed
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
