"""The last 24 hours of each tenant, one sample a minute, kept in memory (no Prometheus needed).

A sample is taken from the request counters (metrics/requests.py) and the tenant's process:
requests in the minute, their 95th percentile (the upper bound of the latency bucket it falls
in: the counters keep buckets, not requests) and resident memory. The page adds the minute in
progress, so a chart is never a minute behind.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..metrics.requests import BUCKETS, RequestMetrics, TenantRequests
from ..metrics.tenants import process_usage

if TYPE_CHECKING:
    from ..runtime import Gateway

SAMPLE_EVERY_S = 60.0
KEPT = 24 * 60  # samples: 24 hours


@dataclass(frozen=True, slots=True)
class Sample:
    time: float
    requests: int
    p95_s: float | None  # None: no request in the minute
    rss_bytes: int | None


def p95(buckets: list[int]) -> float | None:
    """The upper bound of the bucket holding the 95th percentile (inf: beyond the last)."""
    total = sum(buckets)
    if not total:
        return None
    running = 0
    for bound, count in zip((*BUCKETS, float("inf")), buckets, strict=True):
        running += count
        if running >= 0.95 * total:
            return bound
    return float("inf")


class History:
    def __init__(self, gateway: Gateway, requests: RequestMetrics) -> None:
        self.gateway = gateway
        self.requests = requests
        self.samples: dict[str, collections.deque[Sample]] = {}
        self._last: dict[str, tuple[int, list[int]]] = {}  # at the last sample: count, buckets
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            self.sample()

    def sample(self) -> None:
        for name, sample in self.current().items():
            self.samples.setdefault(name, collections.deque(maxlen=KEPT)).append(sample)
            stats = self.requests.tenants.get(name)
            if stats is not None:
                self._last[name] = (sum(stats.buckets), list(stats.buckets))

    def current(self) -> dict[str, Sample]:
        """Each tenant since the last sample: the minute in progress."""
        now = time.time()
        found = {}
        for name, supervisor in list(self.gateway.supervisors.items()):
            stats = self.requests.tenants.get(name) or TenantRequests()
            count, buckets = self._last.get(name, (0, [0] * len(stats.buckets)))
            delta = [b - a for a, b in zip(buckets, stats.buckets, strict=True)]
            process = supervisor.current
            usage = process_usage(process.handle.signal_pid) if process is not None else None
            found[name] = Sample(now, sum(stats.buckets) - count, p95(delta),
                                 usage[1] if usage else None)
        return found

    def last_hour(self, name: str, now: Sample | None) -> list[Sample | None]:
        """60 minutes, oldest first; None where there is no sample (before the gateway
        started, or the tenant did not exist)."""
        kept = list(self.samples.get(name, ()))[-59:]
        recent = [*kept, now] if now is not None else kept
        return [None] * (60 - len(recent)) + list(recent)
