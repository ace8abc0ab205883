"""Prometheus metrics: /metrics on a listener of its own, scraped by a real Prometheus."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import _is_private
from gateway.metrics.requests import RequestMetrics

from .conftest import RunningGateway, Site, wait_until

PROMETHEUS = shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def samples(text: str) -> dict[str, float]:
    """`name{labels} value` lines of the text format, as {"name{labels}": value}."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


class Prometheus:
    """A real Prometheus server scraping `target` every second."""

    def __init__(self, target: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="prometheus-"))
        (self.folder / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: gateway\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={self.folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.folder / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        # Prometheus answers 503 "Service Unavailable" until its storage is open.
        wait_until(self.ready, 60, interval=0.2, message="Prometheus is ready")

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def query(self, expression: str) -> list[dict[str, Any]]:
        try:
            answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expression})
        except httpx.TransportError:
            return []
        if answer.status_code != 200:
            return []
        result: list[dict[str, Any]] = answer.json()["data"]["result"]
        return result

    def value(self, expression: str) -> float | None:
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def gateway(site: Site, start_gateway: Any) -> RunningGateway:
    site.add_tenant("alice")
    site.add_tenant("bob")
    gateway: RunningGateway = start_gateway()
    gateway.wait_running("alice", "bob")
    return gateway


@pytest.fixture
def metrics_url(gateway: RunningGateway) -> str:
    return f"http://{gateway.wait_for_event('gateway_listening')['metrics']}/metrics"


@pytest.fixture
def prometheus(metrics_url: str) -> Iterator[Prometheus]:
    if PROMETHEUS is None:
        pytest.fail("prometheus is not installed: make debs")
    server = Prometheus(metrics_url.removeprefix("http://").removesuffix("/metrics"))
    yield server
    server.close()


def test_metrics_count_requests_per_tenant(gateway: RunningGateway, metrics_url: str) -> None:
    """Steps: requests to alice (GETs, a 404, a made-up method) and bob; /metrics has them by
    tenant, method and status class, and each tenant's state, process and databases. The
    public listener does not serve /metrics."""
    for _ in range(3):
        assert gateway.get("alice", "/data/items.json").status_code == 200
    assert gateway.get("alice", "/nothing-here").status_code == 404
    gateway.request("PROPFIND", "alice", "/")  # counted as OTHER
    gateway.get("bob", "/data/items.json")
    assert gateway.get(None, "/metrics").status_code == 404
    assert gateway.get("alice", "/metrics").status_code == 404  # Datasette's: no such page
    response = httpx.get(metrics_url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["gateway_tenant_request_duration_seconds"].type == "histogram"
    assert families["gateway_tenant_requests"].type == "counter"
    assert families["gateway_reloads"].type == "counter"
    found = samples(response.text)
    assert found['gateway_tenant_requests_total{code="2xx",method="GET",tenant="alice"}'] == 3
    # /nothing-here and /metrics (Datasette's 404: tenants' hosts do not serve the metrics)
    assert found['gateway_tenant_requests_total{code="4xx",method="GET",tenant="alice"}'] == 2
    assert 'gateway_tenant_requests_total{code="4xx",method="OTHER",tenant="alice"}' in found \
        or 'gateway_tenant_requests_total{code="5xx",method="OTHER",tenant="alice"}' in found
    assert found['gateway_tenant_requests_total{code="2xx",method="GET",tenant="bob"}'] == 1
    assert found['gateway_tenant_request_duration_seconds_count{tenant="alice"}'] == 6
    assert found['gateway_tenant_request_duration_seconds_bucket{le="+Inf",tenant="alice"}'] == 6
    assert found['gateway_tenant_requests_total{code="4xx",method="GET",tenant=""}'] == 1
    assert found['gateway_tenant_backend_attempts_total{tenant="alice"}'] >= 4
    assert found['gateway_tenant_state{state="running",tenant="alice"}'] == 1
    assert found['gateway_tenant_restarts_total{tenant="alice"}'] == 0
    assert found['gateway_tenant_resident_memory_bytes{tenant="alice"}'] > 10_000_000
    assert found['gateway_tenant_cpu_seconds_total{tenant="alice"}'] > 0
    assert found['gateway_tenant_database_bytes{database="data",tenant="alice"}'] > 0
    assert found['gateway_tenant_in_flight{tenant="alice"}'] == 0
    assert found["gateway_open_connections"] >= 1  # the test's client keeps its connection
    assert found["gateway_sessions"] == 0
    assert found["process_resident_memory_bytes"] > 10_000_000
    assert httpx.get(metrics_url.replace("/metrics", "/")).status_code == 404


def test_prometheus_scrapes_through_reloads_and_upgrades(
    gateway: RunningGateway, prometheus: Prometheus, metrics_url: str
) -> None:
    """Steps: a real Prometheus scrapes the gateway; it sees alice's requests and state; a
    reload is counted; after `gateway upgrade` (a new worker) the same listener still
    answers and Prometheus still scrapes it."""
    for _ in range(5):
        gateway.get("alice", "/data/items.json")
    query = 'gateway_tenant_requests_total{tenant="alice",method="GET",code="2xx"}'
    wait_until(lambda: prometheus.value(query) == 5, 60, interval=0.5,
               message="Prometheus has scraped alice's requests")
    assert prometheus.value('gateway_tenant_state{tenant="bob",state="running"}') == 1
    assert prometheus.value('up{job="gateway"}') == 1
    gateway.cli("reload")
    wait_until(lambda: prometheus.value('gateway_reloads_total{result="ok"}') == 1, 30,
               interval=0.5, message="the reload counted")
    old_worker = gateway.worker_pid
    gateway.cli("upgrade")
    assert gateway.worker_pid != old_worker
    assert httpx.get(metrics_url).status_code == 200
    gateway.get("alice", "/data/items.json")  # the new worker's counters start again
    wait_until(lambda: prometheus.value(query) == 1, 60, interval=0.5,
               message="Prometheus scrapes the new worker")
    assert prometheus.value('up{job="gateway"}') == 1


def test_metrics_off(site: Site, start_gateway: Any) -> None:
    site.write_config(metrics={"listen": ""})
    gateway: RunningGateway = start_gateway()
    assert "metrics" not in gateway.wait_for_event("gateway_listening")


def test_request_counters_are_bounded_and_bucketed() -> None:
    metrics = RequestMetrics()
    for method in ("GET", "get", "X" * 100, "POST"):
        metrics.record("alice", method, 200, 0.0, 1)
    metrics.record("alice", "GET", 502, 0.0, 3)
    alice = metrics.tenants["alice"]
    assert alice.counts == {("GET", 2): 1, ("OTHER", 2): 2, ("POST", 2): 1, ("GET", 5): 1}
    assert (alice.attempts, alice.retries, alice.errors) == (7, 2, {502: 1})
    assert sum(alice.buckets) == 5 and alice.buckets[-1] == 5  # perf_counter() - 0: long ago


@pytest.mark.parametrize(("host", "private"), [
    ("127.0.0.1", True), ("::1", True), ("10.0.0.5", True), ("192.168.1.2", True),
    ("0.0.0.0", False), ("::", False), ("8.8.8.8", False),
])
def test_a_public_metrics_address_is_warned_about(host: str, private: bool) -> None:
    assert _is_private(host) is private


def test_gateway_errors_are_counted_by_cause() -> None:
    """The app's backend_unavailable events (a 502 or 504 and its cause) become
    gateway_tenant_backend_errors_total{cause,tenant}; other events are not counted there."""
    from gateway.metrics.events import EventCounts
    from gateway.metrics.tenants import _event_lines

    counts = EventCounts()
    logger = logging.getLogger("test_metrics.causes")
    logger.addHandler(counts)
    logger.propagate = False
    try:
        for kind in ("ConnectFailed", "ConnectFailed", "BackendTimeout"):
            logger.warning("backend_unavailable", extra={"tenant": "alice", "kind": kind,
                                                         "status": 502, "cause": "x"})
        logger.warning("tenant_crashed", extra={"tenant": "alice"})
    finally:
        logger.removeHandler(counts)
    lines: dict[str, list[str]] = {"gateway_tenant_backend_errors_total": [],
                                   "gateway_tenant_uploads_total": []}
    _event_lines(counts, lines)
    assert lines["gateway_tenant_backend_errors_total"] == [
        'gateway_tenant_backend_errors_total{cause="ConnectFailed",tenant="alice"} 2\n',
        'gateway_tenant_backend_errors_total{cause="BackendTimeout",tenant="alice"} 1\n',
    ]
