#!/usr/bin/env python3
"""Many tenants on one machine: sleeping tenants (idle_stop_s) beside the same tenants always on.

    make bench-density
    .venv/bin/python bench/density.py [--tenants 300] [--idle 5] [--passes 2] [--max-awake N]

One run builds N public tenants (each a copy of one small database) and, in turn, serves them
from a real `gateway serve` (sandboxed when run as root):
- "sleeping": every tenant has idle_stop_s = --idle; they start asleep; wakes are handed
  spares (sandbox.spare_processes = --spares; root only, see spares.py);
- "sleeping-bwrap": the same with spares that each import Datasette in a bubblewrap of their own
  (sandbox.fork_spares = false), not forked from the zygote;
- "sleeping-cold": the same without spares (spare_processes = 0): every wake a cold start;
- "sleeping-capped": "sleeping" with supervisor.max_awake_tenants = --max-awake (default: two
  windows of the load): a wake beyond it puts the least recently used idle tenant to sleep;
- "always-on": the same tenants with idle_stop_s = 0 (the gateway starts all of them first).
The same load runs against each: windows of 10 % of the tenants, one after the other, --passes
times round; in a window every tenant gets one first request, then --requests more, 8 clients
at once. While the load runs the total resident memory of the gateway and every process it
started (bwrap and the tenants' Datasette) is sampled each second.

Printed per mode: RSS over time (min, max, at the end of each pass) and PSS (max, at the end:
what the machine really gives them, shared pages counted once), the first-request
latency of a sleeping tenant (p50, p99: a wake), and the latency of requests to awake tenants
(p50, p99). Targets (issue 16): wake p50 <= 0.3 s and p99 <= 0.6 s; N = 300 in under 2 GiB;
the awake p99 no worse than always on. The machine's load moves absolute figures: compare the
two modes of one run; the machine's CPU a visit (whole machine, load generator included)
is the work a visit costs, the figure to compare between commits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from common import free_port

from gateway import control
from gateway.config import load_config
from gateway.errors import GatewayError

BIN = Path(sys.executable).parent
DOMAIN = "density.test"
CLIENTS = 8


def make_site(root: Path, mode: str, tenants: int, idle_s: float, spares: int, max_awake: int,
              uid_base: int) -> tuple[Path, int]:
    fork = "false" if mode == "sleeping-bwrap" else "true"
    template = root / "template.db"
    if not template.exists():
        db = sqlite3.connect(template)
        db.execute("create table items (id integer primary key, name text)")
        db.executemany("insert into items values (?, ?)", [(i, f"item {i}") for i in range(200)])
        db.commit()
        db.close()
    site = root / mode
    for n in range(tenants):
        data = site / "tenants" / f"t{n:03d}" / "data"
        data.mkdir(parents=True)
        shutil.copy(template, data / "data.db")
        (data.parent / "tenant.toml").write_text(
            f"public = true\nidle_stop_s = {idle_s}\n[datasette]\nsuggest_facets = false\n")
    port = free_port()
    (site / "gateway.toml").write_text(
        f'domain = "{DOMAIN}"\n[listen]\nhost = "127.0.0.1"\nhttp_port = {port}\n'
        f'[paths]\nrun_dir = "{root}/run-{site.name}"\n[log]\naccess_log = false\n'
        f"[sandbox]\nuid_min = {uid_base}\nuid_max = {uid_base + 999}\n"
        f"spare_processes = {spares}\nfork_spares = {fork}\n"
        f"[proxy]\nretry_budget_s = 30.0\n"
        f"[supervisor]\nmax_awake_tenants = {max_awake}\n")
    for folder in (root, site):
        os.chmod(folder, 0o755)
    return site, port


def tree_pids(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def tree_memory(pid: int) -> tuple[int, int]:
    """Resident and proportional (PSS) bytes of `pid` and every process below it. RSS counts a
    page shared by n processes n times (forked spares share the zygote's); PSS counts it once
    in all, so the PSS sum is what the machine really gives them."""
    rss = pss = 0
    for process in tree_pids(pid):
        try:
            with open(f"/proc/{process}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith(b"Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []  # (seconds, RSS)
        self.pss: list[int] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stopping.is_set():
            rss, pss = tree_memory(self.pid)
            self.samples.append((time.monotonic() - start, rss))
            self.pss.append(pss)
            self.stopping.wait(1.0)


def machine_cpu_s() -> float:
    """CPU seconds every process on the machine has used so far (/proc/stat: user, nice,
    system, irq, softirq; not idle or iowait)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = f.readline().split()[1:]
    busy = sum(int(fields[i]) for i in (0, 1, 2, 5, 6))
    return busy / os.sysconf("SC_CLK_TCK")


def status(site: Path) -> dict[str, str]:
    """Each tenant's state, from the control socket (in this process: a `gateway status` would
    cost a Python start of CPU, taken from the load)."""
    answer = control.call(load_config(site / "gateway.toml", with_tenants=False), "GET",
                          "/status")
    return {t["name"]: t["state"] for t in answer["tenants"]}


async def visit(client: httpx.AsyncClient, tenant: str, requests: int,
                awake: list[tuple[int, float]], errors: list[str]) -> float:
    """One first request (its latency is returned), then `requests` more (into `awake`, with
    their place in the visit)."""
    headers = {"host": f"{tenant}.{DOMAIN}"}
    first = 0.0
    for n in range(requests + 1):
        started = time.perf_counter()
        response = await client.get("/data/items.json?_size=5", headers=headers)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            errors.append(f"{tenant}: {response.status_code}")
        if n == 0:
            first = elapsed
        else:
            awake.append((n, elapsed))
    return first


async def load(port: int, site: Path, names: list[str], passes: int, requests: int,
               sleeping_mode: bool) -> dict[str, Any]:
    window = max(1, len(names) // 10)
    wakes: list[float] = []
    firsts: list[float] = []
    awake: list[tuple[int, float]] = []
    errors: list[str] = []
    ends: list[float] = []
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60,
                                 limits=limits) as client:
        for _ in range(passes):
            for start in range(0, len(names), window):
                group = names[start:start + window]
                states = await asyncio.to_thread(status, site) if sleeping_mode else {}
                asleep = [n for n in group if states.get(n) == "sleeping"]
                queue = asyncio.Queue[str]()
                for name in group:
                    queue.put_nowait(name)
                first: dict[str, float] = {}

                async def worker(queue: asyncio.Queue[str] = queue,
                                 first: dict[str, float] = first) -> None:
                    while not queue.empty():
                        name = queue.get_nowait()
                        first[name] = await visit(client, name, requests, awake, errors)

                await asyncio.gather(*(worker() for _ in range(CLIENTS)))
                for name, latency in first.items():
                    (wakes if name in asleep else firsts).append(latency)
            ends.append(time.monotonic())
    return {"wakes": wakes, "firsts": firsts, "awake": awake, "errors": errors, "ends": ends}


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_mode(root: Path, args: argparse.Namespace, mode: str, idle_s: float, spares: int,
             max_awake: int) -> dict[str, Any]:
    site, port = make_site(root, mode, args.tenants, idle_s, spares, max_awake, args.uid_base)
    names = [f"t{n:03d}" for n in range(args.tenants)]
    events = open(root / f"{site.name}-events.log", "wb")  # noqa: SIM115 - closed below
    gateway = subprocess.Popen([str(BIN / "gateway"), "--config", str(site / "gateway.toml"),
                                "serve"], stdout=subprocess.DEVNULL, stderr=events)
    try:
        deadline = time.monotonic() + 60 + args.tenants * 2
        while True:  # every tenant serving (always on) or asleep (sleeping)
            try:
                states = status(site)
            except GatewayError:
                states = {}
            ready = [s for s in states.values() if s in ("running", "sleeping")]
            if len(ready) == args.tenants:
                break
            if time.monotonic() > deadline or gateway.poll() is not None:
                raise SystemExit(f"{site.name}: tenants not ready: {states}")
            time.sleep(1)
        sampler = Sampler(gateway.pid)
        sampler.start()
        started = time.monotonic()
        cpu_before = machine_cpu_s()
        result = asyncio.run(load(port, site, names, args.passes, args.requests, bool(idle_s)))
        result["cpu_s"] = machine_cpu_s() - cpu_before
        result["load_s"] = time.monotonic() - started
        sampler.stopping.set()
        sampler.join()
        result["rss"] = sampler.samples
        result["pss"] = sampler.pss
        result["pass_rss"] = [
            next((rss for t, rss in sampler.samples if t >= end - started), sampler.samples[-1][1])
            for end in result["ends"]]
        result["wake_s"], result["sleeps"] = woke(root / f"{site.name}-events.log")
        return result
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(120)
        except subprocess.TimeoutExpired:
            gateway.kill()
        events.close()


def woke(events_log: Path) -> tuple[list[float], dict[str, int]]:
    """The gateway's own measure of each wake (tenant_woke: asked for to healthy), and how many
    times tenants fell asleep, by reason (idle, cap; cap-exceeded: awake_cap_exceeded)."""
    times = []
    sleeps: dict[str, int] = {}
    for line in events_log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "tenant_woke":
            times.append(float(event["wake_s"]))
        elif event.get("event") == "tenant_sleeping":
            sleeps[event["reason"]] = sleeps.get(event["reason"], 0) + 1
        elif event.get("event") == "awake_cap_exceeded":
            sleeps["cap-exceeded"] = sleeps.get("cap-exceeded", 0) + 1
    return times, sleeps


def peak_rss(result: dict[str, Any]) -> int:
    return int(max(rss for _, rss in result["rss"]))


def awake_p99(result: dict[str, Any]) -> float:
    return quantile([latency for _, latency in result["awake"]], 0.99)


def report(name: str, result: dict[str, Any]) -> None:
    mib = [rss / 1048576 for _, rss in result["rss"]]
    print(f"\n{name}")
    passes = ", ".join(f"{r / 1048576:.0f}" for r in result["pass_rss"])
    print(f"  RSS (gateway + tenants), MiB: min {min(mib):.0f}, max {max(mib):.0f};"
          f" at the end of each pass: {passes}")
    print(f"  PSS (each shared page counted once), MiB: max {max(result['pss']) / 1048576:.0f},"
          f" at the end {result['pss'][-1] / 1048576:.0f}")
    series = " ".join(f"{t:.0f}s:{r / 1048576:.0f}" for t, r in result["rss"][::5])
    print(f"  RSS every 5 s: {series}")
    wakes = result["wakes"]
    if wakes:
        print(f"  first request to a sleeping tenant (wake): n={len(wakes)}"
              f" p50 {quantile(wakes, 0.5):.3f} s, p99 {quantile(wakes, 0.99):.3f} s")
        if result["wake_s"]:
            print(f"  gateway's own wake time (start to healthy): p50"
                  f" {statistics.median(result['wake_s']):.3f} s; wakes {len(result['wake_s'])},"
                  f" sleeps {result['sleeps']}")
    if result["firsts"]:
        print(f"  first request of a visit, tenant awake: n={len(result['firsts'])}"
              f" p50 {quantile(result['firsts'], 0.5):.3f} s,"
              f" p99 {quantile(result['firsts'], 0.99):.3f} s")
    visits = len(result["wakes"]) + len(result["firsts"])
    print(f"  the machine's CPU while the load ran: {result['cpu_s']:.1f} s in"
          f" {result['load_s']:.1f} s, {result['cpu_s'] / visits * 1000:.0f} ms a visit"
          f" (this load generator's share included)")
    awake = [latency for _, latency in result["awake"]]
    print(f"  requests to awake tenants: n={len(awake)} p50 {quantile(awake, 0.5) * 1000:.1f} ms,"
          f" p99 {quantile(awake, 0.99) * 1000:.1f} ms, max {max(awake) * 1000:.0f} ms")
    later = [latency for n, latency in result["awake"] if n > 1]
    print(f"  the same without each visit's second request: p99"
          f" {quantile(later, 0.99) * 1000:.1f} ms")
    if result["errors"]:
        print(f"  errors: {len(result['errors'])}, e.g. {result['errors'][:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=300)
    parser.add_argument("--idle", type=float, default=5.0, help="idle_stop_s of the sleepers")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--requests", type=int, default=10,
                        help="requests per tenant per visit after the first")
    parser.add_argument("--uid-base", type=int, default=int(os.environ.get(
        "GATEWAY_TEST_UID_BASE", "20000")))
    parser.add_argument("--spares", type=int, default=2,
                        help="sandbox.spare_processes of the sleeping mode")
    parser.add_argument("--max-awake", type=int, default=0,
                        help="supervisor.max_awake_tenants of sleeping-capped (default: two"
                             " windows, 20 %% of --tenants)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the sites and the gateways' event logs (printed at the end)")
    parser.add_argument("--modes", default="sleeping,sleeping-cold,always-on",
                        help="which of sleeping, sleeping-bwrap, sleeping-cold, sleeping-capped,"
                             " always-on to run, in order")
    args = parser.parse_args()
    max_awake = args.max_awake or 2 * max(1, args.tenants // 10)
    root = Path(tempfile.mkdtemp(prefix="gw-density-", dir="/tmp"))
    try:
        results = {}
        modes = {"sleeping": (args.idle, args.spares, 0), "sleeping-cold": (args.idle, 0, 0),
                 "sleeping-bwrap": (args.idle, args.spares, 0),
                 "sleeping-capped": (args.idle, args.spares, max_awake),
                 "always-on": (0.0, 0, 0)}
        for name in args.modes.split(","):
            results[name] = run_mode(root, args, name, *modes[name])
        print(f"{args.tenants} tenants, windows of {max(1, args.tenants // 10)},"
              f" {args.passes} passes, {args.requests + 1} requests a visit, {CLIENTS} clients,"
              f" idle_stop_s {args.idle:g}, {args.spares} spares (sleeping),"
              f" max_awake_tenants {max_awake} (sleeping-capped)")
        for name, result in results.items():
            report(name, result)
        if "sleeping" in results and "sleeping-cold" in results:
            spare, cold = results["sleeping"]["wakes"], results["sleeping-cold"]["wakes"]
            print(f"\nspares / cold: wake p50 x{quantile(spare, 0.5) / quantile(cold, 0.5):.2f},"
                  f" p99 x{quantile(spare, 0.99) / quantile(cold, 0.99):.2f}")
        if "sleeping" in results and "sleeping-capped" in results:
            free, capped = results["sleeping"], results["sleeping-capped"]
            print(f"\ncapped / uncapped: peak RSS x{peak_rss(capped) / peak_rss(free):.2f},"
                  f" wake p50 x{quantile(capped['wakes'], 0.5) / quantile(free['wakes'], 0.5):.2f},"
                  f" awake p99 x{awake_p99(capped) / awake_p99(free):.2f}")
        if "sleeping" in results and "always-on" in results:
            sleeping, always = results["sleeping"], results["always-on"]
            print(f"\nsleeping / always on:"
                  f" awake p99 x{awake_p99(sleeping) / awake_p99(always):.2f},"
                  f" peak RSS x{peak_rss(sleeping) / peak_rss(always):.2f},"
                  f" peak PSS x{max(sleeping['pss']) / max(always['pss']):.2f}")
    finally:
        if args.keep:
            print(f"kept {root} (its *-events.log: the gateways' events)")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
