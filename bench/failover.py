#!/usr/bin/env python3
"""A planned move and a dead host, measured side by side from an edge. Run as root, from the
repository's root.

    .venv/bin/python bench/failover.py [--lease-ttl 2] [--rounds 2] [--db-mb 100]

Starts a 3-member etcd cluster, SeaweedFS (the replicas' bucket), two hosts (127.0.0.2,
127.0.0.3, each replicating with Litestream, [backup] sync_interval_s 1) and an edge, all
`gateway serve` processes, with one tenant `alice` whose database holds --db-mb MB. One client
GETs alice through the edge in a loop (one request at a time, proxy.retry_budget_s 10); a
writer commits a row every 20 ms to alice's database on the host running it (a write is
acknowledged when its commit returns; the writer stops at the kill, or when the moving tenant's
process has exited).

Then, in one run:
- `planned move`: `gateway tenant move alice <other host>` (from the edge), --rounds times;
- `kill -9`: the host running alice is killed with SIGKILL (gateway master, worker, tenant and
  Litestream: a machine gone), --rounds times; a new host joins for the next round.
Prints, per round: the time from the command (or the kill) until alice answers 200 from the new
host, the failed requests, the slowest request (the ones the edge held), and the rows lost (the
acknowledged ones the new host does not have).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.cluster import tls
from tests.conftest import RunningGateway, Site, wait_until
from tests.etcd_cluster import EtcdCluster
from tests.test_backup import SeaweedFS, backup_settings
from tests.test_cluster import _etcd_get

UID_BASE = int(os.environ.get("GATEWAY_TEST_UID_BASE", "20000"))
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def site(root: Path, etcd: EtcdCluster, s3: str, node: str, role: str, advertise: str,
         uid: int, ttl: int) -> Site:
    folder = root / node
    folder.mkdir(mode=0o755)
    made = Site(folder)
    tls.issue_node(root / "ca", node, folder / "cluster")
    cluster: dict[str, Any] = {"etcd_endpoints": etcd.endpoints, "node": node, "role": role,
                               "tls_dir": str(folder / "cluster"), "lease_ttl_s": ttl}
    if advertise:
        cluster["advertise"] = advertise
    made.write_config(cluster=cluster, sandbox={"uid_min": uid, "uid_max": uid + 29})
    if role == "host":
        made.write_config(backup=backup_settings(made, s3))
    made.add_tenant("alice")
    return made


def fill(database: Path, megabytes: int) -> None:
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE IF NOT EXISTS pad (id INTEGER PRIMARY KEY, data BLOB)")
        db.executemany("INSERT INTO pad (data) VALUES (randomblob(1048576))",
                       [()] * megabytes)
        db.execute("CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, at REAL)")
    db.close()


@dataclass
class Load:
    """The reader's answers (sent at, took, status) and the writer's acknowledged rows."""

    edge: RunningGateway
    answers: list[tuple[float, float, int]] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    stop_writing: threading.Event = field(default_factory=threading.Event)

    def read(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                code = self.edge.get("alice", "/data/items.json?_shape=array&id=3").status_code
            except Exception:  # a failed request is what we count
                code = 0
            self.answers.append((sent, time.monotonic() - sent, code))

    def write(self, database: Path, alive: Any, first_id: int) -> None:
        row = first_id
        while not self.stop_writing.is_set() and alive():
            try:
                with sqlite3.connect(database, timeout=1) as db:
                    db.execute("INSERT INTO log VALUES (?, ?)", (row, time.time()))
                db.close()
            except sqlite3.Error:
                break
            self.acknowledged.append(row)
            row += 1
            time.sleep(0.02)


def running_alice(hosts: dict[str, RunningGateway]) -> str:
    return next(n for n, h in hosts.items() if h.status()["cluster"]["hosting"] == ["alice"])


def rows_missing(host: RunningGateway, acknowledged: list[int]) -> int:
    database = host.site.tenants_dir / "alice" / "data" / "data.db"
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        present = {row for (row,) in db.execute("SELECT id FROM log")}
    finally:
        db.close()
    return len(set(acknowledged) - present)


def measure(label: str, load: Load, hosts: dict[str, RunningGateway], victim: str,
            act: Any) -> None:
    """Run `act` (returns when it was done) under the load; print the round's figures. Starts
    once the victim's replica had every write (the steady state; right after a takeover the
    new host's first copy of the database is still on its way, and a death then loses what
    was written since the takeover)."""
    etcd = load.edge.site.settings["cluster"]["etcd_endpoints"][0]

    def steady() -> bool:
        record = json.loads(_etcd_get(etcd, "/gateway/replicas/alice") or "{}")
        return bool(record.get("txids")) and record.get("node") == victim

    wait_until(steady, timeout=300, message="the replica to have every write")
    database = hosts[victim].site.tenants_dir / "alice" / "data" / "data.db"
    pid = next(t["pid"] for t in hosts[victim].status()["tenants"] if t["name"] == "alice")
    first_id = int(time.time() * 1000)
    reader = threading.Thread(target=load.read)
    writer = threading.Thread(target=load.write, args=(database, lambda: _alive(pid), first_id))
    old_address = load.edge.status()["cluster"]["endpoints"]["alice"]
    switched: list[float] = []
    watcher = threading.Thread(target=_watch_switch, args=(load, old_address, switched))
    reader.start()
    writer.start()
    watcher.start()
    time.sleep(1)
    started = time.monotonic()
    act(load)
    successor = wait_until(lambda: next((n for n, h in hosts.items() if n != victim
                                         and _hosting(h)), None), timeout=120)
    wait_until(lambda: switched and any(s + d >= switched[0] and c == 200
                                        for s, d, c in load.answers), timeout=120)
    time.sleep(1)
    load.stop.set()
    load.stop_writing.set()
    for thread in (reader, writer, watcher):
        thread.join()
    after = [(s, d, c) for s, d, c in load.answers if s + d >= started]
    back = min(s + d for s, d, c in after if c == 200 and s + d >= switched[0])
    failed = [c for _, _, c in after if c != 200]
    lost = rows_missing(hosts[successor], load.acknowledged)
    print(f"{label}: {victim} -> {successor}; alice served from {successor} after"
          f" {back - started:.2f} s; {len(failed)} failed {failed} of {len(after)} requests;"
          f" slowest {max(d for _, d, _ in after):.2f} s; rows lost {lost} of"
          f" {len(load.acknowledged)} acknowledged")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _hosting(host: RunningGateway) -> bool:
    with contextlib.suppress(Exception):
        return bool(host.status()["cluster"]["hosting"] == ["alice"]
                    and host.tenant("alice")["state"] == "running")
    return False


def _watch_switch(load: Load, old_address: str, switched: list[float]) -> None:
    """When the edge routes alice to another address (its answers from then on come from the
    new host)."""
    while not load.stop.is_set() and not switched:
        with contextlib.suppress(Exception):
            address = load.edge.status()["cluster"]["endpoints"].get("alice")
            if address is not None and address != old_address:
                switched.append(time.monotonic())
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lease-ttl", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--db-mb", type=int, default=100)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gw-failover-", dir="/tmp"))
    os.chmod(root, 0o755)
    (root / "s3").mkdir()
    s3 = SeaweedFS(root / "s3")
    s3.start()
    etcd = EtcdCluster()
    tls.init_ca(root / "ca")
    hosts: dict[str, RunningGateway] = {}
    uids = iter(range(UID_BASE, UID_BASE + 1000, 30))
    try:
        first = site(root, etcd, s3.endpoint, "h1", "host", ADDRESSES[0], next(uids),
                     args.lease_ttl)
        fill(first.tenants_dir / "alice" / "data" / "data.db", args.db_mb)
        hosts["h1"] = RunningGateway(first)
        hosts["h1"].wait_running("alice", timeout=120)
        hosts["h2"] = RunningGateway(site(root, etcd, s3.endpoint, "h2", "host", ADDRESSES[1],
                                          next(uids), args.lease_ttl))
        edge = RunningGateway(site(root, etcd, s3.endpoint, "e1", "edge", "", next(uids),
                                   args.lease_ttl))
        wait_until(lambda: edge.get("alice", "/data.json").status_code == 200, timeout=120)
        hosts["h1"].wait_for_event("cluster_tenant_announced", tenant="alice")
        print(f"lease TTL {args.lease_ttl} s; retry budget 10 s; alice's database"
              f" {args.db_mb} MB; one reader (sequential GETs), one writer (a row every 20 ms)")
        for round_ in range(1, args.rounds + 1):
            victim = running_alice(hosts)
            (target,) = set(hosts) - {victim}

            def move(load: Load, target: str = target) -> None:
                out = edge.cli("tenant", "move", "alice", target).stdout.strip()
                print(f"  {out}")

            measure(f"planned move {round_}", Load(edge), hosts, victim, move)
        for round_ in range(1, args.rounds + 1):
            victim = running_alice(hosts)

            def kill(load: Load, victim: str = victim) -> None:
                gone = hosts[victim]
                pids = {t["pid"] for t in gone.status()["tenants"] if t["pid"]}
                streams = {p["pid"] for p in gone.status().get("backup", {}).get(
                    "processes", []) if p.get("pid")}
                worker = gone.worker_pid
                load.stop_writing.set()  # acknowledged: every commit before the kill
                time.sleep(0.05)
                for pid in (gone.pid, worker, *pids, *streams):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

            gone = hosts[victim]
            measure(f"kill -9 {round_}", Load(edge), hosts, victim, kill)
            gone.process.wait(10)
            gone.client.close()
            del hosts[victim]
            # A new machine takes the dead one's place for the next round.
            fresh = f"h{len(ADDRESSES) + round_}"
            used = {h.site.settings["cluster"]["advertise"] for h in hosts.values()}
            address = next(a for a in ADDRESSES if a not in used)
            hosts[fresh] = RunningGateway(site(root, etcd, s3.endpoint, fresh, "host", address,
                                               next(uids), args.lease_ttl))
            wait_until(lambda fresh=fresh: hosts[fresh].status()["cluster"]["lease"],
                       timeout=60)
    finally:
        for gateway in [*hosts.values()]:
            with contextlib.suppress(Exception):
                gateway.stop()
        with contextlib.suppress(Exception):
            edge.stop()
        etcd.close()
        s3.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
