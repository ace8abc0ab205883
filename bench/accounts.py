#!/usr/bin/env python3
"""What sharing accounts through etcd costs (cluster/accounts.py), beside the single machine.

    .venv/bin/python bench/accounts.py [--operations 200]

Starts a 3-member etcd cluster on loopback. The same operations run on a plain accounts
database (one machine) and on a replica of the cluster's (two replicas, the writes alternating
between them, as two edges would): a session lookup (what an edge does once per
auth.session_cache_s per session: catch up with the log, then read SQLite) and a sign-in (a log
entry: one etcd transaction, then applied). Prints the median and 95th percentile of each, and
the ratio cluster / one machine.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.auth.store import AccountStore, digest
from gateway.cluster.accounts import ReplicatedStore
from tests.etcd_cluster import EtcdCluster

IDLE_S, MAX_S = 7 * 86400.0, 30 * 86400.0


def timed(operation: Callable[[int], object], count: int) -> list[float]:
    durations = []
    for number in range(count):
        started = time.perf_counter()
        operation(number)
        durations.append(time.perf_counter() - started)
    return durations


def measure(stores: list[AccountStore], count: int) -> dict[str, list[float]]:
    first = stores[0]
    user_id = first.add_user(f"{secrets.token_hex(4)}@example.com", "hash", time.time())
    sessions = [digest(secrets.token_urlsafe(32)) for _ in range(count)]

    def sign_in(number: int) -> None:
        stores[number % len(stores)].sign_in(sessions[number], user_id, time.time(),
                                             replaces=[], new_password_hash=None)

    def look_up(number: int) -> None:
        found = stores[(number + 1) % len(stores)].session(sessions[number], time.time(),
                                                           IDLE_S, MAX_S)
        assert found is not None

    return {"sign-in (a write)": timed(sign_in, count),
            "session lookup (a read)": timed(look_up, count)}


def ms(durations: list[float], quantile: float) -> float:
    return sorted(durations)[int(quantile * (len(durations) - 1))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--operations", type=int, default=200)
    count = parser.parse_args().operations
    etcd = EtcdCluster()
    try:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            for name in ("one", "a", "b"):
                (root / name).mkdir()
            one = measure([AccountStore(root / "one" / "accounts.db")], count)
            replicas = [ReplicatedStore(root / name / "accounts.db", etcd.endpoints)
                        for name in ("a", "b")]
            try:
                cluster = measure(list(replicas), count)
            finally:
                for replica in replicas:
                    replica.close()
    finally:
        etcd.close()
    print(f"{count} operations each; milliseconds (median / p95)")
    print(f"{'operation':<26}{'one machine':>16}{'cluster':>16}{'ratio':>8}")
    for operation, local in one.items():
        shared = cluster[operation]
        print(f"{operation:<26}{ms(local, 0.5):>8.2f} / {ms(local, 0.95):<5.2f}"
              f"{ms(shared, 0.5):>8.2f} / {ms(shared, 0.95):<5.2f}"
              f"{statistics.median(shared) / statistics.median(local):>8.1f}")


if __name__ == "__main__":
    main()
