"""Tenant -> live backend: which process gets the next request, switched atomically, drained.

A TenantRoute is what the proxy knows of one tenant: its config, its current Backend (or none
while it starts or restarts), and whether it has failed. The supervisor publishes a backend once
its health check passes and withdraws it when the process dies; a swap publishes the new one,
then drains the old one, so every request is served by exactly one of them.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Literal

from .backend_client import BackendAddress, ConnectionPool
from .config import TenantConfig

TenantState = Literal["starting", "running", "restarting", "failed", "stopped"]


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
        self._changed = asyncio.Event()

    @property
    def name(self) -> str:
        return self.config.name

    def publish(self, backend: Backend) -> Backend | None:
        """Send new requests to `backend` from now on; return the one it replaces."""
        previous, self.backend = self.backend, backend
        self.state, self.failure = "running", ""
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
