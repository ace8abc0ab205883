"""The Prometheus collector: every metric is read when scraped, from what the gateway holds.

Nothing is kept up to date between scrapes except the request counters (requests.py) and the
event counts (events.py): tenant state, processes' memory and CPU (from /proc), database sizes,
sessions and the certificate are looked up at scrape time, so a gateway nobody scrapes pays
nothing for them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .events import EventCounts
from .requests import BUCKETS, RequestMetrics

if TYPE_CHECKING:
    from ..runtime import Gateway

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_BUCKET_NAMES = [*(repr(b) for b in BUCKETS), "+Inf"]


def process_usage(pid: int) -> tuple[float, int] | None:
    """CPU seconds (user + system) and resident bytes of process `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # After "pid (comm) ": state is field 3 of proc(5); utime 14, stime 15, rss 24 (pages).
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS, int(fields[21]) * _PAGE_SIZE


class GatewayCollector(Collector):
    def __init__(self, gateway: Gateway, requests: RequestMetrics, events: EventCounts,
                 connections: Callable[[], int]) -> None:
        self.gateway = gateway
        self.requests = requests
        self.events = events
        self.connections = connections

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        yield from self._tenants()
        yield from self._events()
        yield from self._gateway()

    def _requests(self) -> Iterator[Metric]:
        tenant = ["tenant"]
        requests = CounterMetricFamily("gateway_tenant_requests", "Requests answered, by"
                                       " method and status class.",
                                       labels=["tenant", "method", "code"])
        latency = HistogramMetricFamily("gateway_tenant_request_duration_seconds",
                                        "Time from request to the end of its answer.",
                                        labels=tenant)
        attempts = CounterMetricFamily("gateway_tenant_backend_attempts", "Connections to the"
                                       " tenant's process, retries included.", labels=tenant)
        retries = CounterMetricFamily("gateway_tenant_backend_retries", "Requests sent again"
                                      " because the tenant's process could not be reached.",
                                      labels=tenant)
        errors = CounterMetricFamily("gateway_tenant_gateway_errors", "502 (process"
                                     " unreachable), 503 (tenant not running) and 504 (process"
                                     " too slow) answers.", labels=["tenant", "code"])
        for name, stats in list(self.requests.tenants.items()):
            for (method, status_class), count in list(stats.counts.items()):
                requests.add_metric([name, method, f"{status_class}xx"], count)
            cumulative, total = [], 0
            for bucket_name, count in zip(_BUCKET_NAMES, stats.buckets, strict=True):
                total += count
                cumulative.append((bucket_name, total))
            latency.add_metric([name], cumulative, stats.seconds)
            attempts.add_metric([name], stats.attempts)
            retries.add_metric([name], stats.retries)
            for status, count in list(stats.errors.items()):
                errors.add_metric([name, str(status)], count)
        yield from (requests, latency, attempts, retries, errors)

    def _tenants(self) -> Iterator[Metric]:
        tenant = ["tenant"]
        state = GaugeMetricFamily("gateway_tenant_state", "1 for the tenant's current state"
                                  " (starting, running, restarting, failed, stopped).",
                                  labels=["tenant", "state"])
        in_flight = GaugeMetricFamily("gateway_tenant_in_flight", "Requests being answered by"
                                      " the tenant's process now.", labels=tenant)
        restarts = CounterMetricFamily("gateway_tenant_restarts", "Times the tenant's process"
                                       " crashed or failed to start and was started again.",
                                       labels=tenant)
        started = GaugeMetricFamily("gateway_tenant_start_time_seconds", "When the serving"
                                    " process started (Unix time).", labels=tenant)
        failure = GaugeMetricFamily("gateway_tenant_last_failure_time_seconds", "When the"
                                    " tenant last crashed or failed to start (Unix time).",
                                    labels=tenant)
        rss = GaugeMetricFamily("gateway_tenant_resident_memory_bytes", "Resident memory of"
                                " the tenant's Datasette process.", labels=tenant)
        cpu = CounterMetricFamily("gateway_tenant_cpu_seconds", "CPU time (user and system) of"
                                  " the tenant's current Datasette process.", labels=tenant)
        database = GaugeMetricFamily("gateway_tenant_database_bytes", "Size of each database"
                                     " file, its write-ahead log included.",
                                     labels=["tenant", "database"])
        for name, supervisor in list(self.gateway.supervisors.items()):
            route = supervisor.route
            state.add_metric([name, route.state], 1)
            restarts.add_metric([name], supervisor.restarts)
            if supervisor.last_failure is not None:
                failure.add_metric([name], supervisor.last_failure["time"])
            process = supervisor.current
            if process is not None:
                in_flight.add_metric([name], process.backend.in_flight)
                started.add_metric([name], process.started_at)
                usage = process_usage(process.handle.signal_pid)
                if usage is not None:
                    cpu.add_metric([name], usage[0])
                    rss.add_metric([name], usage[1])
            data_dir = supervisor.config.data_dir
            for file_name in supervisor.config.databases:
                size = _size(data_dir / file_name) + _size(data_dir / f"{file_name}-wal")
                database.add_metric([name, file_name.rsplit(".", 1)[0]], size)
        yield from (state, in_flight, restarts, started, failure, rss, cpu, database)

    def _events(self) -> Iterator[Metric]:
        counts = self.events.counts
        families = {
            "sign_ins": CounterMetricFamily("gateway_sign_ins", "Sign-in attempts by result.",
                                            labels=["result"]),
            "certificate_renewals": CounterMetricFamily(
                "gateway_certificate_renewals", "Certificate issuances and renewals by result.",
                labels=["result"]),
            "reloads": CounterMetricFamily("gateway_reloads", "Reloads by result (rejected: the"
                                           " new config was invalid).", labels=["result"]),
        }
        for (counter, result), count in list(counts.items()):
            if counter in families:
                families[counter].add_metric([result], count)
        uploads = CounterMetricFamily("gateway_tenant_uploads", "CSV uploads by result.",
                                      labels=["tenant", "result"])
        for (name, result), count in list(self.events.upload_results.items()):
            uploads.add_metric([name, result], count)
        rows = CounterMetricFamily("gateway_tenant_upload_rows", "Rows imported by uploads.",
                                   labels=["tenant"])
        size = CounterMetricFamily("gateway_tenant_upload_bytes", "Bytes of imported uploads.",
                                   labels=["tenant"])
        seconds = CounterMetricFamily("gateway_tenant_upload_seconds", "Time spent receiving"
                                      " and importing uploads.", labels=["tenant"])
        for name, (row_count, byte_count, duration) in list(self.events.uploads.items()):
            rows.add_metric([name], row_count)
            size.add_metric([name], byte_count)
            seconds.add_metric([name], duration)
        yield from (*families.values(), uploads, rows, size, seconds)

    def _gateway(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("gateway_open_connections", "Client connections open now.",
                                value=self.connections())
        sessions = self._sessions()
        if sessions is not None:
            yield GaugeMetricFamily("gateway_sessions", "Sign-in sessions not yet ended.",
                                    value=sessions)
        certificates = self.gateway.certificates
        if certificates is None:
            return
        status = certificates.status()
        certificate = status.get("certificate")
        if certificate is not None:
            expiry = dt.datetime.fromisoformat(certificate["not_after"]).timestamp()
            yield GaugeMetricFamily("gateway_certificate_expiry_time_seconds", "When the"
                                    " certificate being served expires (Unix time).",
                                    value=expiry)
        yield GaugeMetricFamily("gateway_certificate_renewal_failures", "Failed renewal"
                                " attempts in a row (0: the last one succeeded).",
                                value=status.get("failures", 0))

    def _sessions(self) -> int | None:
        """Sign-ins whose session has not ended (a session's per-tenant children not counted)."""
        path = self.gateway.auth.store.path
        with contextlib.suppress(sqlite3.Error):
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                auth, now = self.gateway.config.gateway.auth, time.time()
                row = db.execute(
                    "SELECT count(*) FROM sessions WHERE parent IS NULL AND last_seen > ?"
                    " AND created > ?", (now - auth.session_idle_s, now - auth.session_max_s)
                ).fetchone()
                return int(row[0])
            finally:
                db.close()
        return None


def _size(path: os.PathLike[str]) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
