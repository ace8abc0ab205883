#!/usr/bin/env python3
"""A planned move and a dead host, measured side by side from an edge. Run as root, from the
repository's root.

    .venv/bin/python bench/failover.py [--lease-ttl 2] [--rounds 2] [--db-mb 100]
        [--only move,kill,edge] [--wrk-connections 2]

Starts a 3-member etcd cluster, SeaweedFS (the replicas' bucket), two hosts (127.0.0.2,
127.0.0.3, each replicating with Litestream, [backup] sync_interval_s 1) and two edges, all
`gateway serve` processes, with one tenant `alice` whose database holds --db-mb MB. Under load
through an edge (proxy.retry_budget_s 10): wrk (`-t1 -c2 --timeout 12s`: a request the edge
holds for the whole budget is an answer, not a wrk timeout) beside one sequential client that
times when alice serves again; a writer commits a row every 20 ms to alice's database on the
host running it (a write is acknowledged when its commit returns; the writer stops at the kill,
or when the moving tenant's process has exited).

Then, in one run:
- `planned move`: `gateway tenant move alice <other host>` (from the edge), --rounds times;
- `kill -9`: the host running alice is killed with SIGKILL (gateway master, worker, tenant and
  Litestream: a machine gone), --rounds times; a new host joins for the next round;
- `edge kill`: one edge is killed with SIGKILL, --rounds times (a new edge joins for the next).
  The sequential client goes to both edges in turn, as DNS round robin or a TCP load balancer
  would, and tries a request that failed on one edge once on the other (a load balancer's
  retry of an idempotent GET); wrk loads the surviving edge.
Prints, per round: the time from the command (or the kill) until alice answers 200 from the new
host (edge kill: through the other edge, for a request that had failed on the dead one), the
failed requests (the sequential client's and wrk's), the slowest request (the ones the edge
held), the rows lost (the acknowledged ones the new host does not have), and where the time
went: each phase's first event on any node, as seconds after the command or kill.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import spares
from gateway.cluster import tls
from tests.conftest import RunningGateway, Site, wait_until
from tests.etcd_cluster import EtcdCluster
from tests.test_backup import SeaweedFS, backup_settings
from tests.test_cluster import _etcd_get

PATH = "/data/items.json?_shape=array&id=3"
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
    """The sequential client's answers (sent at, took, status, edge it came through), wrk's
    figures, and the writer's acknowledged rows. The client goes to `edges` in turn and tries a
    request that failed (no answer) once on the next one, as a load balancer would."""

    edges: list[RunningGateway]
    wrk_connections: int = 2
    answers: list[tuple[float, float, int, int]] = field(default_factory=list)
    failed_first: list[float] = field(default_factory=list)  # when a first try had no answer
    acknowledged: dict[int, float] = field(default_factory=dict)  # row -> when (monotonic)
    stop: threading.Event = field(default_factory=threading.Event)
    stop_writing: threading.Event = field(default_factory=threading.Event)
    wrk: subprocess.Popen[str] | None = None
    acted: tuple[float, float] | None = None  # when the kill was (monotonic, wall clock)

    @property
    def edge(self) -> RunningGateway:
        return self.edges[0]

    def start_wrk(self, edge: RunningGateway) -> None:
        """wrk on `edge` until stop_wrk (SIGINT: it prints its figures then)."""
        if self.wrk_connections:
            self.wrk = subprocess.Popen(
                ["wrk", "-t1", f"-c{self.wrk_connections}", "-d600s", "--timeout", "12s",
                 "-H", f"Host: {edge.host('alice')}", f"{edge.url}{PATH}"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True)  # (see bench/common.py's Processes)

    def stop_wrk(self) -> str:
        """wrk's requests and failures (non-2xx answers, socket errors), as one phrase."""
        if self.wrk is None:
            return "no wrk"
        self.wrk.send_signal(signal.SIGINT)
        output, _ = self.wrk.communicate(timeout=30)
        done = re.search(r"(\d+) requests in", output)
        if done is None:
            return f"wrk said: {output.strip()!r}"
        kinds = re.findall(r"(Non-2xx or 3xx responses:|connect|read|write|timeout) (\d+)",
                           output)
        failed = sum(int(n) for _, n in kinds)
        detail = ", ".join(f"{kind.rstrip(':')} {n}" for kind, n in kinds if int(n))
        return f"wrk: {failed} failed of {done.group(1)}" + (f" ({detail})" if detail else "")

    def read(self) -> None:
        clients = [httpx.Client(base_url=edge.url, timeout=30) for edge in self.edges]
        turn = 0
        try:
            while not self.stop.is_set():
                turn += 1
                sent = time.monotonic()
                for attempt in range(min(2, len(clients))):
                    which = (turn + attempt) % len(clients)
                    try:
                        code = clients[which].get(PATH, headers={
                            "host": self.edges[which].host("alice")}).status_code
                        break
                    except httpx.HTTPError:  # no answer: a failed request, or the next edge
                        code = 0
                        if attempt == 0:
                            self.failed_first.append(time.monotonic())
                self.answers.append((sent, time.monotonic() - sent, code, which))
        finally:
            for client in clients:
                client.close()

    def write(self, database: Path, alive: Any, first_id: int) -> None:
        row = first_id
        while not self.stop_writing.is_set() and alive():
            try:
                with sqlite3.connect(database, timeout=1) as db:
                    db.execute("INSERT INTO log VALUES (?, ?)", (row, time.time()))
                db.close()
            except sqlite3.Error:
                break
            self.acknowledged[row] = time.monotonic()
            row += 1
            time.sleep(0.02)


def running_alice(hosts: dict[str, RunningGateway]) -> str:
    return next(n for n, h in hosts.items() if h.status()["cluster"]["hosting"] == ["alice"])


def rows_lost(host: RunningGateway, acknowledged: dict[int, float]) -> str:
    """How many acknowledged rows the new host lacks, and how long before the last
    acknowledged write (the writer stops at the kill) the oldest of them was acknowledged:
    what the sync interval bounds."""
    database = host.site.tenants_dir / "alice" / "data" / "data.db"
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        present = {row for (row,) in db.execute("SELECT id FROM log")}
    finally:
        db.close()
    lost = set(acknowledged) - present
    if not lost:
        return f"rows lost 0 of {len(acknowledged)} acknowledged"
    age = max(acknowledged.values()) - min(acknowledged[row] for row in lost)
    return (f"rows lost {len(lost)} of {len(acknowledged)} acknowledged, the oldest of them"
            f" acknowledged {age:.2f} s before the last")


def measure(label: str, load: Load, hosts: dict[str, RunningGateway], victim: str,
            act: Any, edges: list[RunningGateway]) -> None:
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
    load.start_wrk(load.edge)
    reader.start()
    writer.start()
    watcher.start()
    time.sleep(1)
    started, started_wall = time.monotonic(), time.time()
    act(load)
    if load.acted is not None:  # from the kill itself, not the look-ups before it
        started, started_wall = load.acted
    successor = wait_until(lambda: next((n for n, h in hosts.items() if n != victim
                                         and _hosting(h)), None), timeout=120)
    wait_until(lambda: switched and any(s + d >= switched[0] and c == 200
                                        for s, d, c, _ in load.answers), timeout=120)
    time.sleep(1)
    load.stop.set()
    load.stop_writing.set()
    for thread in (reader, writer, watcher):
        thread.join()
    wrk = load.stop_wrk()
    after = [(s, d, c) for s, d, c, _ in load.answers if s + d >= started]
    back = min(s + d for s, d, c in after if c == 200 and s + d >= switched[0])
    failed = [c for _, _, c in after if c != 200]
    lost = rows_lost(hosts[successor], load.acknowledged)
    print(f"{label}: {victim} -> {successor}; alice served from {successor} after"
          f" {back - started:.2f} s; {len(failed)} failed {failed} of {len(after)} sequential"
          f" requests, {wrk}; slowest {max(d for _, d, _ in after):.2f} s; {lost}")
    print(timeline([*edges, *hosts.values()], started_wall, switched[0] - started))
    refused = [entry for entry in list(load.edge.access) if entry.get("tenant") == "alice"
               and entry.get("status") != 200 and _epoch(entry["time"]) >= started_wall]
    for entry in refused:  # what the edge answered instead of 200, and why
        print(f"    the edge answered {entry['status']} after {entry['duration_ms']} ms,"
              f" {entry['attempts']} attempts")


PHASES = {  # event (on any node) -> what it marks, in the order they happen
    "cluster_move_started": "leader placed it on the new host (move)",
    "cluster_tenant_withdrawn": "old host withdrew it (edges hold its requests)",
    "cluster_tenant_handed_off": "old host handed the replica off",
    "cluster_tenant_placed": "leader re-placed it (lease expired)",
    "cluster_tenant_taking": "new host saw the placement",
    "cluster_tenant_restored": "new host restored it",
    "tenant_started": "its Datasette serves on the new host",
    "cluster_tenant_announced": "new host announced it",
    "cluster_route_changed": "edge routes to it",
}


def timeline(gateways: list[RunningGateway], since: float, switched_s: float) -> str:
    """Where the time went: each phase's event (the first after `since`, on any node) as
    seconds after it."""
    seen: dict[str, float] = {}
    for gateway in gateways:
        for event in list(gateway.events):
            name = event.get("event")
            if name not in PHASES or event.get("tenant") != "alice":
                continue
            at = _epoch(event["time"]) - since
            if at >= 0 and (name not in seen or at < seen[name]):
                seen[name] = at
    parts = [f"{seen[name]:5.2f} s {label}" for name, label in PHASES.items() if name in seen]
    parts.append(f"{switched_s:5.2f} s the edge's status shows the new address")
    return "\n".join(f"    {part}" for part in sorted(parts))


def _epoch(iso: str) -> float:
    whole, _, fraction = iso.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction}")


def measure_edge_kill(label: str, load: Load) -> None:
    """Kill -9 the first of `load.edges` under the load; print what clients saw."""
    victim, survivor = load.edges
    reader = threading.Thread(target=load.read)
    load.start_wrk(survivor)
    reader.start()
    time.sleep(2)
    worker = victim.worker_pid
    killed = time.monotonic()
    for pid in (victim.pid, worker):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: any(at >= killed for at in load.failed_first), timeout=60)
    time.sleep(2)
    load.stop.set()
    reader.join()
    wrk = load.stop_wrk()
    after = [(s, d, c, e) for s, d, c, e in load.answers if s + d >= killed]
    first_failure = min(at for at in load.failed_first if at >= killed)
    back = min(s + d for s, d, c, e in after if c == 200 and s + d >= first_failure)
    failed = [c for _, _, c, _ in after if c != 200]
    retried = sum(1 for at in load.failed_first if at >= killed)
    print(f"{label}: {retried} first tries went to the dead edge (round robin, no health"
          f" check) and had no answer; each was tried on the other (the load balancer's"
          f" retry): the first answered there {back - first_failure:.2f} s after it failed"
          f" ({back - killed:.2f} s after the kill); {len(failed)} failed {failed} of"
          f" {len(after)} sequential requests after the retry; {wrk} on the surviving edge")


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
    parser.add_argument("--only", default="move,kill,edge",
                        help="the rounds to run, of move,kill,edge")
    parser.add_argument("--wrk-connections", type=int, default=2,
                        help="wrk's connections (0: no wrk)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gw-failover-", dir="/tmp"))
    os.chmod(root, 0o755)
    (root / "s3").mkdir()
    s3 = SeaweedFS(root / "s3")
    s3.start()
    etcd = EtcdCluster()
    tls.init_ca(root / "ca")
    hosts: dict[str, RunningGateway] = {}
    edges: list[RunningGateway] = []
    uids = iter(range(UID_BASE, UID_BASE + 1000, 30))
    try:
        first = site(root, etcd, s3.endpoint, "h1", "host", ADDRESSES[0], next(uids),
                     args.lease_ttl)
        fill(first.tenants_dir / "alice" / "data" / "data.db", args.db_mb)
        hosts["h1"] = RunningGateway(first)
        wait_until(lambda: any(t["name"] == "alice" and t["state"] == "running"
                               for t in hosts["h1"].status()["tenants"]), timeout=120)
        hosts["h2"] = RunningGateway(site(root, etcd, s3.endpoint, "h2", "host", ADDRESSES[1],
                                          next(uids), args.lease_ttl))
        for name in ("e1", "e2"):
            edges.append(RunningGateway(site(root, etcd, s3.endpoint, name, "edge", "",
                                             next(uids), args.lease_ttl)))
            wait_until(lambda: edges[-1].get("alice", "/data.json").status_code == 200,
                       timeout=120)
        edge = edges[0]
        hosts["h1"].wait_for_event("cluster_tenant_announced", tenant="alice")
        print(f"lease TTL {args.lease_ttl} s; retry budget 10 s; alice's database"
              f" {args.db_mb} MB; wrk -t1 -c{args.wrk_connections} and one sequential client"
              " through an edge; one writer (a row every 20 ms)")
        only = set(args.only.split(","))
        for round_ in range(1, args.rounds + 1 if "move" in only else 1):
            victim = running_alice(hosts)
            (target,) = set(hosts) - {victim}

            def move(load: Load, target: str = target) -> None:
                out = edge.cli("tenant", "move", "alice", target).stdout.strip()
                print(f"  {out}")

            measure(f"planned move {round_}", Load([edge], args.wrk_connections), hosts, victim,
                    move, edges)
        for round_ in range(1, args.rounds + 1 if "kill" in only else 1):
            victim = running_alice(hosts)

            def kill(load: Load, victim: str = victim) -> None:
                gone = hosts[victim]
                pids = {t["pid"] for t in gone.status()["tenants"] if t["pid"]}
                streams = {p["pid"] for p in gone.status().get("backup", {}).get(
                    "processes", []) if p.get("pid")}
                worker = gone.worker_pid
                load.stop_writing.set()  # acknowledged: every commit before the kill
                time.sleep(0.05)
                load.acted = (time.monotonic(), time.time())
                for pid in (gone.pid, worker, *pids, *streams):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

            gone = hosts[victim]
            measure(f"kill -9 {round_}", Load([edge], args.wrk_connections), hosts, victim,
                    kill, edges)
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
        for round_ in range(1, args.rounds + 1 if "edge" in only else 1):
            measure_edge_kill(f"edge kill {round_}", Load(edges[:2], args.wrk_connections))
            gone = edges.pop(0)
            gone.process.wait(10)
            gone.client.close()
            # A new edge joins for the next round (behind the same load balancer).
            edges.append(RunningGateway(site(root, etcd, s3.endpoint, f"e{2 + round_}", "edge",
                                             "", next(uids), args.lease_ttl)))
            wait_until(lambda: edges[-1].get("alice", "/data.json").status_code == 200,
                       timeout=120)
    finally:
        for gateway in [*hosts.values(), *edges]:
            with contextlib.suppress(Exception):
                gateway.stop()
        etcd.close()
        s3.stop()
        for run_dir in root.glob("*/run"):  # the spares' mounts (as tests/conftest.py's site)
            spares.remove_stale(run_dir)
            spares.release_root(run_dir)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
