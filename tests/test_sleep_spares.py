"""Spare tenant processes (sandbox.spare_processes, spares.py): a wake is handed a sandbox that
has Datasette loaded already, forked by the zygote (zygote.py, fork_sandbox.py) or started by
bubblewrap. Each spare serves one tenant, as that tenant's user, and leaves nothing mounted
behind it; a forked spare's sandbox is the same as a bubblewrap one's.

Real gateway, real bubblewrap, root (spares need it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from gateway import sandbox, spares
from gateway.config import load_config
from gateway.keys import load_master_key
from gateway.spawner import Spawner
from gateway.zygote import Zygote

from .conftest import UID_BASE, RunningGateway, Site, assert_gone, wait_until

IDLE_S = 3.0

pytestmark = pytest.mark.root


def _started(gateway: RunningGateway, tenant: str) -> list[dict[str, Any]]:
    return [e for e in list(gateway.events)
            if e.get("event") == "tenant_started" and e.get("tenant") == tenant]


def _spare_flags(gateway: RunningGateway, tenant: str, count: int) -> list[bool]:
    """The "spare" field of the tenant's tenant_started events, once there are `count` (the
    log is read in a thread: a line can come after the answer)."""
    events = wait_until(lambda: _started(gateway, tenant)
                        if len(_started(gateway, tenant)) >= count else None,
                        10, message=f"{count} tenant_started events for {tenant}")
    return [event["spare"] for event in events]


def _proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {key: value.strip() for key, _, value in (line.partition(":") for line in f)}


def _mounts_under(folder: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return sorted(p for p in points if p == str(folder) or p.startswith(f"{folder}/"))


def _processes() -> dict[int, tuple[int, list[bytes]]]:
    """pid: (parent pid, argv) of every process."""
    processes = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        processes[int(entry)] = (parent, argv)
    return processes


def _children(processes: dict[int, tuple[int, list[bytes]]], pid: int) -> list[int]:
    return [child for child, (parent, _) in processes.items() if parent == pid]


def _idle_spares(site: Site) -> list[int]:
    """Pids of this site's spares not handed a tenant yet, as the gateway knows them: bwrap
    (outside the sandbox) for a spare of its own, the zygote's fork (still root) for a forked
    spare."""
    spares = str(site.root / "run" / "spares").encode()
    processes = _processes()
    pids = []
    for pid, (_, argv) in processes.items():
        if not argv[0].endswith(b"bwrap") or not any(arg.startswith(spares) for arg in argv):
            continue
        if b"gateway.spare_process" in argv:
            pids.append(pid)
        elif b"gateway.zygote" in argv:
            for zygote in _children(processes, pid):
                for fork in _children(processes, zygote):
                    with contextlib.suppress(OSError, StopIteration):
                        if _proc_status(fork)["Uid"].split()[0] == "0":
                            pids.append(fork)
    return pids


@pytest.fixture(params=[True, False], ids=["forked", "bwrap"])
def gateway(request: pytest.FixtureRequest, site: Site, start_gateway: Any) -> RunningGateway:
    """A gateway with two sleepy tenants, its spares forked by the zygote or each started by
    bubblewrap (sandbox.fork_spares)."""
    site.write_config(sandbox={"fork_spares": request.param})
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
        page = gateway.get(name, "/data/items")  # templates the zygote compiled, if forked
        assert page.status_code == 200 and "<table" in page.text
        processes[name] = tenant = gateway.tenant(name)
        status = _proc_status(tenant["pid"])  # before it sleeps again (IDLE_S)
        # Answered after its start, so after the gateway detached the host's binds: the
        # tenant's own (private) copy serves, and nothing on the host leads to its files.
        assert not [p for p in _mounts_under(spares_dir)
                    if p.startswith(f"{spares_dir / str(tenant['generation'])}/")]
        with open(f"/proc/{tenant['pid']}/mountinfo") as f:
            assert "/data" in [line.split()[4] for line in f]
        assert _spare_flags(gateway, name, 1) == [True]
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
    assert _spare_flags(gateway, "alice", 2) == [True, True]
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
    assert _spare_flags(gateway, "alice", 1) == [True]


def test_a_zygote_that_died_is_started_again(site: Site, start_gateway: Any) -> None:
    """1. The zygote is killed: its idle spares outlive it (they are not its PID namespace's,
    and their lifeline is the gateway's) and the next wake is handed one. 2. The refill starts
    a new zygote, whose forks fill the pool again."""
    site.add_tenant("alice", settings=f"idle_stop_s = {IDLE_S}\n")
    gateway = start_gateway()
    idle = wait_until(lambda: _idle_spares(site) if len(_idle_spares(site)) == 2 else None,
                      30, message="two idle spares")
    zygote = _zygote(site)
    assert zygote is not None
    os.kill(zygote, signal.SIGKILL)
    assert_gone({zygote})
    assert gateway.get("alice", "/data/items.json?_size=1").status_code == 200
    assert _spare_flags(gateway, "alice", 1) == [True]
    handed = gateway.tenant("alice")["pid"]
    assert handed in idle
    left = [pid for pid in idle if pid != handed]
    wait_until(lambda: len([e for e in list(gateway.events)
                            if e.get("event") == "zygote_started"]) == 2,
               30, message="a new zygote")
    assert _zygote(site) not in (None, zygote)
    # The pool: the old zygote's other spare, and one the new zygote forked.
    wait_until(lambda: len(_idle_spares(site)) == 1, 30, message="the pool refilled")
    assert len(left) == 1 and os.path.exists(f"/proc/{left[0]}")


def test_the_zygote_refuses_a_bad_request(tmp_path: Path) -> None:
    """1. A request for a spare whose name is not a spare's (a path) is refused, and so is one
    with too few pipes; nothing is forked. 2. The zygote still forks a spare that loads."""
    run = tmp_path / "run"
    run.mkdir(mode=0o711)
    assert spares.probe(run) is None
    zygote = Zygote(run)
    try:
        zygote.ensure_running()
        pipes = [os.pipe() for _ in range(3)]
        ends = (*pipes[0], *pipes[1], pipes[2][0])
        with pytest.raises(OSError, match=r"^the zygote could not fork \.\./spare-1-1$"):
            zygote.fork("../spare-1-1", ends)
        assert zygote._control is not None
        socket.send_fds(zygote._control, [b"spare-1-1"], list(ends[:2]))
        assert zygote._control.recv(4) == struct.pack("=i", -1)
        for fd in (*pipes[0], *pipes[1], *pipes[2]):
            os.close(fd)
        spare = spares.fork_spare(run, "spare-1-3", zygote)
        assert spares.wait_until_loaded(spare)
        spares.discard(spare)
        assert _children(_processes(), zygote.pid or 0) != []  # its zygote Python still runs
    finally:
        zygote.stop()
        spares.remove_stale(run)
        spares.release_root(run)


def test_without_spares_every_wake_is_a_cold_start(site: Site, start_gateway: Any) -> None:
    site.write_config(sandbox={"spare_processes": 0})
    site.add_tenant("alice", settings=f"idle_stop_s = {IDLE_S}\n")
    gateway = start_gateway()
    assert gateway.get("alice", "/data/items.json?_size=1").status_code == 200
    assert _spare_flags(gateway, "alice", 1) == [False]
    assert not _idle_spares(site)
    assert not (site.root / "run" / "spares").exists()


_NAMESPACES = ("mnt", "net", "ipc", "uts", "cgroup", "pid", "user", "time")
_VIRTUAL = {"tmpfs", "proc", "devpts", "devtmpfs"}


def _mounts(pid: int) -> list[tuple[str, str, str, str]]:
    """(mount point, its options, file system type, where it comes from) of each mount the
    process sees; where a bind comes from is its path with the spare's folder left out."""
    rows = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields, _, fs = line.partition(" - ")
            _, _, _, root, point, options, *_ = fields.split()
            kind = fs.split()[0]
            if kind not in _VIRTUAL:
                root = root.rsplit("/", 1)[-1] if "/spares/" in root or "/tenants/" in root \
                    else root
            rows.append((point, options, kind, root))
    return rows


def _fd_kinds(pid: int) -> list[str]:
    """What each open file descriptor is, without inode numbers: pipe, socket, a path."""
    kinds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            kinds.append(os.readlink(f"/proc/{pid}/fd/{fd}").split(":[")[0])
    return sorted(kinds)


def _sandbox(pid: int) -> dict[str, Any]:
    """What a tenant's (or an idle spare's) sandbox is made of, comparable between processes."""
    status = _proc_status(pid)
    root = f"/proc/{pid}/root"
    with open(f"/proc/{pid}/limits") as f:
        limits = f.read()
    with open(f"/proc/{pid}/net/dev") as f:
        interfaces = sorted(line.split(":")[0].strip() for line in f if ":" in line)
    return {
        "mounts": sorted(_mounts(pid)),  # the order they were made in aside
        "ids": [status[key] for key in ("Uid", "Gid", "Groups")],
        "capabilities": [status[key] for key in ("CapInh", "CapPrm", "CapEff", "CapBnd",
                                                 "CapAmb")],
        "no_new_privs": status["NoNewPrivs"],
        "seccomp": status["Seccomp"],
        "pid_in_namespace": status["NSpid"].split()[-1],
        "processes_seen": sorted(e for e in os.listdir(f"{root}/proc") if e.isdigit()),
        "limits": limits,
        "interfaces": interfaces,
        "tmp": sorted(os.listdir(f"{root}/tmp")),
        "dev": sorted(os.listdir(f"{root}/dev")),
    }


def _namespaces(pid: int) -> dict[str, str]:
    return {name: os.readlink(f"/proc/{pid}/ns/{name}") for name in _NAMESPACES}


def _filesystems(pid: int) -> dict[str, int]:
    """The device of each per-sandbox file system: one of its own, or shared with another?"""
    return {folder: os.stat(f"/proc/{pid}/root{folder}").st_dev
            for folder in ("/tmp", "/dev", "/dev/pts", "/proc")}


def _idle_pythons(site: Site) -> list[int]:
    """The Pythons of the idle spares (bwrap's child, or the zygote's fork), once started."""
    processes = _processes()
    return [python for pid in _idle_spares(site)
            for python in ([pid] if b"gateway.zygote" in processes[pid][1]
                           else _children(processes, pid))]


def _zygote(site: Site) -> int | None:
    """The pid of this site's zygote (the Python bubblewrap runs), if one runs."""
    processes = _processes()
    spares = str(site.root / "run" / "spares").encode()
    return next((child for pid, (_, argv) in processes.items()
                 if argv[0].endswith(b"bwrap") and b"gateway.zygote" in argv
                 and spares in argv for child in _children(processes, pid)), None)


@pytest.mark.slow
def test_a_forked_spare_is_sandboxed_as_one_bubblewrap_starts(site: Site,
                                                             start_gateway: Any) -> None:
    """The same tenants woken from spares bubblewrap starts, then (another gateway) from spares
    the zygote forks: 1. an idle spare has the same open files (its pipes; nothing of the
    zygote's). 2. Each tenant has the same sandbox either way: mounts (none writable from the
    host but /data, its socket folder and the empty /conf, read-only), uid/gid/groups, no
    capabilities, no-new-privs, rlimits, PID 1 of a namespace where it sees only itself, a
    loopback only, an empty /tmp, the same /dev. 3. Its namespaces are its own (not the host's,
    the other tenant's or the zygote's; the user and time namespaces are the host's, as at
    root-bwrap), and so are its /tmp, /dev, /dev/pts and /proc."""
    site.add_tenant("alice", settings="idle_stop_s = 60\n")
    site.add_tenant("bob", settings="idle_stop_s = 60\n")
    host = _namespaces(os.getpid())
    seen: dict[bool, dict[str, Any]] = {}
    for forked in (False, True):
        site.write_config(sandbox={"fork_spares": forked})
        gateway = start_gateway()
        # An idle spare's Python has its pipes only (the ready pipe closed once it has
        # loaded): 0, output, lifeline, handoff.
        wait_until(lambda: [_fd_kinds(pid) for pid in _idle_pythons(site)]
                   == [["/dev/null"] + ["pipe"] * 4] * 2,
                   30, message="two idle spares with their pipes only")
        pids = {}
        for name in ("alice", "bob"):
            assert gateway.get(name, "/data/items.json?_size=1").status_code == 200
            pids[name] = gateway.tenant(name)["pid"]
        assert _spare_flags(gateway, "alice", 1) == [True]
        seen[forked] = {name: _sandbox(pid) for name, pid in pids.items()}
        alice, bob = (_namespaces(pid) for pid in pids.values())
        zygote_pid = _zygote(site)
        others = [host, bob] + ([_namespaces(zygote_pid)] if zygote_pid else [])
        assert (zygote_pid is not None) == forked
        for kind in ("mnt", "net", "ipc", "uts", "cgroup", "pid"):
            assert all(alice[kind] != other[kind] for other in others), kind
        assert (alice["user"], alice["time"]) == (host["user"], host["time"])
        filesystems = [_filesystems(pid) for pid in pids.values()]
        zygote = [_filesystems(zygote_pid)] if zygote_pid else []
        for folder, device in filesystems[0].items():
            assert all(device != other[folder] for other in filesystems[1:] + zygote), folder
        gateway.stop()
    assert seen[True] == seen[False]
    alice = seen[True]["alice"]
    writable = [point for point, options, kind, _ in alice["mounts"]
                if kind not in _VIRTUAL and not options.startswith("ro")]
    assert sorted(set(writable)) == ["/data", "/run/ds"]  # /data twice: the spare's, the tenant's
    assert ("/conf", "ro,nosuid,nodev,relatime") in [row[:2] for row in alice["mounts"]]
    assert alice["capabilities"] == ["0000000000000000"] * 5
    assert (alice["no_new_privs"], alice["pid_in_namespace"]) == ("1", "1")
    assert alice["processes_seen"] == ["1"]
    assert (alice["interfaces"], alice["tmp"]) == (["lo"], [])


async def test_a_spare_that_died_after_it_was_taken_is_not_handed_a_tenant(site: Site) -> None:
    """A spare is killed between the pool's look and the handoff (the OOM killer): the handoff
    finds its pipe closed, the spare is discarded, and the start takes another (Spawner)."""
    site.add_tenant("alice")
    config = load_config(site.config_path)
    for folder in (config.gateway.paths.state_dir, config.gateway.paths.run_dir):
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o711)
    spawner = Spawner(config, sandbox.probe_isolation("auto", UID_BASE),
                      load_master_key(config.gateway.paths.state_dir))
    run = config.gateway.paths.run_dir
    assert spares.probe(run) is None
    zygote = Zygote(run)
    try:
        zygote.ensure_running()
        spare = spares.fork_spare(run, "spare-1-1", zygote)
        assert spares.wait_until_loaded(spare)
        os.kill(spare.process.pid, signal.SIGKILL)
        wait_until(lambda: not os.path.exists(f"/proc/{spare.process.pid}"), 10,
                   message="the spare reaped")
        assert await spawner._hand_spare(config.tenants["alice"], spare) is None
        assert spare.process.returncode == -signal.SIGKILL
        assert not spare.spare_dir.exists()  # discarded: its folders are gone
    finally:
        zygote.stop()
        spares.remove_stale(run)
        spares.release_root(run)
