"""Spare tenant processes (sandbox.spare_processes, spares.py): a wake is handed a sandbox that
has Datasette loaded already. Each spare serves one tenant, as that tenant's user, and leaves
nothing mounted behind it.

Real gateway, real bubblewrap, root (spares need it).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from .conftest import UID_BASE, RunningGateway, Site, assert_gone, wait_until

IDLE_S = 3.0

pytestmark = pytest.mark.root


def _started(gateway: RunningGateway, tenant: str) -> list[dict[str, Any]]:
    return [e for e in list(gateway.events)
            if e.get("event") == "tenant_started" and e.get("tenant") == tenant]


def _proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {key: value.strip() for key, _, value in (line.partition(":") for line in f)}


def _mounts_under(folder: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return sorted(p for p in points if p == str(folder) or p.startswith(f"{folder}/"))


def _idle_spares(site: Site) -> list[int]:
    """Pids of this site's spares not handed a tenant yet (bwrap, outside the sandbox)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if (argv[0].endswith(b"bwrap") and b"gateway.spare_process" in argv
                and any(str(site.root / "run" / "spares" / "spare-").encode() in arg
                        for arg in argv)):
            pids.append(int(entry))
    return pids


@pytest.fixture
def gateway(site: Site, start_gateway: Any) -> RunningGateway:
    site.add_tenant("alice", settings=f"idle_stop_s = {IDLE_S}\n")
    site.add_tenant("bob", settings=f"idle_stop_s = {IDLE_S}\n")
    gateway: RunningGateway = start_gateway()
    return gateway


def test_each_wake_is_handed_a_spare_of_its_own(site: Site, gateway: RunningGateway) -> None:
    """1. alice and bob wake: each is a spare (tenant_started says so), each runs as its own
    user with no capabilities and no-new-privs, and once it serves the host holds no bind of
    its folders (only its sandbox does). 2. alice sleeps: her folders are unbound, her
    spare's folders gone. 3. She wakes again: a new spare, not any process seen before. The
    pool is kept at its size all along."""
    wait_until(lambda: len(_idle_spares(site)) == 2, 30, message="two idle spares")
    processes = {}
    spares_dir = site.root / "run" / "spares"
    for name in ("alice", "bob"):
        assert gateway.get(name, "/data/items.json?_size=1").status_code == 200
        processes[name] = tenant = gateway.tenant(name)
        status = _proc_status(tenant["pid"])  # before it sleeps again (IDLE_S)
        # Answered after its start, so after the gateway detached the host's binds: the
        # tenant's own (private) copy serves, and nothing on the host leads to its files.
        assert not [p for p in _mounts_under(spares_dir)
                    if p.startswith(f"{spares_dir / str(tenant['generation'])}/")]
        with open(f"/proc/{tenant['pid']}/mountinfo") as f:
            assert "/data" in [line.split()[4] for line in f]
        assert [e["spare"] for e in _started(gateway, name)] == [True]
        owner = (site.tenants_dir / name / "data").stat().st_uid
        assert UID_BASE <= owner < UID_BASE + 1000
        assert status["Uid"].split() == [str(owner)] * 4
        assert status["Gid"].split() == [str(owner)] * 4
        capabilities = [status[key] for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")]
        assert capabilities == ["0000000000000000"] * 5
        assert (status["Groups"], status["NoNewPrivs"]) == ("", "1")
    assert processes["alice"]["uid"] != processes["bob"]["uid"]
    alice_spare = spares_dir / str(processes["alice"]["generation"])
    gateway.wait_for_event("tenant_sleeping", tenant="alice", timeout=IDLE_S + 20)
    assert_gone({processes["alice"]["pid"]})
    wait_until(lambda: not alice_spare.exists(), 10, message="alice's spare folder removed")
    assert not [p for p in _mounts_under(spares_dir) if p.startswith(f"{alice_spare}/")]
    assert gateway.get("alice", "/data/items.json?_size=1").status_code == 200
    again = gateway.tenant("alice")
    seen = {processes["alice"]["pid"], processes["bob"]["pid"]}
    assert again["pid"] not in seen
    assert again["generation"] not in {p["generation"] for p in processes.values()}
    assert [e["spare"] for e in _started(gateway, "alice")] == [True, True]
    wait_until(lambda: len(_idle_spares(site)) == 2, 30, message="the pool refilled")


def test_a_spare_that_died_is_not_handed_a_tenant(site: Site, gateway: RunningGateway) -> None:
    """The idle spares are killed: the next wake starts a new one and is answered by it."""
    spares = wait_until(lambda: _idle_spares(site) if len(_idle_spares(site)) == 2 else None,
                        30, message="two idle spares")
    for pid in spares:
        os.kill(pid, signal.SIGKILL)
    assert_gone(set(spares))
    assert gateway.get("alice", "/data/items.json?_size=1").status_code == 200
    assert gateway.wait_for_event("spare_exited")["status"] == -signal.SIGKILL
    assert [e["spare"] for e in _started(gateway, "alice")] == [True]


def test_without_spares_every_wake_is_a_cold_start(site: Site, start_gateway: Any) -> None:
    site.write_config(sandbox={"spare_processes": 0})
    site.add_tenant("alice", settings=f"idle_stop_s = {IDLE_S}\n")
    gateway = start_gateway()
    assert gateway.get("alice", "/data/items.json?_size=1").status_code == 200
    assert [e["spare"] for e in _started(gateway, "alice")] == [False]
    assert not _idle_spares(site)
    assert not (site.root / "run" / "spares").exists()
