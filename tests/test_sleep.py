"""Sleeping tenants (tenant_defaults.idle_stop_s): stopped when idle, woken by the next request.

Real gateway, real sandboxed Datasette: a sleeping tenant has no process at all.
"""

from __future__ import annotations

import errno
import itertools
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import RunningGateway, Site, assert_gone, wait_until
from .test_auth import FAST_HASHING
from .test_upload import Uploader, add_user

IDLE_S = 1.5


def _started(gateway: RunningGateway, tenant: str) -> list[dict[str, Any]]:
    return [e for e in list(gateway.events)
            if e.get("event") == "tenant_started" and e.get("tenant") == tenant]


def _sleeps(gateway: RunningGateway, tenant: str) -> list[dict[str, Any]]:
    return [e for e in list(gateway.events)
            if e.get("event") == "tenant_sleeping" and e.get("tenant") == tenant]


@pytest.fixture
def gateway(site: Site, start_gateway: Any) -> RunningGateway:
    site.write_config(auth=FAST_HASHING)
    site.add_tenant("alice", settings=f"idle_stop_s = {IDLE_S}\n")
    site.add_tenant("bob")  # idle_stop_s = 0, the default: never sleeps
    gateway: RunningGateway = start_gateway()
    gateway.wait_running("bob")
    return gateway


def test_an_idle_tenant_sleeps_and_the_next_request_wakes_it(gateway: RunningGateway) -> None:
    """1. alice may sleep: at start she has no process. 2. A request starts her and gets her
    answer. 3. idle_stop_s later her process is gone, her route stays: status, the apex, the
    metrics and the dashboard's data say "sleeping". 4. The next request wakes her again."""
    asleep = gateway.tenant("alice")
    assert (asleep["state"], asleep["pid"], asleep["generation"]) == ("sleeping", None, None)
    response = gateway.get("alice", "/data/items.json?_shape=array&_size=1")
    assert (response.status_code, response.json()) == (200, [{"id": 1, "name": "item 1"}])
    awake = gateway.tenant("alice")
    assert awake["state"] == "running"
    woke = gateway.wait_for_event("tenant_woke", tenant="alice")
    assert woke["generation"] == awake["generation"]
    slept = gateway.wait_for_event("tenant_sleeping", tenant="alice", timeout=IDLE_S + 20)
    assert slept["generation"] == awake["generation"] and slept["idle_s"] >= IDLE_S
    assert slept["reason"] == "idle"
    assert_gone({awake["pid"]})
    status = gateway.tenant("alice")
    assert (status["state"], status["pid"]) == ("sleeping", None)
    assert gateway.tenant("bob")["state"] == "running"  # never sleeps
    home = gateway.get(None, "/")
    assert "asleep: wakes at the first visit" in home.text
    assert home.text.count("asleep: wakes") == 1  # bob is awake
    metrics = httpx.get(f"http://{gateway.wait_for_event('gateway_listening')['metrics']}"
                        "/metrics").text
    assert 'gateway_tenant_state{state="sleeping",tenant="alice"} 1' in metrics
    assert 'gateway_tenant_state{state="running",tenant="bob"} 1' in metrics
    assert gateway.get(None, "/-/health").json()["tenants"] == {"running": 1, "sleeping": 1}
    again = gateway.get("alice", "/data/items.json?_shape=array&_size=1")
    assert again.status_code == 200
    assert gateway.tenant("alice")["generation"] > awake["generation"]


def test_32_first_requests_at_once_start_one_process(gateway: RunningGateway) -> None:
    """32 clients hit the sleeping tenant together: all are answered by it, and only one
    process was started for them (one tenant_started, one generation)."""
    assert gateway.tenant("alice")["state"] == "sleeping"
    barrier = threading.Barrier(32)
    results: list[int] = []

    def first_request() -> None:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            barrier.wait()
            response = client.get("/data/items.json?_shape=array&_size=1",
                                  headers={"host": gateway.host("alice")})
            results.append(response.status_code)

    threads = [threading.Thread(target=first_request) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [200] * 32
    started = _started(gateway, "alice")
    assert len(started) == 1
    assert gateway.tenant("alice")["generation"] == started[0]["generation"]
    assert len([e for e in gateway.events if e.get("event") == "tenant_woke"]) == 1


def test_no_sleep_while_an_upload_runs(gateway: RunningGateway) -> None:
    """An upload that takes twice idle_stop_s, its body sent slowly: the tenant stays awake
    (same process) until it is done, and sleeps idle_stop_s after."""
    uploader = Uploader(gateway, add_user(gateway, "ann@example.com", "alice"))
    assert gateway.get("alice", "/data/items.json").status_code == 200  # awake
    pid = gateway.tenant("alice")["pid"]
    rows = 12

    def slowly() -> Iterator[bytes]:
        yield (b'--b\r\ncontent-disposition: form-data; name="table"\r\n\r\nslow\r\n'
               b'--b\r\ncontent-disposition: form-data; name="file"; filename="slow.csv"\r\n'
               b"content-type: text/csv\r\n\r\nn,word\r\n")
        for n in range(rows):
            time.sleep(2 * IDLE_S / rows)
            yield f"{n},word {n}\r\n".encode()
        yield b"\r\n--b--\r\n"

    response = gateway.client.post(
        "/-/upload", content=slowly(), timeout=60,
        headers={**uploader.headers, "content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == rows
    assert _sleeps(gateway, "alice") == []
    assert gateway.tenant("alice")["pid"] == pid
    assert len(uploader.rows("data", "slow")) == rows
    gateway.wait_for_event("tenant_sleeping", tenant="alice", timeout=IDLE_S + 20)


def test_a_tenant_that_cannot_wake_answers_the_crash_page(gateway: RunningGateway) -> None:
    """While alice sleeps her database is replaced by something that is not SQLite: the
    request that wakes her gets the crash page (not the retry hold's wait, then "starting"),
    and so does the next one; mended and restarted, she serves again."""
    assert gateway.get("alice", "/data/items.json").status_code == 200
    gateway.wait_for_event("tenant_sleeping", tenant="alice", timeout=IDLE_S + 20)
    database = gateway.site.tenants_dir / "alice" / "data" / "data.db"
    saved = database.read_bytes()
    database.write_bytes(b"this is not a database" * 100)
    for _ in range(2):
        response = gateway.get("alice", "/", headers={"accept": "application/json"})
        assert response.status_code == 503
        assert response.json()["message"] == (
            "The site 'alice' has stopped working and is being looked at.")
    assert gateway.tenant("alice")["last_failure"] is not None
    database.write_bytes(saved)
    gateway.cli("tenant", "restart", "alice")
    wait_until(lambda: gateway.get("alice", "/data/items.json").status_code == 200, 30,
               message="alice serves again")


def test_units_still_work_with_the_registry_built_on_first_use(
        site: Site, start_gateway: Any) -> None:
    """tenant_process defers Datasette's pint registry (a faster wake): metadata units,
    custom units included, still convert filter values."""
    directory = site.add_tenant("alice", tables={"places": [
        {"id": 1, "distance": 500}, {"id": 2, "distance": 2000}, {"id": 3, "distance": 6000}]})
    (directory / "metadata.json").write_text(json.dumps({
        "custom_units": ["league = 4828 m"],
        "databases": {"data": {"tables": {"places": {"units": {"distance": "m"}}}}},
    }))
    gateway = start_gateway()
    ids = {}
    for value in ("1km", "1league"):
        response = gateway.get("alice", f"/data/places.json?_shape=array&distance__gt={value}")
        assert response.status_code == 200, response.text
        ids[value] = [row["id"] for row in response.json()]
    assert ids == {"1km": [2, 3], "1league": [3]}


def test_a_sleeper_sleeps_on_through_a_reload_and_an_upgrade(gateway: RunningGateway) -> None:
    """A reload that changes sleeping alice, then `gateway upgrade`: no process is started for
    her (bob, awake, is handed over); her next request wakes her with the new settings."""
    bob = gateway.tenant("bob")["pid"]
    toml = gateway.site.tenants_dir / "alice" / "tenant.toml"
    toml.write_text(toml.read_text() + 'title = "Alice renamed"\n')
    gateway.cli("reload")
    assert gateway.tenant("alice")["state"] == "sleeping"
    old_worker = gateway.worker_pid
    gateway.cli("upgrade")
    wait_until(lambda: gateway.worker_pid != old_worker, message="the new worker")
    assert gateway.tenant("alice")["state"] == "sleeping"
    assert gateway.tenant("bob")["pid"] == bob
    assert _started(gateway, "alice") == []
    assert gateway.get("alice", "/data/items.json").status_code == 200
    assert "Alice renamed" in gateway.get(None, "/").text


@pytest.mark.root
def test_a_wake_with_no_room_to_start_answers_the_crash_page_then_recovers(
        site: Site, start_gateway: Any) -> None:
    """The run folder (sockets) has no inode left when alice wakes (a full disk): the start
    fails on the gateway's side, the request gets the crash page rather than waiting out the
    retry budget, and once there is room again she wakes (the supervisor did not give up)."""
    run = site.root / "run"
    run.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "nr_inodes=64,mode=0711", "gw-test-run",
                    str(run)], check=True)
    try:
        site.write_config(sandbox={"spare_processes": 0})
        site.add_tenant("alice", settings=f"idle_stop_s = {IDLE_S}\n")
        gateway = start_gateway()
        filler = run / "filler"
        filler.mkdir()
        try:
            for n in itertools.count():
                (filler / str(n)).touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        for _ in range(2):
            response = gateway.get("alice", "/", headers={"accept": "application/json"})
            assert response.status_code == 503
            assert "stopped working" in response.json()["message"]
        failure = gateway.tenant("alice")["last_failure"]
        assert failure is not None and "No space left" in failure["reason"]
        shutil.rmtree(filler)
        wait_until(lambda: gateway.get("alice", "/data/items.json").status_code == 200, 30,
                   message="alice wakes once there is room")
        gateway.stop()
    finally:
        subprocess.run(["umount", "--lazy", str(run)], check=False)
