#!/usr/bin/env python3
"""Where a tenant start (a wake) spends its time, this code beside an older commit's, interleaved.

    make bench-wake
    .venv/bin/python bench/wake.py [--rounds 10] [--against main]

Each round starts one tenant with this checkout's gateway package and one with the package as
it is at `--against` (a git ref), through the gateway's own Spawner (sandbox included when run
as root: own uid, namespaces, rlimits), and times: spawn (the tenant's folders, fork and exec),
to-socket (bwrap, Python, imports, Datasette and uvicorn starting), socket-to-healthy (the
health probe's first answer). Printed: the medians of each side and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from gateway import sandbox
from gateway.config import load_config
from gateway.keys import load_master_key
from gateway.spawner import Spawner

REPO = Path(__file__).resolve().parent.parent


def site(root: Path, uid_base: int) -> Path:
    data = root / "tenants" / "alice" / "data"
    data.mkdir(parents=True)
    db = sqlite3.connect(data / "data.db")
    db.execute("create table items (id integer primary key, name text)")
    db.executemany("insert into items values (?, ?)", [(i, f"item {i}") for i in range(200)])
    db.commit()
    db.close()
    (root / "tenants" / "alice" / "tenant.toml").write_text("public = true\n")
    config = root / "gateway.toml"
    config.write_text(f'domain = "wake.test"\n[paths]\nrun_dir = "{root}/run"\n'
                      f"[sandbox]\nuid_min = {uid_base}\nuid_max = {uid_base + 999}\n")
    return config


def package_at(ref: str, root: Path) -> Path:
    """The gateway package as it is at `ref`, in a folder tenants can read."""
    parent = root / "at-ref"
    parent.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "gateway"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(parent)], input=archive, check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(parent)], check=True)
    return parent


async def rounds(config_path: Path, other: Path, count: int, uid_base: int
                 ) -> dict[str, list[tuple[float, float, float]]]:
    config = load_config(config_path)
    for folder in (config.gateway.paths.state_dir, config.gateway.paths.run_dir):
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o711)
    isolation = sandbox.probe_isolation("auto", uid_base)
    print(f"isolation: {isolation.level}")
    spawner = Spawner(config, isolation, load_master_key(config.gateway.paths.state_dir))
    tenant = config.tenants["alice"]
    ours = sandbox.gateway_package_parent()
    times: dict[str, list[tuple[float, float, float]]] = {"this code": [], "--against": []}
    for n in range(2 * count):
        side = "--against" if n % 2 == 0 else "this code"
        parent = other if side == "--against" else ours
        sandbox.gateway_package_parent = lambda parent=parent: parent  # type: ignore[misc]
        started = time.perf_counter()
        process = await spawner._spawn(tenant, spawner.next_generation())
        spawned = time.perf_counter()
        while not os.path.exists(process.backend.address.path):
            if process.exited.done():
                raise SystemExit(f"{side}: the tenant exited: {process.describe_exit()}")
            await asyncio.sleep(0.002)
        listening = time.perf_counter()
        await spawner._wait_healthy(tenant, process)
        healthy = time.perf_counter()
        times[side].append((spawned - started, listening - spawned, healthy - listening))
        await process.stop(2)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--against", default="main", help="a git ref (default: main)")
    parser.add_argument("--uid-base", type=int, default=int(os.environ.get(
        "GATEWAY_TEST_UID_BASE", "20000")))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gw-wake-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        other = package_at(args.against, root)
        times = asyncio.run(rounds(site(root, args.uid_base), other, args.rounds, args.uid_base))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    totals = {}
    for side, rows in times.items():
        spawn, to_socket, to_healthy = (statistics.median(c) for c in zip(*rows, strict=True))
        totals[side] = statistics.median(sum(row) for row in rows)
        print(f"{side:>10} ({args.against if side == '--against' else 'HEAD + changes'}):"
              f" spawn {spawn:.3f} s, to socket {to_socket:.3f} s, socket to healthy"
              f" {to_healthy:.3f} s, total {totals[side]:.3f} s (medians of {len(rows)})")
    print(f"this code / {args.against}: x{totals['this code'] / totals['--against']:.2f}")


if __name__ == "__main__":
    main()
