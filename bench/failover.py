#!/usr/bin/env python3
"""A dead host's tenant, measured from an edge. Run as root, from the repository's root.

    .venv/bin/python bench/failover.py [--lease-ttl 2] [--rounds 3]

Starts a 3-member etcd cluster, two hosts (127.0.0.2, 127.0.0.3) and an edge, all `gateway
serve` processes, with one tenant `alice`. A client GETs alice through the edge in a loop (one
request at a time, proxy.retry_budget_s 10); the host running alice is killed with SIGKILL
(gateway master, worker and tenant: a machine gone). Prints, per round: the time from the kill
until alice answers 200 again, how many requests failed, and the slowest request (the ones the
edge held). No replicas here (tests/test_cluster.py covers the restore): this is the cost of
detection (the lease TTL), placement, a tenant start, and the edge's switch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.cluster import tls
from tests.conftest import RunningGateway, Site, wait_until
from tests.etcd_cluster import EtcdCluster

UID_BASE = int(os.environ.get("GATEWAY_TEST_UID_BASE", "20000"))


def site(root: Path, etcd: EtcdCluster, node: str, role: str, advertise: str, uid: int,
         ttl: int) -> Site:
    folder = root / node
    folder.mkdir(mode=0o755)
    made = Site(folder)
    tls.issue_node(root / "ca", node, folder / "cluster")
    cluster = {"etcd_endpoints": etcd.endpoints, "node": node, "role": role,
               "tls_dir": str(folder / "cluster"), "lease_ttl_s": ttl}
    if advertise:
        cluster["advertise"] = advertise
    made.write_config(cluster=cluster, sandbox={"uid_min": uid, "uid_max": uid + 29})
    made.add_tenant("alice")
    return made


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lease-ttl", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gw-failover-", dir="/tmp"))
    os.chmod(root, 0o755)
    etcd = EtcdCluster()
    tls.init_ca(root / "ca")
    running: dict[str, RunningGateway] = {}
    try:
        addresses = {"h1": "127.0.0.2", "h2": "127.0.0.3", "h3": "127.0.0.4"}
        spare = list(addresses)
        for index, node in enumerate(spare[:2]):
            running[node] = RunningGateway(site(root, etcd, node, "host", addresses[node],
                                                UID_BASE + 30 * index, args.lease_ttl))
        edge = running["e1"] = RunningGateway(
            site(root, etcd, "e1", "edge", "", UID_BASE + 60, args.lease_ttl))
        wait_until(lambda: edge.get("alice", "/data.json").status_code == 200, timeout=60)
        print(f"lease TTL {args.lease_ttl} s; retry budget 10 s; one client, sequential GETs")
        for round_ in range(1, args.rounds + 1):
            victim = next(n for n in running if n != "e1"
                          and running[n].status()["cluster"]["hosting"] == ["alice"])
            results: list[tuple[float, float, int]] = []  # (start, duration, status)
            stop = threading.Event()

            def load(stop: threading.Event = stop,
                     results: list[tuple[float, float, int]] = results) -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        code = edge.get("alice", "/data.json").status_code
                    except Exception:  # a failed request is what we count
                        code = 0
                    results.append((started, time.monotonic() - started, code))

            client = threading.Thread(target=load)
            client.start()
            time.sleep(1)
            gone = running.pop(victim)
            pids = {t["pid"] for t in gone.status()["tenants"] if t["pid"]}
            worker = gone.worker_pid
            killed = time.monotonic()
            for pid in (gone.pid, worker, *pids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_until(lambda killed=killed, results=results: any(
                s >= killed and c == 200 for s, _, c in results), timeout=60)
            time.sleep(1)
            stop.set()
            client.join()
            gone.process.wait(10)
            after = [(s, d, c) for s, d, c in results if s + d >= killed]
            first_ok = min(s + d for s, d, c in after if c == 200 and s >= killed)
            failed = [c for _, _, c in after if c != 200]
            print(f"round {round_}: {victim} killed; alice answered 200 again after"
                  f" {first_ok - killed:.2f} s; {len(failed)} failed {failed} of"
                  f" {len(after)} requests;"
                  f" slowest {max(d for _, d, _ in after):.2f} s")
            # A new machine takes the dead one's place for the next round.
            node = next(n for n in spare if n not in running)
            spare.remove(node)
            spare.append(node)
            fresh = f"{node}r{round_}"
            running[fresh] = RunningGateway(site(root, etcd, fresh, "host", addresses[node],
                                                 UID_BASE + 60 + 30 * round_,
                                                 args.lease_ttl))
    finally:
        for gateway in running.values():
            with contextlib.suppress(Exception):
                gateway.stop()
        etcd.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
