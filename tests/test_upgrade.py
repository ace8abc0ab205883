"""Upgrading the gateway itself: a new worker takes the sockets and the tenants; nothing drops."""

from __future__ import annotations

import os
import signal

import pytest

from .conftest import RunningGateway, Site, assert_gone, wait_until
from .test_swap import Load


@pytest.fixture
def gateway(alice_and_bob: RunningGateway) -> RunningGateway:
    return alice_and_bob


def test_upgrade_under_load_loses_no_request(gateway: RunningGateway) -> None:
    """1. 8 clients loop on GETs. 2. `gateway upgrade` twice. 3. No request failed, a new
    worker serves, the tenants were adopted (same processes), and the master stayed."""
    before = gateway.status()
    tenants = gateway.pids()
    with Load(gateway, "/data/items.json?_size=5") as load:
        for _ in range(2):
            result = gateway.cli("upgrade")
            assert result.stdout.startswith("Upgraded: worker ")
            served = load.results["ok"]
            wait_until(lambda served=served: load.results["ok"] > served + 30,  # type: ignore[misc]
                       message="load goes on")
    assert load.failures == []
    after = gateway.status()
    assert after["worker_pid"] != before["worker_pid"]
    assert after["master_pid"] == before["master_pid"] == gateway.pid
    assert gateway.pids() == tenants
    assert all(t["state"] == "running" for t in after["tenants"])
    wait_until(lambda: gateway._has("worker_retired", {}) is not None, message="old worker gone")


def test_sigusr2_upgrades_and_sigterm_then_stops_everything(gateway: RunningGateway) -> None:
    old_worker = gateway.worker_pid
    tenants = set(gateway.pids().values())
    gateway.signal(signal.SIGUSR2)
    gateway.wait_for_event("upgrade_done")
    assert gateway.worker_pid != old_worker
    assert gateway.get("alice", "/data/items.json").status_code == 200
    assert gateway.stop() == 0
    assert_gone(tenants | {old_worker})


def test_failed_upgrade_keeps_the_old_worker(site: Site, gateway: RunningGateway) -> None:
    """An upgrade into an invalid config changes nothing: `gateway upgrade` refuses it, and
    SIGUSR2 logs why and keeps the old worker and its tenants."""
    worker = gateway.worker_pid
    tenants = gateway.pids()
    good = site.config_path.read_text()
    site.config_path.write_text(good + "\nbogus = 1\n")
    result = gateway.cli("upgrade", check=False)
    assert result.returncode == 1
    assert "bogus: unknown key" in result.stderr
    gateway.signal(signal.SIGUSR2)
    event = gateway.wait_for_event("upgrade_failed")
    assert "bogus: unknown key" in event["error"]
    site.config_path.write_text(good)
    assert gateway.worker_pid == worker
    assert gateway.pids() == tenants
    assert gateway.get("alice", "/data/items.json").status_code == 200


def test_a_killed_worker_is_replaced_by_the_master(gateway: RunningGateway) -> None:
    """kill -9 the worker: its tenants die with it (lifeline); the master starts a new worker,
    which starts the tenants again."""
    worker = gateway.worker_pid
    tenants = set(gateway.pids().values())
    os.kill(worker, signal.SIGKILL)
    assert_gone(tenants | {worker})
    gateway.wait_for_event("worker_crashed")
    response = gateway.get("alice", "/data/items.json")
    assert response.status_code == 200
    assert gateway.worker_pid != worker


def test_tenants_forked_by_the_zygote_survive_two_upgrades(gateway: RunningGateway) -> None:
    """alice and bob restarted once the pool is full, so each runs from a spare the first
    worker's zygote forked (pytest runs as root). That zygote ends with its worker at the first
    upgrade, so their status pipes end while they serve on: 1. the second upgrade hands them
    over too; 2. they stay the same processes and answer; 3. a restart after it still works."""
    spares = gateway.site.root / "run" / "spares"
    wait_until(lambda: len(list(spares.glob("spare-*"))) == 2, 30, message="a full pool")
    for name in ("alice", "bob"):
        gateway.cli("tenant", "restart", name)
    forked = [e for e in list(gateway.events) if e.get("event") == "tenant_started"][-2:]
    assert [e["spare"] for e in forked] == [True, True]
    tenants = gateway.pids()
    for _ in range(2):
        assert gateway.cli("upgrade").stdout.startswith("Upgraded: worker ")
        for name in ("alice", "bob"):
            assert gateway.get(name, "/data/items.json?_size=1").status_code == 200
    assert gateway.pids() == tenants
    gateway.cli("tenant", "restart", "alice")
    assert gateway.get("alice", "/data/items.json?_size=1").status_code == 200
