"""Per-tenant request counters, updated once per request from app.py: the hot path.

Plain dicts and lists, no locks, no label lookups: one `record` call costs about a
microsecond. The Prometheus collector (collector.py) turns them into metrics when scraped.
"""

from __future__ import annotations

import bisect
import time

# Upper bounds (seconds) of the latency histogram's buckets; one more bucket is +Inf.
BUCKETS = (0.005, 0.025, 0.1, 0.25, 1.0, 5.0, 30.0)
# Any other method is counted as OTHER: a label per made-up method would let clients create
# series without end.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class TenantRequests:
    __slots__ = ("attempts", "buckets", "counts", "errors", "retries", "seconds")

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}  # (method, status // 100) -> requests
        self.buckets = [0] * (len(BUCKETS) + 1)  # not cumulative; the collector sums them
        self.seconds = 0.0
        self.attempts = 0  # connections to the tenant's process, retries included
        self.retries = 0
        self.errors: dict[int, int] = {}  # 502, 503, 504 -> answers the gateway gave


class RequestMetrics:
    def __init__(self) -> None:
        self.tenants: dict[str, TenantRequests] = {}

    def record(self, tenant: str, method: str, status: int, start: float, attempts: int) -> None:
        """One finished request (`start`: its time.perf_counter(); tenant "": not a tenant's)."""
        seconds = time.perf_counter() - start
        stats = self.tenants.get(tenant)
        if stats is None:
            stats = self.tenants[tenant] = TenantRequests()
        key = (method if method in METHODS else "OTHER", status // 100)
        stats.counts[key] = stats.counts.get(key, 0) + 1
        stats.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        stats.seconds += seconds
        if attempts:
            stats.attempts += attempts
            stats.retries += attempts - 1
        if 502 <= status <= 504:
            stats.errors[status] = stats.errors.get(status, 0) + 1


class NoRequestMetrics(RequestMetrics):
    """Metrics are off ([metrics] listen = ""): nothing is counted."""

    def record(self, tenant: str, method: str, status: int, start: float, attempts: int) -> None:
        return None
