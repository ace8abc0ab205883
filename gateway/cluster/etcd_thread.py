"""etcd's async client (etcd.py) on an event loop of its own, in a thread.

The accounts store is synchronous (SQLite, called from worker threads and from the CLI), and the
sign-in throttle is async on the gateway's loop: both use one client through this, waiting for
an answer (`run`, from a thread) or awaiting it (`run_async`, from another loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from .etcd import Etcd

T = TypeVar("T")

_CALL_TIMEOUT_S = 30.0  # the client's own timeouts (2 s a member) come first


class EtcdThread:
    def __init__(self, endpoints: Sequence[str]) -> None:
        self.etcd = Etcd(endpoints)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="etcd-client")
        self._thread.start()

    def run(self, work: Callable[[Etcd], Coroutine[Any, Any, T]]) -> T:
        """`work(etcd)`'s result, waited for; never call this on an event loop's thread."""
        return asyncio.run_coroutine_threadsafe(work(self.etcd), self._loop).result(
            _CALL_TIMEOUT_S)

    async def run_async(self, work: Callable[[Etcd], Coroutine[Any, Any, T]]) -> T:
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(work(self.etcd), self._loop))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(lambda etcd: etcd.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
