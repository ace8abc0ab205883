"""The per-tenant metrics, written straight to Prometheus's text format at scrape time.

With 500 tenants these are ~11,000 samples. Built as prometheus_client metric families and
written by its generate_latest they cost the gateway's loop ~85 ms per scrape, most of it
checking and escaping label names that never change (bench/metrics.py); written here, from the
counters and the supervisors directly, they cost a fraction of that. The gateway-wide metrics
stay with prometheus_client (collector.py). tests/test_metrics.py parses the whole answer with
prometheus_client's parser, and has a real Prometheus scrape it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .events import EventCounts
from .requests import BUCKETS, RequestMetrics

if TYPE_CHECKING:
    from ..runtime import Gateway

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_BUCKET_LABELS = [*(f'le="{bound!r}"' for bound in BUCKETS), 'le="+Inf"']

# name: (type, help). Counters' names carry _total, as prometheus_client writes them.
FAMILIES = {
    "gateway_tenant_requests_total": (
        "counter", "Requests answered, by method and status class."),
    "gateway_tenant_request_duration_seconds": (
        "histogram", "Time from request to the end of its answer."),
    "gateway_tenant_backend_attempts_total": (
        "counter", "Connections to the tenant's process, retries included."),
    "gateway_tenant_backend_retries_total": (
        "counter", "Requests sent again because the tenant's process could not be reached."),
    "gateway_tenant_gateway_errors_total": (
        "counter", "502 (process unreachable), 503 (tenant not running) and 504 (process too"
        " slow) answers."),
    "gateway_tenant_backend_errors_total": (
        "counter", "502 and 504 answers by cause: ConnectFailed (nothing listens), NoResponse"
        " (the connection closed before any answer), ResponseBroken (it closed mid-answer),"
        " BackendTimeout (no answer in time)."),
    "gateway_tenant_state": (
        "gauge", "1 for the tenant's current state (starting, running, restarting, failed,"
        " sleeping, stopped)."),
    "gateway_tenant_in_flight": ("gauge", "Requests being answered by the tenant's process now."),
    "gateway_tenant_restarts_total": (
        "counter", "Times the tenant's process crashed or failed to start and was started"
        " again."),
    "gateway_tenant_start_time_seconds": (
        "gauge", "When the serving process started (Unix time)."),
    "gateway_tenant_last_failure_time_seconds": (
        "gauge", "When the tenant last crashed or failed to start (Unix time)."),
    "gateway_tenant_resident_memory_bytes": (
        "gauge", "Resident memory of the tenant's Datasette process."),
    "gateway_tenant_cpu_seconds_total": (
        "counter", "CPU time (user and system) of the tenant's current Datasette process."),
    "gateway_tenant_database_bytes": (
        "gauge", "Size of each database file, its write-ahead log included."),
    "gateway_tenant_uploads_total": ("counter", "CSV uploads by result."),
    "gateway_tenant_upload_rows_total": ("counter", "Rows imported by uploads."),
    "gateway_tenant_upload_bytes_total": ("counter", "Bytes of imported uploads."),
    "gateway_tenant_upload_seconds_total": (
        "counter", "Time spent receiving and importing uploads."),
}


def render_tenants(gateway: Gateway, requests: RequestMetrics, events: EventCounts) -> str:
    lines: dict[str, list[str]] = {name: [] for name in FAMILIES}
    _request_lines(requests, lines)
    _supervisor_lines(gateway, lines)
    _event_lines(events, lines)
    return "".join(
        f"# HELP {name} {FAMILIES[name][1]}\n# TYPE {name} {FAMILIES[name][0]}\n"
        + "".join(family)
        for name, family in lines.items() if family
    )


def _request_lines(requests: RequestMetrics, lines: dict[str, list[str]]) -> None:
    total = lines["gateway_tenant_requests_total"].append
    histogram = lines["gateway_tenant_request_duration_seconds"].append
    attempts = lines["gateway_tenant_backend_attempts_total"].append
    retries = lines["gateway_tenant_backend_retries_total"].append
    errors = lines["gateway_tenant_gateway_errors_total"].append
    for name, stats in list(requests.tenants.items()):
        tenant = f'tenant="{name}"'  # tenant names are [a-z0-9-] (config.validate_tenant_name)
        for (method, status_class), count in list(stats.counts.items()):
            total(f'gateway_tenant_requests_total{{code="{status_class}xx",method="{method}",'
                  f"{tenant}}} {count}\n")
        cumulative = 0
        for bound, count in zip(_BUCKET_LABELS, stats.buckets, strict=True):
            cumulative += count
            histogram(f"gateway_tenant_request_duration_seconds_bucket{{{bound},{tenant}}}"
                      f" {cumulative}\n")
        histogram(f"gateway_tenant_request_duration_seconds_count{{{tenant}}} {cumulative}\n"
                  f"gateway_tenant_request_duration_seconds_sum{{{tenant}}} {stats.seconds!r}\n")
        attempts(f"gateway_tenant_backend_attempts_total{{{tenant}}} {stats.attempts}\n")
        retries(f"gateway_tenant_backend_retries_total{{{tenant}}} {stats.retries}\n")
        for status, count in list(stats.errors.items()):
            errors(f'gateway_tenant_gateway_errors_total{{code="{status}",{tenant}}} {count}\n')


def _supervisor_lines(gateway: Gateway, lines: dict[str, list[str]]) -> None:
    def add(family: str, tenant: str, value: float) -> None:
        lines[family].append(f"{family}{{{tenant}}} {value!r}\n")

    for name, supervisor in list(gateway.supervisors.items()):
        tenant = f'tenant="{name}"'
        add("gateway_tenant_state", f'state="{supervisor.route.state}",{tenant}', 1)
        add("gateway_tenant_restarts_total", tenant, supervisor.restarts)
        if supervisor.last_failure is not None:
            add("gateway_tenant_last_failure_time_seconds", tenant,
                supervisor.last_failure["time"])
        process = supervisor.current
        if process is not None:
            add("gateway_tenant_in_flight", tenant, process.backend.in_flight)
            add("gateway_tenant_start_time_seconds", tenant, process.started_at)
            usage = process_usage(process.handle.signal_pid)
            if usage is not None:
                add("gateway_tenant_cpu_seconds_total", tenant, usage[0])
                add("gateway_tenant_resident_memory_bytes", tenant, usage[1])
        data_dir = f"{supervisor.config.data_dir}/"
        for file_name in supervisor.config.databases:
            size = _size(data_dir + file_name) + _size(f"{data_dir}{file_name}-wal")
            database = _escape(file_name.rsplit(".", 1)[0])  # a file name: anything goes
            add("gateway_tenant_database_bytes", f'database="{database}",{tenant}', size)


def _event_lines(events: EventCounts, lines: dict[str, list[str]]) -> None:
    for (name, cause), count in list(events.backend_errors.items()):
        lines["gateway_tenant_backend_errors_total"].append(
            f'gateway_tenant_backend_errors_total{{cause="{cause}",tenant="{name}"}} {count}\n')
    for (name, result), count in list(events.upload_results.items()):
        lines["gateway_tenant_uploads_total"].append(
            f'gateway_tenant_uploads_total{{result="{result}",tenant="{name}"}} {count}\n')
    for name, totals in list(events.uploads.items()):
        for family, value in zip(("gateway_tenant_upload_rows_total",
                                  "gateway_tenant_upload_bytes_total",
                                  "gateway_tenant_upload_seconds_total"), totals, strict=True):
            lines[family].append(f'{family}{{tenant="{name}"}} {value!r}\n')


def process_usage(pid: int) -> tuple[float, int] | None:
    """CPU seconds (user + system) and resident bytes of process `pid`, or None if it is gone."""
    try:  # os.read, not open(): a third less CPU, and 500 tenants are 500 reads per scrape
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # After "pid (comm) ": state is field 3 of proc(5); utime 14, stime 15, rss 24 (pages).
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS, int(fields[21]) * _PAGE_SIZE


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _escape(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")

