"""The last 24 hours of each tenant, one sample a minute, kept in memory (no Prometheus needed).

A sample is taken from the request counters (metrics/requests.py) and the tenant's process:
requests in the minute, their 95th percentile (the upper bound of the latency bucket it falls
in: the counters keep buckets, not requests) and resident memory. Samples are kept in arrays,
12 bytes a minute: 24 hours of 500 tenants take ~9 MB. The page adds the minute in progress,
so a chart is never a minute behind.
"""

from __future__ import annotations

import array
import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..metrics.requests import BUCKETS, RequestMetrics, TenantRequests
from ..metrics.tenants import process_usage

if TYPE_CHECKING:
    from ..runtime import Gateway

SAMPLE_EVERY_S = 60.0
KEPT = 24 * 60  # samples: 24 hours
_NONE = -1.0  # in the arrays: no request in the minute, or no process


@dataclass(frozen=True, slots=True)
class Sample:
    requests: int
    p95_s: float | None  # None: no request in the minute
    rss_bytes: int | None


class _Series:
    """One tenant's samples, oldest first, each kept in a typed array."""

    __slots__ = ("p95_s", "requests", "rss_kb")

    def __init__(self) -> None:
        self.requests = array.array("I")
        self.p95_s = array.array("f")
        self.rss_kb = array.array("f")

    def append(self, sample: Sample) -> None:
        self.requests.append(sample.requests)
        self.p95_s.append(_NONE if sample.p95_s is None else min(sample.p95_s, 3.0e38))
        self.rss_kb.append(_NONE if sample.rss_bytes is None else sample.rss_bytes / 1024)
        if len(self.requests) > KEPT:
            for values in (self.requests, self.p95_s, self.rss_kb):
                del values[0]

    def last(self, count: int) -> list[Sample]:
        return [
            Sample(requests, None if p95_s == _NONE else p95_s,
                   None if rss_kb == _NONE else int(rss_kb * 1024))
            for requests, p95_s, rss_kb in zip(self.requests[-count:], self.p95_s[-count:],
                                               self.rss_kb[-count:], strict=True)
        ]


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
        self.series: dict[str, _Series] = {}
        self._last: dict[str, list[int]] = {}  # each tenant's buckets at the last sample
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
            self.series.setdefault(name, _Series()).append(sample)
            stats = self.requests.tenants.get(name)
            if stats is not None:
                self._last[name] = list(stats.buckets)
        for gone in set(self.series) - set(self.gateway.supervisors):
            del self.series[gone]

    def current(self) -> dict[str, Sample]:
        """Each tenant since the last sample: the minute in progress."""
        found = {}
        for name, supervisor in list(self.gateway.supervisors.items()):
            stats = self.requests.tenants.get(name) or TenantRequests()
            before = self._last.get(name, [0] * len(stats.buckets))
            delta = [now - then for then, now in zip(before, stats.buckets, strict=True)]
            process = supervisor.current
            usage = process_usage(process.handle.signal_pid) if process is not None else None
            found[name] = Sample(sum(delta), p95(delta), usage[1] if usage else None)
        return found

    def last_hour(self, name: str, now: Sample | None) -> list[Sample | None]:
        """60 minutes, oldest first; None where there is no sample (before the gateway
        started, or the tenant did not exist)."""
        series = self.series.get(name)
        recent: list[Sample] = series.last(59) if series is not None else []
        if now is not None:
            recent.append(now)
        return [None] * (60 - len(recent)) + list(recent)
