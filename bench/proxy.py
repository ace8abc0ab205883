#!/usr/bin/env python3
"""What the gateway costs, measured side by side with direct access and with Caddy.

    make bench                 (installs wrk, caddy, nginx-light and aiohttp, then runs this)
    .venv/bin/python bench/proxy.py [--duration 10] [--rounds 3] [--only versions,ceiling,start]
    .venv/bin/python bench/proxy.py --hold     (set up, print each target, wait: to profile one)

One run builds a 100,000-row, 9-column table and starts:
- a real `gateway serve` with one tenant (sandboxed when run as root), Datasette with
  suggest_facets off (see ../shared/notes/perf.md);
- "direct": the tenant's own command line on TCP instead of its socket;
- Caddy, `reverse_proxy unix//…` to the same tenant socket;
- for the ceiling, nginx answering `return 200` on a Unix socket, behind the gateway's real ASGI
  app (bench/servers.py publishes a route to it) and behind Caddy;
- aiohttp's client in a raw ASGI proxy (bench/servers.py), beside the others, so that the choice
  of the hot path's HTTP client (gateway/backend_client.py) stays measured.
Each server, and wrk, runs in a session of its own, as daemons and tenants do (see Processes).

Every target answers one request first (same status and body size as the others), is warmed
up, then measured with `wrk -t2 -c32` in interleaved rounds (each target once per round, in a
rotating order). Figures are medians over rounds. Ratios are taken within each round, where
the two targets ran a few seconds apart, and their median is printed with their range: the
machine is shared, and absolute figures drift more than ratios. CPU µs/req is utime+stime from
/proc/PID/stat over the requests done, for the proxy and for what answers behind it.
Then: a tenant's start (SIGHUP after adding it -> first 200 through the gateway, with the
gateway's own events in between), bare Datasette's start, and the gateway's RSS after the load.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import Processes, free_port, wait_until

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
DOMAIN = "localhost"
TENANT = "alice"
CEILING_TENANT = "ceiling"
ROWS = 100_000
# With suggest_facets on, every page of a 100k-row table spends ~0.55 s suggesting facets, and
# at 32 clients no ratio means anything (perf.md).
TENANT_TOML = "public = true\n[datasette]\nsuggest_facets = false\n"

CASES = {  # name: (path, the tenant in the Host header, targets in the order printed)
    "table": ("/db/big?_size=50", TENANT, ["direct", "gateway", "caddy", "aiohttp"]),
    "json": ("/db/big.json?_size=100", TENANT, ["direct", "gateway", "caddy", "aiohttp"]),
    "versions": ("/-/versions.json", TENANT, ["direct", "gateway", "caddy", "aiohttp"]),
    "ceiling": ("/", CEILING_TENANT, ["gateway", "caddy", "aiohttp"]),
}
# The edge issue's targets: the gateway against direct on each Datasette URL, against Caddy at
# the ceiling; a tenant's start; the gateway's memory after the load.
TARGET_RPS_VS_DIRECT = 0.9
TARGET_P99_VS_DIRECT = 1.25
TARGET_RPS_VS_CADDY_CEILING = 0.5
TARGET_START_S = 0.6
TARGET_RSS_MB = 60


# --- processes and /proc -----------------------------------------------------------------------


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


@dataclass
class Memory:
    """A process's resident memory: all of it (RSS), and with shared pages split among the
    processes sharing them (PSS, which adds up across processes)."""

    rss_mb: float
    pss_mb: float

    @classmethod
    def of(cls, pid: int) -> Memory:
        fields = dict(line.split(":", 1) for line in
                      Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
        return cls(int(fields["Rss"].split()[0]) / 1024, int(fields["Pss"].split()[0]) / 1024)


def json_lines(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            yield json.loads(line)


def event_time(event: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()


# --- the site ----------------------------------------------------------------------------------


def make_database(path: Path) -> None:
    """100,000 rows, 9 columns, ~8.6 MB, in WAL mode like every tenant database."""
    rng = random.Random(4)
    cities = ["Lisbon", "Oslo", "Lagos", "Quito", "Hanoi", "Perth", "Tunis", "Lima", "Riga"]
    kinds = ["grant", "loan", "contract", "award", "subsidy"]
    words = ["budget", "council", "transport", "school", "water", "health", "roads", "audit"]
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE big (id INTEGER PRIMARY KEY, name TEXT, city TEXT, kind TEXT, amount REAL,"
        " quantity INTEGER, signed TEXT, active INTEGER, note TEXT)"
    )
    db.executemany(
        "INSERT INTO big VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            (i, f"Recipient {rng.randrange(10**6):06d}", rng.choice(cities), rng.choice(kinds),
             round(rng.uniform(100, 1e6), 2), rng.randrange(1, 500),
             f"20{rng.randrange(10, 25)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
             rng.randrange(2), " ".join(rng.choices(words, k=3)))
            for i in range(1, ROWS + 1)
        ),
    )
    db.commit()
    db.close()


def write_tenant(tenants_dir: Path, name: str, database: Path | None) -> None:
    (tenants_dir / name / "data").mkdir(parents=True)
    (tenants_dir / name / "tenant.toml").write_text(TENANT_TOML)
    if database is not None:
        shutil.copy(database, tenants_dir / name / "data" / "db.db")


def write_site(site: Path, tenant: str, database: Path | None, run_dir: Path) -> Path:
    """gateway.toml and tenants/TENANT in `site`; returns the config's path."""
    write_tenant(site / "tenants", tenant, database)
    config = site / "gateway.toml"
    config.write_text(f'domain = "{DOMAIN}"\n[listen]\nhost = "127.0.0.1"\nhttp_port = 0\n'
                      f'[paths]\nrun_dir = "{run_dir}"\n')
    return config


# --- one measurement ---------------------------------------------------------------------------


@dataclass
class Target:
    port: int
    host: str
    pid: int | None  # the proxy's process (None: direct, nothing in between)
    upstream_pid: int  # what answers behind it: Datasette or nginx


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float | None
    upstream_cpu_us: float


_MS_PER_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk(target: Target, path: str, duration: float) -> str:
    return subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{duration:g}s", "--timeout", "10s", "--latency",
         "-H", f"Host: {target.host}", f"http://127.0.0.1:{target.port}{path}"],
        capture_output=True, text=True, check=True, start_new_session=True,  # see Processes
    ).stdout


def measure_once(target: Target, path: str, duration: float) -> Run:
    before = cpu_ticks(target.pid) if target.pid else 0
    upstream_before = cpu_ticks(target.upstream_pid)
    output = wrk(target, path, duration)
    after = cpu_ticks(target.pid) if target.pid else 0
    upstream_after = cpu_ticks(target.upstream_pid)

    def find(pattern: str) -> str:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise SystemExit(f"bench: no {pattern!r} in wrk's output:\n{output}")
        return match.group(1)

    def milliseconds(pattern: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", find(pattern)).groups()  # type: ignore[union-attr]
        return float(number) * _MS_PER_UNIT[unit]

    requests = int(find(r"(\d+) requests in"))
    if not requests:
        raise SystemExit(f"bench: no request completed:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses:|connect|read|write"
                                            r"|timeout) (\d+)", output))
    return Run(
        rps=float(find(r"Requests/sec:\s+([\d.]+)")),
        p50_ms=milliseconds(r"^\s+50%\s+(\S+)"),  # the distribution, not a stdev of 87.50%
        p99_ms=milliseconds(r"^\s+99%\s+(\S+)"),
        errors=errors,
        cpu_us=(after - before) / TICKS_PER_S * 1e6 / requests if target.pid else None,
        upstream_cpu_us=(upstream_after - upstream_before) / TICKS_PER_S * 1e6 / requests,
    )


def fetch(target: Target, path: str) -> tuple[int, int]:
    connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=60)
    try:
        connection.request("GET", path, headers={"Host": target.host})
        response = connection.getresponse()
        return response.status, len(response.read())
    finally:
        connection.close()


def unix_get_status(path: Path) -> int | None:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            sock.sendall(b"GET /-/versions.json HTTP/1.0\r\nHost: x\r\n\r\n")
            head = sock.recv(64)
    except OSError:
        return None
    match = re.match(rb"HTTP/1\.\d (\d{3})", head)
    return int(match.group(1)) if match else None


# --- the report --------------------------------------------------------------------------------


@dataclass
class Results:
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)

    def add(self, case: str, target: str, run: Run) -> None:
        self.runs.setdefault((case, target), []).append(run)

    def median(self, case: str, target: str, attribute: str) -> float | None:
        values = [getattr(run, attribute) for run in self.runs[(case, target)]]
        return None if None in values else statistics.median(values)

    def ratios(self, case: str, target: str, base: str, attribute: str) -> list[float]:
        """target / base within each round."""
        return [
            getattr(t, attribute) / getattr(b, attribute)
            for t, b in zip(self.runs[(case, target)], self.runs[(case, base)], strict=True)
        ]


def ratio_text(values: list[float]) -> str:
    median = statistics.median(values)
    return f"{median:.2f}x ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else (
        f"{median:.2f}x")


def print_case(results: Results, case: str) -> None:
    path, _, targets = CASES[case]
    print(f"\n{case}: {path}   (ratios: median of the rounds' ratios, and their range)")
    print(f"  {'':<9}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'CPU µs/req':>12}{'upstream':>10}"
          f"   {'req/s / direct':<20}{'p99 / direct':<20}{'req/s / Caddy':<20}")
    for target in targets:
        if (case, target) not in results.runs:
            continue

        def ratio(base: str, attribute: str, target: str = target) -> str:
            if target == base or (case, base) not in results.runs:
                return ""
            return ratio_text(results.ratios(case, target, base, attribute))

        cpu = results.median(case, target, "cpu_us")
        errors = sum(run.errors for run in results.runs[(case, target)])
        print(f"  {target:<9}{results.median(case, target, 'rps'):>8.0f}"
              f"{results.median(case, target, 'p50_ms'):>9.1f}"
              f"{results.median(case, target, 'p99_ms'):>9.1f}"
              f"{'-' if cpu is None else f'{cpu:.0f}':>12}"
              f"{results.median(case, target, 'upstream_cpu_us'):>10.0f}   "
              f"{ratio('direct', 'rps'):<20}{ratio('direct', 'p99_ms'):<20}"
              f"{ratio('caddy', 'rps'):<20}" + (f" ERRORS: {errors}" if errors else ""))


@dataclass
class Start:
    """Seconds from SIGHUP (a tenant was just added) to each step of its start."""

    planned: float  # the reload was planned
    spawned: float  # the tenant's process was spawned (tenant_started's time minus ready_s)
    healthy: float  # its health check passed
    first_200: float  # the first request through the gateway got a 200
    cpu: float  # the tenant process's CPU seconds by then: steadier than wall time here

    @property
    def spawn_to_200(self) -> float:
        return self.first_200 - self.spawned


def print_starts(starts: list[Start], bare: list[tuple[float, float]]) -> None:
    def median(step: str) -> str:
        return f"{statistics.median(getattr(s, step) for s in starts):.3f}"

    print(f"\ntenant start, median of {len(starts)}, seconds after SIGHUP: reload planned"
          f" {median('planned')}, spawned {median('spawned')}, healthy {median('healthy')},"
          f" first proxied 200 {median('first_200')}")
    print(f"  spawn -> first proxied 200: {median('spawn_to_200')} s"
          f" ({', '.join(f'{s.spawn_to_200:.2f}' for s in starts)}); tenant CPU by then"
          f" {median('cpu')} s")
    print(f"  bare `datasette serve --uds`, spawn -> first 200:"
          f" {statistics.median(wall for wall, _ in bare):.3f} s"
          f" ({', '.join(f'{wall:.2f}' for wall, _ in bare)}); its CPU by then"
          f" {statistics.median(cpu for _, cpu in bare):.3f} s")


def verdicts(
    results: Results, starts: list[Start], memory: tuple[Memory, Memory] | None
) -> list[str]:
    lines = []

    def check(ok: bool, text: str) -> None:
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {text}")

    for case in ("table", "json", "versions"):
        if (case, "gateway") in results.runs:
            rps = statistics.median(results.ratios(case, "gateway", "direct", "rps"))
            p99 = statistics.median(results.ratios(case, "gateway", "direct", "p99_ms"))
            check(rps >= TARGET_RPS_VS_DIRECT,
                  f"{case}: gateway req/s {rps:.2f}x direct (target >= {TARGET_RPS_VS_DIRECT})")
            check(p99 <= TARGET_P99_VS_DIRECT,
                  f"{case}: gateway p99 {p99:.2f}x direct (target <= {TARGET_P99_VS_DIRECT})")
    if ("ceiling", "gateway") in results.runs:
        rps = statistics.median(results.ratios("ceiling", "gateway", "caddy", "rps"))
        check(rps >= TARGET_RPS_VS_CADDY_CEILING, f"ceiling: gateway req/s {rps:.2f}x Caddy"
                                                  f" (target >= {TARGET_RPS_VS_CADDY_CEILING})")
    if starts:
        start = statistics.median(s.spawn_to_200 for s in starts)
        check(start <= TARGET_START_S, f"tenant start, spawn -> first proxied 200: {start:.2f} s"
                                       f" median (target <= {TARGET_START_S} s)")
    if memory is not None:
        # The target predates the master/worker split: the worker is what grows with the load,
        # and worker + master (PSS, shared pages counted once) is the gateway's footprint.
        worker, master = memory
        check(worker.rss_mb <= TARGET_RSS_MB, f"gateway worker's RSS after the load: "
                                              f"{worker.rss_mb:.0f} MB (target <= {TARGET_RSS_MB})")
        together = worker.pss_mb + master.pss_mb
        check(together <= TARGET_RSS_MB, f"gateway worker + master after the load (PSS): "
                                         f"{together:.0f} MB (target <= {TARGET_RSS_MB})")
    return lines


# --- the run -----------------------------------------------------------------------------------


class Bench:
    def __init__(self, root: Path, processes: Processes, args: argparse.Namespace) -> None:
        self.root = root
        self.processes = processes
        self.args = args
        self.database = root / "db.db"
        self.site = root / "site"
        self.events = self.site / "events.log"
        self.targets: dict[str, dict[str, Target]] = {}  # case -> target name -> Target
        self.gateway_pid = 0  # `gateway serve`: the master, which forwards SIGHUP
        self.worker_pid = 0  # the gateway's worker, which serves every request

    # setting up

    def set_up(self) -> None:
        make_database(self.database)
        gateway_port, tenant_socket, tenant_pid = self.start_gateway()
        direct_port, direct_pid = self.start_direct(tenant_pid)
        nginx_socket, nginx_pid = self.start_nginx()
        caddy_port, caddy_pid = self.start_caddy(tenant_socket, nginx_socket)
        aiohttp_tenant = self.start_harness("aiohttp-tenant", "aiohttp", f"unix:{tenant_socket}")
        aiohttp_ceiling = self.start_harness("aiohttp-ceiling", "aiohttp", f"unix:{nginx_socket}")
        config = write_site(self.root / "ceiling-site", CEILING_TENANT, None, self.root / "crun")
        ceiling_gateway = self.start_harness(
            "ceiling-gateway", "gateway", str(config), CEILING_TENANT, f"unix:{nginx_socket}"
        )

        def target(port: int, tenant: str, pid: int | None, upstream_pid: int) -> Target:
            return Target(port, f"{tenant}.{DOMAIN}:{port}", pid, upstream_pid)

        for case in ("table", "json", "versions"):
            self.targets[case] = {
                "direct": target(direct_port, TENANT, None, direct_pid),
                "gateway": target(gateway_port, TENANT, self.worker_pid, tenant_pid),
                "caddy": target(caddy_port, TENANT, caddy_pid, tenant_pid),
                "aiohttp": target(aiohttp_tenant[0], TENANT, aiohttp_tenant[1], tenant_pid),
            }
        self.targets["ceiling"] = {
            "gateway": target(ceiling_gateway[0], CEILING_TENANT, ceiling_gateway[1], nginx_pid),
            "caddy": target(caddy_port, CEILING_TENANT, caddy_pid, nginx_pid),
            "aiohttp": target(aiohttp_ceiling[0], CEILING_TENANT, aiohttp_ceiling[1], nginx_pid),
        }

    def start_gateway(self) -> tuple[int, Path, int]:
        """`gateway serve` with one tenant: (port, the tenant's socket, the tenant's pid)."""
        config = write_site(self.site, TENANT, self.database, self.root / "run")
        process = self.processes.start(
            [str(BIN / "gateway"), "--config", str(config), "serve"],
            log=self.site / "access.log", errors=self.events, name="gateway",
        )
        self.gateway_pid = process.pid
        listening = wait_until(lambda: self.event("gateway_listening"), "the gateway to listen")
        self.worker_pid = listening["worker"]
        started = wait_until(lambda: self.event("tenant_started", tenant=TENANT),
                             "the tenant to start")
        socket_path = self.root / "run" / str(started["generation"]) / "ds.sock"
        return int(listening["http"].rsplit(":", 1)[1]), socket_path, started["pid"]

    def event(self, name: str, **fields: Any) -> dict[str, Any] | None:
        for entry in json_lines(self.events):
            if entry.get("event") == name and all(entry.get(k) == v for k, v in fields.items()):
                return entry
        return None

    def start_direct(self, tenant_pid: int) -> tuple[int, int]:
        """The tenant's own command line and environment (gateway.tenant_process, the same
        Datasette settings), on TCP instead of its socket, over a copy of its database."""
        proc = Path(f"/proc/{tenant_pid}")
        argv = proc.joinpath("cmdline").read_bytes().decode().split("\0")[:-1]
        environment = dict(
            entry.split("=", 1)
            for entry in proc.joinpath("environ").read_bytes().decode().split("\0")
            if "=" in entry
        )
        environment.pop("PYTHONPATH", None)  # the sandbox's view; here the venv has the package
        directory = self.root / "direct"
        directory.mkdir()
        shutil.copy(self.database, directory / "db.db")
        argv = [arg.replace("/data/", f"{directory}/") for arg in argv]
        uds = argv.index("--uds")
        del argv[uds:uds + 2]
        lifeline, self.direct_lifeline = os.pipe()  # its write end closes when this run ends
        argv[argv.index("--lifeline-fd") + 1] = str(lifeline)
        port = free_port()
        process = self.processes.start(
            [sys.executable, *argv[1:], "-h", "127.0.0.1", "-p", str(port)],
            log=directory / "datasette.log", name="direct Datasette", cwd=directory,
            env=environment, pass_fds=(lifeline,),
        )
        os.close(lifeline)
        wait_until(lambda: accepts(port), "direct Datasette")
        return port, process.pid

    def start_nginx(self) -> tuple[Path, int]:
        directory = self.root / "nginx"
        directory.mkdir()
        socket_path = directory / "ok.sock"
        (directory / "nginx.conf").write_text(f"""
worker_processes 1;
master_process off;
error_log {directory}/error.log;
pid {directory}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen unix:{socket_path};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")
        process = self.processes.start(
            ["nginx", "-p", str(directory), "-c", str(directory / "nginx.conf"),
             "-g", "daemon off;"], log=directory / "out.log", name="nginx",
        )
        wait_until(socket_path.exists, "nginx's socket")
        return socket_path, process.pid

    def start_caddy(self, tenant_socket: Path, nginx_socket: Path) -> tuple[int, int]:
        directory = self.root / "caddy"
        directory.mkdir()
        port = free_port()
        sites = "".join(
            f"http://{name}.{DOMAIN}:{port} {{\n\tbind 127.0.0.1\n\treverse_proxy unix/{path}\n}}\n"
            for name, path in ((TENANT, tenant_socket), (CEILING_TENANT, nginx_socket))
        )
        caddyfile = directory / "Caddyfile"
        caddyfile.write_text("{\n\tauto_https off\n\tadmin off\n\tlog default {\n"
                             "\t\toutput discard\n\t}\n}\n" + sites)
        process = self.processes.start(
            ["caddy", "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
            log=directory / "caddy.log", name="caddy",
            env={**os.environ, "XDG_CONFIG_HOME": str(directory), "XDG_DATA_HOME": str(directory)},
        )
        wait_until(lambda: accepts(port), "Caddy")
        return port, process.pid

    def start_harness(self, name: str, *args: str) -> tuple[int, int]:
        """A bench/servers.py server, which prints its port first: (port, pid)."""
        log = self.root / f"{name}.log"
        process = self.processes.start(
            [sys.executable, str(HERE / "servers.py"), *args], log=log, name=name
        )

        def port() -> int | None:
            if process.poll() is not None:
                raise SystemExit(f"bench: bench/servers.py {name} exited:\n{log.read_text()}")
            first, newline, _ = log.read_text().partition("\n")
            return int(first) if newline and first.isdigit() else None

        return wait_until(port, f"bench/servers.py {name}"), process.pid

    # measuring

    def check(self, cases: list[str]) -> None:
        """One request per target: 200 each time, and body sizes within 1 % of each other
        (Datasette's absolute URLs carry the port)."""
        for case in cases:
            path = CASES[case][0]
            answers = {name: fetch(t, path) for name, t in self.targets[case].items()}
            sizes = [size for _, size in answers.values()]
            if {status for status, _ in answers.values()} != {200} or (
                    max(sizes) - min(sizes) > min(sizes) / 100):
                raise SystemExit(f"bench: {case}: (status, bytes) by target: {answers}")
            print(f"  checked {case}: 200, {sizes[0]} bytes through {', '.join(answers)}",
                  flush=True)

    def measure(self, cases: list[str]) -> Results:
        args = self.args
        for case in cases:
            for target in self.targets[case].values():
                wrk(target, CASES[case][0], args.warmup)
        results = Results()
        for round_number in range(args.rounds):
            for case in cases:
                names = CASES[case][2]
                shift = round_number % len(names)
                for name in names[shift:] + names[:shift]:
                    run = measure_once(self.targets[case][name], CASES[case][0], args.duration)
                    self.processes.check_alive()
                    results.add(case, name, run)
            print(f"  round {round_number + 1}/{args.rounds} done, load average"
                  f" {os.getloadavg()[0]:.1f}", flush=True)
        return results

    def hold(self, cases: list[str]) -> None:
        for case in cases:
            for name, t in self.targets[case].items():
                print(f"{case} {name} (pid {t.pid or '-'}, upstream pid {t.upstream_pid}):"
                      f" wrk -t2 -c32 -d10s --latency -H 'Host: {t.host}'"
                      f" http://127.0.0.1:{t.port}{CASES[case][0]}")
        print(f"files in {self.root}; SIGTERM (or Ctrl-C) to stop", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()

    def tenant_starts(self, count: int) -> list[Start]:
        """Add a tenant and SIGHUP; time until its first 200 through the gateway; remove it."""
        gateway = self.targets["versions"]["gateway"]
        starts = []
        for n in range(1, count + 1):
            name = f"start{n}"
            write_tenant(self.site / "tenants", name, self.database)
            probe = Target(gateway.port, f"{name}.{DOMAIN}:{gateway.port}", None, 0)
            began, began_wall = time.perf_counter(), time.time()
            os.kill(self.gateway_pid, signal.SIGHUP)
            wait_until(lambda probe=probe: fetch(probe, "/-/versions.json")[0] == 200,  # type: ignore[misc]
                       f"tenant {name}")
            first_200 = time.perf_counter() - began
            started = wait_until(lambda name=name: self.event("tenant_started", tenant=name),  # type: ignore[misc]
                                 f"tenant_started for {name}")
            planned = next(e for e in json_lines(self.events) if e.get("event") == "reload_planned"
                           and name in e.get("added", []))
            healthy = event_time(started) - began_wall
            starts.append(Start(planned=event_time(planned) - began_wall,
                                spawned=healthy - started["ready_s"], healthy=healthy,
                                first_200=first_200,
                                cpu=cpu_ticks(started["pid"]) / TICKS_PER_S))
            shutil.rmtree(self.site / "tenants" / name)
            os.kill(self.gateway_pid, signal.SIGHUP)
            # A reload waits for the one before, which ends when the removed tenant has stopped
            # and its run folder is gone.
            run_dir = self.root / "run" / str(started["generation"])
            wait_until(lambda run_dir=run_dir: not run_dir.exists(), f"tenant {name} to stop")  # type: ignore[misc]
        return starts

    def bare_datasette_starts(self, count: int) -> list[tuple[float, float]]:
        """`datasette serve db --uds SOCK`: (spawn -> first 200 on /-/versions.json, its CPU)."""
        directory = self.root / "bare"
        directory.mkdir()
        shutil.copy(self.database, directory / "db.db")
        socket_path = directory / "ds.sock"
        starts = []
        for _ in range(count):
            began = time.perf_counter()
            process = subprocess.Popen(
                [str(BIN / "datasette"), "serve", str(directory / "db.db"), "--uds",
                 str(socket_path), "--setting", "suggest_facets", "off"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            try:
                wait_until(lambda: unix_get_status(socket_path) == 200, "bare Datasette")
                starts.append((time.perf_counter() - began, cpu_ticks(process.pid) / TICKS_PER_S))
            finally:
                process.terminate()
                process.wait()
                socket_path.unlink(missing_ok=True)
        return starts


def tool_versions() -> str:
    def first_line(argv: list[str]) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (result.stdout or result.stderr).strip().splitlines()[0]

    return "; ".join([
        f"Python {sys.version.split()[0]}",
        f"caddy {first_line(['caddy', 'version']).split()[0]}",
        first_line(["nginx", "-v"]).removeprefix("nginx version: "),
        first_line(["wrk", "-v"]).split(" [")[0],
    ])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per target")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--starts", type=int, default=5, help="tenant starts to time")
    parser.add_argument("--only", default=",".join([*CASES, "start"]),
                        help="what to measure, of: table,json,versions,ceiling,start")
    parser.add_argument("--hold", action="store_true",
                        help="set up, print each target's wrk command and pids, and wait")
    args = parser.parse_args()
    only = args.only.split(",")
    cases = [case for case in CASES if case in only]
    root = Path(tempfile.mkdtemp(prefix="gw-bench-", dir="/tmp"))
    os.chmod(root, 0o755)  # tenant users must reach their folders
    processes = Processes()
    print(f"bench/proxy.py: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f};"
          f" {tool_versions()}; wrk -t2 -c32 -d{args.duration:g}s, {args.rounds} rounds",
          flush=True)
    try:
        bench = Bench(root, processes, args)
        bench.set_up()
        bench.check(cases)
        if args.hold:
            bench.hold(cases)
            return
        results = bench.measure(cases)
        memory = (Memory.of(bench.worker_pid), Memory.of(bench.gateway_pid)) if cases else None
        starts = bench.tenant_starts(args.starts) if "start" in only else []
        bare = bench.bare_datasette_starts(args.starts) if "start" in only else []
        for case in cases:
            print_case(results, case)
        if starts:
            print_starts(starts, bare)
        if memory is not None:
            worker, master = memory
            print(f"\ngateway memory after the load: worker RSS {worker.rss_mb:.1f} MB, master"
                  f" RSS {master.rss_mb:.1f} MB; together (PSS) {worker.pss_mb + master.pss_mb:.1f}"
                  " MB")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}\n\ntargets:")
        print("\n".join(verdicts(results, starts, memory)))
    finally:
        processes.stop_all()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
