#!/usr/bin/env python3
"""What Prometheus metrics cost the gateway: per request, and per scrape.

    .venv/bin/python bench/metrics.py [--duration 5] [--rounds 5] [--tenants 500]

1. Per request. Two copies of the gateway's real request path (bench/servers.py `gateway`:
   GatewayApp under server.py's uvicorn settings) in front of the same nginx `return 200` on a
   Unix socket (the ceiling, where the gateway's own share of each request is largest): one with
   `[metrics] listen` set (requests are counted), one with `listen = ""` (not counted). wrk
   loads them in interleaved rounds; the gateway's CPU µs per request is utime+stime from
   /proc over the requests done. The ratio on/off is taken within each round; its median and
   range are printed. Target: under 5 % more.
2. Per scrape. In this process, a Gateway configured with --tenants tenants (each with a
   database file) and their supervisors marked running, each with a stand-in process whose pid
   is this one (so the /proc reads are real), and request counters for four (method, status)
   pairs per tenant; then /metrics is served through its ASGI app, as Prometheus asks for it,
   and, side by side, the same samples (parsed back into metric families with
   prometheus_client's parser) are written by its generate_latest, which
   gateway/metrics/tenants.py stands in for. The tenants' Datasettes are not
   started: 500 of them do not fit on this machine, and the scrape reads only their pids'
   /proc entries and their files' sizes.
   Target: under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Processes  # noqa: E402
from proxy import (  # noqa: E402  (bench/proxy.py: the same machinery, side by side)
    CEILING_TENANT,
    DOMAIN,
    Bench,
    Target,
    fetch,
    measure_once,
    ratio_text,
    write_site,
    wrk,
)

TARGET_CPU_RATIO = 1.05
TARGET_SCRAPE_MS = 50.0


def per_request(root: Path, processes: Processes, args: argparse.Namespace) -> bool:
    bench = Bench(root, processes, args)
    nginx_socket, nginx_pid = bench.start_nginx()
    targets = {}
    for name, listen in (("on", "127.0.0.1:0"), ("off", "")):
        config = write_site(root / f"site-{name}", CEILING_TENANT, None, root / f"run-{name}")
        config.write_text(config.read_text() + f'[metrics]\nlisten = "{listen}"\n')
        port, pid = bench.start_harness(f"gateway-{name}", "gateway", str(config),
                                        CEILING_TENANT, f"unix:{nginx_socket}")
        targets[name] = Target(port, f"{CEILING_TENANT}.{DOMAIN}:{port}", pid, nginx_pid)
    for target in targets.values():
        if fetch(target, "/") != (200, 3):
            raise SystemExit(f"bench: {target} does not answer 200 ok")
        wrk(target, "/", args.warmup)
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    rps: dict[str, list[float]] = {"on": [], "off": []}
    for round_number in range(args.rounds):
        order = ["on", "off"] if round_number % 2 == 0 else ["off", "on"]
        for name in order:
            run = measure_once(targets[name], "/", args.duration)
            processes.check_alive()
            if run.errors:
                raise SystemExit(f"bench: {run.errors} errors with metrics {name}")
            cpu[name].append(run.cpu_us or 0.0)
            rps[name].append(run.rps)
        print(f"  round {round_number + 1}/{args.rounds}: gateway CPU µs/request on"
              f" {cpu['on'][-1]:.1f}, off {cpu['off'][-1]:.1f}; load average"
              f" {os.getloadavg()[0]:.1f}", flush=True)
    ratios = [on / off for on, off in zip(cpu["on"], cpu["off"], strict=True)]
    print(f"\nper request (nginx ceiling, wrk -t2 -c32, {args.rounds} rounds of"
          f" {args.duration:g} s each):")
    print(f"  gateway CPU µs/request   metrics on {statistics.median(cpu['on']):.1f},"
          f" off {statistics.median(cpu['off']):.1f}")
    print(f"  requests/s               metrics on {statistics.median(rps['on']):.0f},"
          f" off {statistics.median(rps['off']):.0f}")
    print(f"  CPU on/off               {ratio_text(ratios)}")
    record_us = _record_cost()
    print(f"  RequestMetrics.record alone: {record_us:.2f} µs per call (in this process,"
          f" {record_us / statistics.median(cpu['off']) * 100:.1f} % of a request's CPU)")
    ok = statistics.median(ratios) < TARGET_CPU_RATIO
    print(f"  target < {TARGET_CPU_RATIO:.2f}: {'met' if ok else 'NOT met'}")
    return ok


def _record_cost(calls: int = 200_000) -> float:
    """µs per RequestMetrics.record call, as app.py makes it (median of five timings)."""
    from gateway.metrics.requests import RequestMetrics

    metrics, tenants = RequestMetrics(), [f"t{n}" for n in range(50)]
    timings = []
    for _ in range(5):
        started = time.process_time()
        for n in range(calls):
            metrics.record(tenants[n % 50], "GET", 200, time.perf_counter(), 1)
        timings.append((time.process_time() - started) / calls * 1e6)
    return statistics.median(timings)


def per_scrape(root: Path, tenants: int, scrapes: int) -> bool:
    site = root / "scrape-site"
    (site / "tenants").mkdir(parents=True)
    for n in range(tenants):
        data = site / "tenants" / f"t{n:04d}" / "data"
        data.mkdir(parents=True)
        (data / "db.db").write_bytes(b"\0" * 4096)
    config_path = site / "gateway.toml"
    config_path.write_text(f'domain = "{DOMAIN}"\n[paths]\nrun_dir = "{root / "srun"}"\n'
                           '[sandbox]\nisolation = "off"\n[metrics]\nlisten = "127.0.0.1:0"\n')
    return asyncio.run(_scrape(config_path, tenants, scrapes))


async def _scrape(config_path: Path, tenants: int, scrapes: int) -> bool:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import Collector

    from gateway.backends import TenantRoute
    from gateway.config import load_config
    from gateway.metrics import Metrics
    from gateway.runtime import Gateway
    from gateway.supervisor import TenantSupervisor

    config = load_config(config_path)
    gateway = Gateway(config)
    for name, tenant in config.tenants.items():
        route = TenantRoute(tenant, 32)
        route.state = "running"
        supervisor = TenantSupervisor(gateway.spawner, route)
        supervisor.current = SimpleNamespace(  # type: ignore[assignment]
            handle=SimpleNamespace(signal_pid=os.getpid()),
            backend=SimpleNamespace(in_flight=0), started_at=time.time())
        gateway.routes[name] = route
        gateway.supervisors[name] = supervisor
        for method, status, seconds in (("GET", 200, 0.002), ("GET", 304, 0.001),
                                        ("GET", 404, 0.003), ("POST", 200, 0.3)):
            gateway.request_metrics.record(name, method, status,
                                           time.perf_counter() - seconds, 1)
    metrics = Metrics(gateway, connections=lambda: 0)
    families = list(text_string_to_metric_families(metrics.render().decode()))

    class Parsed(Collector):
        def collect(self) -> Any:
            return families

    cpu_ms, wall_ms, library_ms, body = [], [], [], b""
    for _ in range(scrapes):  # as Prometheus asks (for gzip; answered plain: see metrics/)
        started_cpu, started = time.process_time(), time.perf_counter()
        body = await _get(metrics, [(b"accept-encoding", b"gzip")])
        wall_ms.append((time.perf_counter() - started) * 1000)
        cpu_ms.append((time.process_time() - started_cpu) * 1000)
        started_cpu = time.process_time()
        generate_latest(Parsed())
        library_ms.append((time.process_time() - started_cpu) * 1000)
    gateway.auth.close()
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    cpu = statistics.median(cpu_ms)
    print(f"  GET /metrics: CPU {cpu:.1f} ms (range {min(cpu_ms):.1f}-{max(cpu_ms):.1f}), wall"
          f" {statistics.median(wall_ms):.1f} ms; {samples} samples, {len(body) / 1024:.0f} KiB")
    print(f"  the same samples written by prometheus_client's generate_latest alone: CPU"
          f" {statistics.median(library_ms):.1f} ms")
    print(f"  target < {TARGET_SCRAPE_MS:g} ms: {'met' if cpu < TARGET_SCRAPE_MS else 'NOT met'}")
    return cpu < TARGET_SCRAPE_MS


async def _get(app: Any, headers: list[tuple[bytes, bytes]]) -> bytes:
    body = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    scope = {"type": "http", "method": "GET", "path": "/metrics", "query_string": b"",
             "headers": headers}
    await app(scope, receive, send)
    return b"".join(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tenants", type=int, default=500)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as folder:
        root = Path(folder)
        os.chmod(root, 0o755)
        try:
            print(f"per scrape ({args.tenants} tenants, {args.scrapes} scrapes):", flush=True)
            scrape_ok = per_scrape(root, args.tenants, args.scrapes)
            request_ok = per_request(root, processes, args)
        finally:
            processes.stop_all()
    raise SystemExit(0 if scrape_ok and request_ok else 1)


if __name__ == "__main__":
    main()
