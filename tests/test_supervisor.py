"""Tenant processes under supervision: health gate, crash restarts, crash loops, shutdown."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
import sqlite_utils

from .conftest import IS_ROOT, RunningGateway, Site, assert_gone, pid_alive, wait_until


def test_first_request_waits_for_the_health_check(site: Site, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """A request sent while the tenant is still starting is answered once it is healthy."""
    site.add_tenant("alice")
    gateway = start_gateway()
    response = gateway.get("alice", "/data/items.json?_shape=array&_size=1")
    assert response.status_code == 200
    assert response.json() == [{"id": 1, "name": "item 1"}]


def test_killed_tenant_serves_again_within_seconds(site: Site, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """1. kill -9 the tenant's Datasette. 2. The next GET waits for the restart and gets 200."""
    site.add_tenant("alice")
    gateway = start_gateway()
    gateway.wait_running("alice")
    before = gateway.tenant("alice")
    os.kill(before["pid"], signal.SIGKILL)
    response = gateway.get("alice", "/data/items.json?_shape=array&_size=1")
    assert response.status_code == 200
    after = gateway.tenant("alice")
    assert after["pid"] != before["pid"]
    assert after["restarts"] == 1
    gateway.wait_for_event("tenant_crashed", tenant="alice")


def test_crash_loop_marks_the_tenant_failed(site: Site, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """A database that is not SQLite makes Datasette exit at start; after N tries: 503 page."""
    directory = site.add_tenant("alice", tables={})
    (directory / "data" / "broken.db").write_bytes(b"this is not a database" * 100)
    site.add_tenant("bob")
    site.write_config(supervisor={"crash_loop_restarts": 3, "restart_backoff_initial_s": 0.05})
    gateway = start_gateway()
    wait_until(lambda: gateway.tenant("alice")["state"] == "failed", 30, message="alice failed")
    status = gateway.tenant("alice")
    assert "not a database" in status["failure"] or "exited with status" in status["failure"]
    response = gateway.get("alice", "/", headers={"accept": "application/json"})
    assert response.status_code == 503
    assert response.json()["message"] == (
        "The site 'alice' has stopped working and is being looked at."
    )
    html = gateway.get("alice", "/")
    assert "stopped working" in html.text and "alice" in html.text
    assert gateway.get("bob", "/data/items.json").status_code == 200  # others are unaffected
    # Mending the tenant and restarting it brings it back.
    (directory / "data" / "broken.db").unlink()
    gateway.cli("tenant", "restart", "alice")
    gateway.wait_running("alice")
    assert gateway.get("alice", "/-/versions.json").status_code == 200


def test_a_failed_tenant_comes_back_after_the_cool_down(site: Site, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """1. A database that is not SQLite: alice crash-loops and is marked failed. 2. The database
    is mended. 3. After supervisor.failed_cooldown_s, alice is started again by itself and
    serves it; nobody restarted it."""
    directory = site.add_tenant("alice")
    broken = directory / "data" / "broken.db"
    broken.write_bytes(b"this is not a database" * 100)
    site.write_config(supervisor={"crash_loop_restarts": 2, "restart_backoff_initial_s": 0.05,
                                  "failed_cooldown_s": 3.0})
    gateway = start_gateway()
    failed = gateway.wait_for_event("tenant_failed", tenant="alice")
    assert (failed["retry_in_s"], failed["crashes"]) == (3.0, 2)
    assert gateway.tenant("alice")["state"] == "failed"
    broken.unlink()
    db = sqlite_utils.Database(broken)
    db["mended"].insert({"id": 1}, pk="id")
    db.close()
    gateway.wait_for_event("tenant_cooled_down", tenant="alice")
    gateway.wait_running("alice")
    response = gateway.get("alice", "/broken/mended.json?_shape=array")
    assert (response.status_code, response.json()) == (200, [{"id": 1}])


def test_sigterm_finishes_in_flight_requests_then_exits_0(site: Site, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """1. Start a slow query. 2. SIGTERM the gateway. 3. The query gets its 200; exit 0; no
    tenant process is left."""
    site.add_tenant("alice", settings="[datasette]\nsql_time_limit_ms = 20000\n")
    gateway = start_gateway()
    gateway.wait_running("alice")
    tenant_pid = gateway.tenant("alice")["pid"]
    slow = ("/data.json?sql=with+recursive+c(x)+as+(select+1+union+all+select+x%2B1+from+c"
            "+where+x<3000000)+select+count(*)+from+c")
    result: dict[str, httpx.Response] = {}

    def query() -> None:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            result["r"] = client.get(slow, headers={"host": gateway.host("alice")})

    thread = threading.Thread(target=query)
    thread.start()
    wait_until(lambda: gateway.tenant("alice")["in_flight"] == 1, message="query in flight")
    gateway.signal(signal.SIGTERM)
    thread.join(60)
    assert result["r"].status_code == 200
    assert result["r"].json()["rows"] == [[3000000]]
    assert gateway.process.wait(30) == 0
    assert_gone({tenant_pid})
    gateway.wait_for_event("gateway_stopped")


def test_new_connections_are_refused_once_stopping(site: Site, start_gateway) -> None:  # type: ignore[no-untyped-def]
    site.add_tenant("alice")
    gateway = start_gateway()
    gateway.wait_running("alice")
    assert gateway.stop() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(gateway.url, headers={"host": "alice.gw.test"})


def test_no_tenant_outlives_a_killed_gateway(site: Site, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL the gateway: every tenant process exits by itself within seconds."""
    site.add_tenant("alice")
    site.add_tenant("bob")
    gateway = start_gateway()
    gateway.wait_running("alice", "bob")
    pids = {t["pid"] for t in gateway.status()["tenants"]}
    gateway.signal(signal.SIGKILL)
    gateway.process.wait(10)
    assert_gone(pids, timeout=10)


def test_stopping_kills_a_tenant_that_ignores_sigterm(site: Site, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """stop_timeout_s bounds how long a stuck tenant can hold up a stop."""
    site.add_tenant("alice", settings="stop_timeout_s = 0.5\n")
    gateway = start_gateway()
    gateway.wait_running("alice")
    pid = gateway.tenant("alice")["pid"]
    os.kill(pid, signal.SIGSTOP)  # a stopped process cannot handle SIGTERM
    try:
        started = time.monotonic()
        assert gateway.stop() == 0
        assert time.monotonic() - started < 20
        assert not pid_alive(pid)
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_status_reports_tenants(site: Site, start_gateway) -> None:  # type: ignore[no-untyped-def]
    site.add_tenant("alice")
    gateway: RunningGateway = start_gateway()
    gateway.wait_running("alice")
    status = gateway.status()
    assert status["domain"] == "gw.test"
    # Root on this machine (and in CI): bubblewrap with user namespaces.
    assert status["isolation"]["level"] == ("full" if IS_ROOT else "none")
    (alice,) = status["tenants"]
    assert alice["name"] == "alice"
    assert alice["databases"] == ["data.db"]
    assert alice["state"] == "running"
    text = gateway.cli("status").stdout
    assert "alice" in text and "running" in text and "isolation" in text
