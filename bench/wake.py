#!/usr/bin/env python3
"""Where a tenant start (a wake) spends its time: with a spare, cold, and an older commit's
cold start, interleaved.

    make bench-wake
    .venv/bin/python bench/wake.py [--rounds 10] [--against main]

Each round starts one tenant three ways through the gateway's own Spawner (sandbox included
when run as root: own uid, namespaces, rlimits): handed a spare (spares.py; the spare started
and idle beforehand, as in a running gateway), cold with this checkout's package, and cold with
the package as it is at `--against` (a git ref). Times: spawn (folders, fork and exec; for a
spare: binding the tenant's folders in and the handoff), to-socket (bwrap, Python, imports,
Datasette and uvicorn starting), socket-to-healthy (the health probe's first answer), and the
CPU the tenant's process used from then to healthy. Printed: medians per side and ratios.
Spares need root; without root the spare side is left out.
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

from gateway import mounts, sandbox, spares
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


def cpu_s(pid: int) -> float:
    """utime + stime of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_of(pid: int) -> int:
    """The process bwrap started (as pid 1 of its namespace, so the only one)."""
    return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


async def rounds(config_path: Path, other: Path, count: int, uid_base: int
                 ) -> dict[str, list[tuple[float, float, float, float]]]:
    config = load_config(config_path)
    for folder in (config.gateway.paths.state_dir, config.gateway.paths.run_dir):
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o711)
    isolation = sandbox.probe_isolation("auto", uid_base)
    print(f"isolation: {isolation.level}")
    spawner = Spawner(config, isolation, load_master_key(config.gateway.paths.state_dir))
    tenant = config.tenants["alice"]
    ours = sandbox.gateway_package_parent()
    sides = ["--against", "this code, cold"]
    if sandbox.can_use_spares(isolation):
        sides.append("this code, spare")
    times: dict[str, list[tuple[float, float, float, float]]] = {side: [] for side in sides}
    for n in range(len(sides) * count):
        side = sides[n % len(sides)]
        parent = other if side == "--against" else ours
        sandbox.gateway_package_parent = lambda parent=parent: parent  # type: ignore[misc]
        spare = None
        if side == "this code, spare":
            spare = await asyncio.to_thread(spares.start_spare, spawner.run_dir, f"spare-{n}")
            if not await asyncio.to_thread(spares.wait_until_loaded, spare):
                raise SystemExit(f"the spare did not start: {spare.popen.poll()}")
            await asyncio.sleep(0.2)  # idle, as spares in a running gateway
        cpu_before = cpu_s(child_of(spare.popen.pid)) if spare else 0.0
        started = time.perf_counter()
        if spare is not None:
            process = await spawner._hand_spare(tenant, spare)
        else:
            process = await spawner._spawn(tenant, spawner.next_generation())
        spawned = time.perf_counter()
        while not os.path.exists(process.backend.address.path):
            if process.exited.done():
                raise SystemExit(f"{side}: the tenant exited: {process.describe_exit()}")
            await asyncio.sleep(0.002)
        listening = time.perf_counter()
        await spawner._wait_healthy(tenant, process)
        healthy = time.perf_counter()
        child_pid = await process.child_pid
        cpu = cpu_s(child_pid) - cpu_before if child_pid else cpu_s(process.pid)
        times[side].append((spawned - started, listening - spawned, healthy - listening, cpu))
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
        mounts.release(root / "run" / spares.SPARES_DIR)
        shutil.rmtree(root, ignore_errors=True)
    totals = {}
    for side, rows in times.items():
        spawn, to_socket, to_healthy, cpu = (statistics.median(c) for c in zip(*rows, strict=True))
        totals[side] = statistics.median(sum(row[:3]) for row in rows)
        label = args.against if side == "--against" else "HEAD + changes"
        print(f"{side:>16} ({label}): spawn {spawn:.3f} s, to socket {to_socket:.3f} s, socket"
              f" to healthy {to_healthy:.3f} s, total {totals[side]:.3f} s; tenant CPU"
              f" {cpu:.3f} s (medians of {len(rows)})")
    for side in totals:
        if side != "--against":
            print(f"{side} / {args.against} cold: x{totals[side] / totals['--against']:.2f}")

if __name__ == "__main__":
    main()
