#!/usr/bin/env python3
"""Where a tenant start (a wake) spends its time: handed a spare forked by the zygote, handed
a spare bubblewrap started, cold, and an older commit's cold start, interleaved; then bursts of
wakes at once through the gateway's pool of spares, per kind of spare.

    make bench-wake
    .venv/bin/python bench/wake.py [--rounds 10] [--against main] [--burst 8 --burst-rounds 3]

One at a time: each round starts one tenant four ways through the gateway's own Spawner
(sandbox included when run as root: own uid, namespaces, rlimits): handed a spare the zygote
forked (zygote.py), handed a spare bubblewrap started (spares.py; either spare started and idle
beforehand, as in a running gateway), cold with this checkout's package, and cold with the
package as it is at `--against` (a git ref). Times: spawn (folders, fork and exec; for a spare:
binding the tenant's folders in and the handoff), to-socket (bwrap, Python, imports, Datasette
and uvicorn starting), socket-to-healthy (the health probe's first answer), the CPU the
tenant's process used from then to healthy, and the CPU its first HTML page (a table's) took:
Jinja compiles the templates it uses then, unless the zygote compiled them
(compiled_templates.py). Printed: medians per side and ratios.

Bursts: `--burst` tenants woken at once (Spawner.launch, as a wake does), with the gateway's
pool of `--spares` spares full beforehand, per mode (forked spares, bubblewrap spares, cold),
modes interleaved per round: each wake's time to healthy (p50, p99 over all rounds), and the
memory of the woken tenants once all serve: PSS (smaps_rollup) and RSS per tenant, and PSS of
everything the mode keeps (tenants, idle spares, the zygote).
Spares need root; without root only cold starts are measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from gateway import mounts, sandbox, spares
from gateway.config import TenantConfig, load_config
from gateway.keys import load_master_key
from gateway.process import TenantProcess
from gateway.spawner import Spawner
from gateway.zygote import Zygote

REPO = Path(__file__).resolve().parent.parent


def site(root: Path, uid_base: int, burst: int) -> Path:
    for name in ["alice", *(f"wake{n}" for n in range(burst))]:
        data = root / "tenants" / name / "data"
        data.mkdir(parents=True)
        db = sqlite3.connect(data / "data.db")
        db.execute("create table items (id integer primary key, name text)")
        db.executemany("insert into items values (?, ?)", [(i, f"item {i}") for i in range(200)])
        db.commit()
        db.close()
        (root / "tenants" / name / "tenant.toml").write_text("public = true\n")
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
    """CPU time of one process so far, from its threads' schedstat (nanoseconds; utime and
    stime count 10 ms ticks, too coarse for a first page). 0 once it is gone."""
    total = 0
    with contextlib.suppress(OSError):
        for thread in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                total += int(Path(f"/proc/{pid}/task/{thread}/schedstat").read_text().split()[0])
    return total / 1e9


def first_page(socket_path: str, host: str) -> int:
    """GET a table's HTML page from the tenant's socket (the first page a journalist sees);
    its status."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.connect(socket_path)
        connection.sendall(f"GET /data/items HTTP/1.1\r\nHost: {host}\r\n"
                           "Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def python_of(spare: spares.Spare) -> int:
    """The spare's Python: a forked spare itself, or the process bwrap started (as pid 1 of its
    namespace, so the only one)."""
    pid = spare.process.pid
    if isinstance(spare.process, spares.ForkedProcess):
        return pid
    return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


def memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in kB (0 once it is gone)."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Pss", "Rss"):
                values[key] = int(rest.split()[0])
    except OSError:
        return 0, 0
    return values.get("Pss", 0), values.get("Rss", 0)


def descendants(pid: int) -> list[int]:
    """`pid` and every process under it."""
    found = [pid]
    for process in found:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{process}/task"):
                found += [int(child) for child in
                          Path(f"/proc/{process}/task/{task}/children").read_text().split()]
    return found


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def make_spawner(config_path: Path, uid_base: int) -> tuple[Spawner, sandbox.Isolation]:
    config = load_config(config_path)
    for folder in (config.gateway.paths.state_dir, config.gateway.paths.run_dir):
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o711)
    isolation = sandbox.probe_isolation("auto", uid_base)
    return Spawner(config, isolation, load_master_key(config.gateway.paths.state_dir)), isolation


Row = tuple[float, float, float, float, float]


async def rounds(spawner: Spawner, isolation: sandbox.Isolation, zygote: Zygote | None,
                 other: Path, count: int) -> dict[str, list[Row]]:
    tenant = spawner.config.tenants["alice"]
    ours = sandbox.gateway_package_parent()
    sides = ["--against", "this code, cold"]
    if sandbox.can_use_spares(isolation):
        sides += ["bwrap spare", "forked spare"]
    times: dict[str, list[Row]] = {side: [] for side in sides}
    for n in range(len(sides) * count):
        side = sides[n % len(sides)]
        parent = other if side == "--against" else ours
        sandbox.gateway_package_parent = lambda parent=parent: parent  # type: ignore[misc]
        spare = None
        name = f"spare-{os.getpid()}-{n}"
        if side == "bwrap spare":
            spare = await asyncio.to_thread(spares.start_spare, spawner.run_dir, name)
        elif side == "forked spare" and zygote is not None:
            spare = await asyncio.to_thread(spares.fork_spare, spawner.run_dir, name, zygote)
        if spare is not None:
            if not await asyncio.to_thread(spares.wait_until_loaded, spare):
                raise SystemExit(f"the spare did not start: {spare.process.poll()}")
            await asyncio.sleep(0.2)  # idle, as spares in a running gateway
        cpu_before = cpu_s(python_of(spare)) if spare else 0.0
        started = time.perf_counter()
        if spare is not None:
            handed = await spawner._hand_spare(tenant, spare)
            if handed is None:
                raise SystemExit(f"{side}: the spare died before its handoff")
            process = handed
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
        python = child_pid or process.pid
        cpu = cpu_s(python) - cpu_before if child_pid else cpu_s(process.pid)
        before_page = cpu_s(python)
        status = await asyncio.to_thread(first_page, process.backend.address.path,
                                         f"alice.{spawner.config.domain}")
        if status != 200:
            raise SystemExit(f"{side}: the first page answered {status}")
        await asyncio.sleep(0.05)  # its last writes
        page_cpu = cpu_s(python) - before_page
        times[side].append((spawned - started, listening - spawned, healthy - listening, cpu,
                            page_cpu))
        await process.stop(2)
    sandbox.gateway_package_parent = lambda: ours  # type: ignore[misc]
    return times


class Burst:
    """One mode's wakes in bursts: times to healthy, memory once all serve."""

    def __init__(self) -> None:
        self.wake_s: list[float] = []
        self.tenant_pss_kb: list[int] = []
        self.tenant_rss_kb: list[int] = []
        self.total_pss_kb: list[int] = []


async def bursts(spawner: Spawner, isolation: sandbox.Isolation, zygote: Zygote | None,
                 size: int, count: int, pool_size: int) -> dict[str, Burst]:
    tenants = [spawner.config.tenants[f"wake{n}"] for n in range(size)]
    modes = ["cold"]
    if sandbox.can_use_spares(isolation):
        modes = ["forked spares", "bwrap spares", "cold"]
    results = {mode: Burst() for mode in modes}
    for n in range(len(modes) * count):
        mode = modes[n % len(modes)]
        pool = None
        if mode != "cold":
            pool = spares.SparePool(spawner.run_dir, pool_size,
                                    zygote if mode == "forked spares" else None)
            pool.fill()
            while len(pool._spares) < pool_size or pool._starting:  # full and loaded
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
        spawner._spares = pool

        async def wake(tenant: TenantConfig) -> tuple[float, TenantProcess]:
            started = time.perf_counter()
            process = await spawner.launch(tenant)
            return time.perf_counter() - started, process

        woken = await asyncio.gather(*(wake(tenant) for tenant in tenants))
        result = results[mode]
        result.wake_s += [seconds for seconds, _ in woken]
        await asyncio.sleep(0.5)  # the pool refilled (a fork) or refilling (bwrap)
        tenant_pids = [await process.child_pid or process.pid for _, process in woken]
        for pid in tenant_pids:
            pss, rss = memory_kb(pid)
            result.tenant_pss_kb.append(pss)
            result.tenant_rss_kb.append(rss)
        everything = {p for _, process in woken for p in descendants(process.pid)}
        if pool is not None:
            everything |= {p for spare in pool._spares for p in descendants(spare.process.pid)}
            if mode == "forked spares" and zygote is not None and zygote.pid is not None:
                everything |= set(descendants(zygote.pid)) - set(tenant_pids)
        result.total_pss_kb.append(sum(memory_kb(pid)[0] for pid in everything))
        spawner._spares = None
        for _, process in woken:
            await process.stop(2)
        if pool is not None:
            await pool.close()
        if zygote is not None and mode == "forked spares":
            await asyncio.to_thread(zygote.ensure_running)  # pool.close stopped it
    return results


async def run(config_path: Path, other: Path, args: argparse.Namespace
              ) -> tuple[dict[str, list[Row]], dict[str, Burst]]:
    spawner, isolation = make_spawner(config_path, args.uid_base)
    print(f"isolation: {isolation.level}")
    zygote = None
    if sandbox.can_use_spares(isolation):
        spares.probe(spawner.run_dir)
        zygote = Zygote(spawner.run_dir)
        await asyncio.to_thread(zygote.ensure_running)
    try:
        times = await rounds(spawner, isolation, zygote, other, args.rounds)
        burst = await bursts(spawner, isolation, zygote, args.burst, args.burst_rounds,
                             args.spares) if args.burst_rounds else {}
    finally:
        if zygote is not None:
            zygote.stop()
    return times, burst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--against", default="main", help="a git ref (default: main)")
    parser.add_argument("--burst", type=int, default=8, help="wakes at once (default: 8)")
    parser.add_argument("--burst-rounds", type=int, default=3,
                        help="bursts per mode (default: 3; 0: none)")
    parser.add_argument("--spares", type=int, default=2, help="the pool's size (default: 2)")
    parser.add_argument("--uid-base", type=int, default=int(os.environ.get(
        "GATEWAY_TEST_UID_BASE", "20000")))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gw-wake-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        other = package_at(args.against, root)
        times, burst = asyncio.run(run(site(root, args.uid_base, args.burst), other, args))
    finally:
        mounts.release(root / "run" / spares.SPARES_DIR)
        shutil.rmtree(root, ignore_errors=True)
    totals = {}
    print("One wake at a time:")
    for side, rows in times.items():
        spawn, to_socket, to_healthy, cpu, page = (statistics.median(c)
                                                   for c in zip(*rows, strict=True))
        totals[side] = statistics.median(sum(row[:3]) for row in rows)
        label = args.against if side == "--against" else "HEAD + changes"
        print(f"{side:>16} ({label}): spawn {spawn:.3f} s, to socket {to_socket:.3f} s, socket"
              f" to healthy {to_healthy:.3f} s, total {totals[side]:.3f} s; tenant CPU"
              f" {cpu:.3f} s, then its first HTML page {page * 1000:.0f} ms of CPU"
              f" (medians of {len(rows)})")
    for side in totals:
        if side != "--against":
            print(f"{side} / {args.against} cold: x{totals[side] / totals['--against']:.2f}")
    if burst:
        print(f"{args.burst} wakes at once, pool of {args.spares}, {args.burst_rounds} rounds:")
    for mode, result in burst.items():
        print(f"{mode:>16}: wake p50 {percentile(result.wake_s, 0.5):.3f} s, p99"
              f" {percentile(result.wake_s, 0.99):.3f} s; per tenant PSS"
              f" {statistics.median(result.tenant_pss_kb) / 1024:.1f} MiB, RSS"
              f" {statistics.median(result.tenant_rss_kb) / 1024:.1f} MiB; everything"
              f" {statistics.median(result.total_pss_kb) / 1024:.0f} MiB PSS (medians)")
    if "cold" in burst and len(burst) > 1:
        cold = burst["cold"].wake_s
        for mode, result in burst.items():
            if mode != "cold":
                p50 = percentile(result.wake_s, 0.5) / percentile(cold, 0.5)
                p99 = percentile(result.wake_s, 0.99) / percentile(cold, 0.99)
                print(f"{mode} / cold: p50 x{p50:.2f}, p99 x{p99:.2f}")


if __name__ == "__main__":
    main()
