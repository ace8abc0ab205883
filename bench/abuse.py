#!/usr/bin/env python3
"""What hostile clients cost a tenant's normal visitors, behind the gateway and behind Caddy.

    make bench-abuse
    .venv/bin/python bench/abuse.py [--duration 20] [--only slow-readers,crash-sql] [--scale 1]

One run builds a small public tenant (a 20,000-row table and an FTS4 table) and starts:
- a real `gateway serve` with that tenant (sandboxed when run as root);
- Caddy (its defaults: `reverse_proxy unix//…`) in front of a plain `datasette serve` of a copy
  of the same database, with the same Datasette settings.
Then, for each hostile pattern below and each front in turn, the pattern runs for `--duration`
seconds while one normal client asks for a small table page over and over (one request at a
time, 10 s timeout). Printed per pattern and front: the normal client's requests, failures, p50
and p99; the front's resident memory growth (peak during the pattern minus before it, gateway:
master + worker); the tenant's state (gateway: its supervisor's state and restarts; Caddy: is
its Datasette still alive); and how many hostile connections the front had closed by the end.

Patterns (counts as in the hardening issue; `--scale` multiplies them):
    slow-readers   40 connections asking for a 4 MB answer with a 4 KB receive buffer, never
                   reading (re-opened when the front closes them, as an attacker would)
    stalled-bodies 33 POSTs announcing Content-Length: 1000000 and sending 10 bytes
    slowloris      200 connections sending one header line every 5 s, never ending the head
    idle           1,000 connections that never send a byte
    big-heads      4 clients sending 16 MB header lines, again and again
    crash-sql      fts3_tokenizer('simple', <pointer>) then a MATCH, every 0.5 s (segfaults
                   a Datasette on Debian's SQLite unless refused)
Targets for the gateway: the normal client's p99 under 1 s and no failure under every pattern,
RSS growth under 50 MB, the tenant never failed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import Processes, free_port, wait_until

BIN = Path(sys.executable).parent
DOMAIN = "localhost"
TENANT = "alice"
TENANT_TOML = "public = true\n[datasette]\nsuggest_facets = false\nsql_time_limit_ms = 1000\n"
DATASETTE_SETTINGS = ["--setting", "suggest_facets", "off", "--setting", "sql_time_limit_ms",
                      "1000"]
NORMAL_PATH = "/data/items.json?_size=10"
TARGET_P99_S = 1.0
TARGET_RSS_MB = 50.0
PATTERNS = ["slow-readers", "stalled-bodies", "slowloris", "idle", "big-heads", "crash-sql"]


# --- processes -------------------------------------------------------------------------------


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


# --- the fronts ------------------------------------------------------------------------------


def make_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, amount REAL)")
    db.executemany("INSERT INTO items VALUES (?, ?, ?)",
                   ((i, f"item {i} budget council", i * 1.5) for i in range(1, 20_001)))
    db.execute("CREATE VIRTUAL TABLE notes USING fts4(body)")
    db.executemany("INSERT INTO notes (body) VALUES (?)",
                   ((f"council budget note {i}",) for i in range(100)))
    db.commit()
    db.close()


@dataclass
class Front:
    name: str
    port: int
    pids: Callable[[], list[int]]  # the front's own processes, for memory
    state: Callable[[], str]  # the tenant's state as this front sees it
    restart_tenant: Callable[[], None] = lambda: None

    @property
    def host(self) -> str:
        return f"{TENANT}.{DOMAIN}:{self.port}"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="bench-abuse-", dir="/tmp"))
        os.chmod(self.root, 0o755)
        self.processes = Processes()
        self.database = self.root / "data.db"
        make_database(self.database)

    def close(self) -> None:
        self.processes.stop_all()
        shutil.rmtree(self.root, ignore_errors=True)

    def start_gateway(self) -> Front:
        site = self.root / "site"
        data = site / "tenants" / TENANT / "data"
        data.mkdir(parents=True)
        (site / "tenants" / TENANT / "tenant.toml").write_text(TENANT_TOML)
        shutil.copy(self.database, data / "data.db")
        config = site / "gateway.toml"
        config.write_text(f'domain = "{DOMAIN}"\n[listen]\nhost = "127.0.0.1"\nhttp_port = 0\n'
                          f'[paths]\nrun_dir = "{self.root / "run"}"\n[log]\naccess_log = false\n'
                          '[metrics]\nlisten = ""\n' + self.args.gateway_toml.replace(";", "\n"))
        events = site / "events.log"
        master = self.processes.start([str(BIN / "gateway"), "--config", str(config), "serve"],
                                      log=events)

        def event(name: str) -> dict[str, Any] | None:
            for line in events.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("event") == name:
                        return dict(entry)
            return None

        listening = wait_until(lambda: event("gateway_listening") or master.poll() is not None,
                               "the gateway to listen")
        if master.poll() is not None:
            raise SystemExit(f"bench: the gateway exited:\n{events.read_text()[-2000:]}")
        wait_until(lambda: event("tenant_started"), "the tenant to start")
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from gateway import control
        from gateway.config import load_config

        loaded = load_config(config)

        def status() -> dict[str, Any]:
            answer: dict[str, Any] = control.call(loaded, "GET", "/status", timeout=10)
            return answer

        def state() -> str:
            try:
                tenant = next(t for t in status()["tenants"] if t["name"] == TENANT)
            except Exception as exc:  # the bench reports it rather than dying
                return f"no answer ({type(exc).__name__})"
            return f"{tenant['state']}, {tenant['restarts']} restarts"

        def pids() -> list[int]:
            with contextlib.suppress(Exception):
                return [master.pid, int(status()["worker_pid"])]
            return [master.pid]

        return Front("gateway", int(listening["http"].rsplit(":", 1)[1]), pids, state)

    def start_caddy(self) -> Front:
        directory = self.root / "caddy"
        directory.mkdir()
        shutil.copy(self.database, directory / "data.db")
        socket_path = directory / "ds.sock"
        datasette: list[subprocess.Popen[bytes]] = []

        def start_datasette() -> None:
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()
            datasette[:] = [self.processes.start(
                [str(BIN / "datasette"), "serve", str(directory / "data.db"), "--uds",
                 str(socket_path), *DATASETTE_SETTINGS], log=directory / "datasette.log")]
            wait_until(lambda: socket_path.exists(), "Caddy's Datasette")

        start_datasette()
        port = free_port()
        caddyfile = directory / "Caddyfile"
        caddyfile.write_text(
            "{\n\tauto_https off\n\tadmin off\n\tlog default {\n\t\toutput discard\n\t}\n}\n"
            f"http://{TENANT}.{DOMAIN}:{port} {{\n\tbind 127.0.0.1\n"
            f"\treverse_proxy unix/{socket_path}\n}}\n")
        caddy = self.processes.start(
            ["caddy", "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
            log=directory / "caddy.log",
            env={**os.environ, "XDG_CONFIG_HOME": str(directory),
                 "XDG_DATA_HOME": str(directory)})
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), 1).close() or True,
                   "Caddy")

        def state() -> str:
            process = datasette[0]
            if process.poll() is None:
                return "running"
            return f"Datasette exited ({process.returncode}), nobody restarts it"

        def restart_tenant() -> None:
            if datasette[0].poll() is not None:
                start_datasette()

        return Front("caddy", port, lambda: [caddy.pid], state, restart_tenant)


# --- the normal client -------------------------------------------------------------------------


@dataclass
class Normal:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def normal_client(front: Front, stop: threading.Event) -> Normal:
    result = Normal()
    connection: http.client.HTTPConnection | None = None
    while not stop.is_set():
        started = time.perf_counter()
        try:
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
            connection.request("GET", NORMAL_PATH, headers={"Host": front.host})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                result.failures.append(str(response.status))
            if response.getheader("connection", "").lower() == "close":
                connection.close()
                connection = None
        except (OSError, http.client.HTTPException) as exc:
            result.failures.append(type(exc).__name__)
            if connection is not None:
                connection.close()
            connection = None
        result.latencies.append(time.perf_counter() - started)
        time.sleep(0.02)
    if connection is not None:
        connection.close()
    return result


# --- hostile patterns --------------------------------------------------------------------------


class Hostile:
    """A pattern's connections, kept open (re-opened when the front closes one) until stop."""

    def __init__(self, front: Front, stop: threading.Event) -> None:
        self.front = front
        self.stop = stop
        self.closed_by_front = 0

    def connect(self, rcvbuf: int | None = None) -> socket.socket | None:
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", self.front.port))
        except OSError:
            sock.close()
            return None
        return sock

    def hold(self, count: int, opening: Callable[[], socket.socket | None],
             every_s: float = 1.0, tick: Callable[[socket.socket], None] | None = None) -> None:
        """Keep `count` connections made by `opening`; call `tick` on each every `every_s`."""
        held: list[socket.socket] = []
        while not self.stop.is_set():
            while len(held) < count and not self.stop.is_set():
                sock = opening()
                if sock is None:
                    break
                held.append(sock)
            poller = select.poll()
            for sock in held:
                poller.register(sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
            gone = {fd for fd, _ in poller.poll(0)}
            for sock in [s for s in held if s.fileno() in gone]:
                self.closed_by_front += 1
                held.remove(sock)
                sock.close()
            if tick is not None:
                for sock in list(held):
                    try:
                        tick(sock)
                    except OSError:
                        self.closed_by_front += 1
                        held.remove(sock)
                        sock.close()
            self.stop.wait(every_s)
        for sock in held:
            sock.close()

    def request_head(self, method: str, path: str, extra: str = "") -> bytes:
        return (f"{method} {path} HTTP/1.1\r\nHost: {self.front.host}\r\n{extra}\r\n").encode()

    def slow_readers(self, count: int) -> None:
        path = "/data.json?sql=select+printf(%27%25.*c%27,4000000,%27x%27)"

        def opening() -> socket.socket | None:
            sock = self.connect(rcvbuf=4096)
            if sock is not None:
                sock.sendall(self.request_head("GET", path))
            return sock

        self.hold(count, opening)

    def stalled_bodies(self, count: int) -> None:
        def opening() -> socket.socket | None:
            sock = self.connect()
            if sock is not None:
                sock.sendall(self.request_head(
                    "POST", "/data", "Content-Type: application/x-www-form-urlencoded\r\n"
                    "Content-Length: 1000000\r\n") + b"x=0123456")
            return sock

        self.hold(count, opening)

    def slowloris(self, count: int) -> None:
        def opening() -> socket.socket | None:
            sock = self.connect()
            if sock is not None:
                sock.sendall(f"GET / HTTP/1.1\r\nHost: {self.front.host}\r\n".encode())
            return sock

        self.hold(count, opening, every_s=5.0, tick=lambda sock: sock.sendall(b"X-a: b\r\n"))

    def idle(self, count: int) -> None:
        self.hold(count, self.connect)

    def big_heads(self, count: int) -> None:
        line = b"X-Big: " + b"a" * (16 * 1024 * 1024) + b"\r\n"

        def one_client() -> None:
            while not self.stop.is_set():
                sock = self.connect()
                if sock is None:
                    self.stop.wait(0.1)
                    continue
                with sock:
                    try:
                        sock.sendall(self.request_head("GET", "/", "").rstrip(b"\r\n") + b"\r\n"
                                     + line + b"\r\n")
                        sock.recv(1024)
                    except OSError:
                        self.closed_by_front += 1

        threads = [threading.Thread(target=one_client, daemon=True) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def crash_sql(self, count: int) -> None:
        poison = "/data.json?sql=select+fts3_tokenizer(%27simple%27,x%274141414141414141%27)"
        match = "/data.json?sql=select+*+from+notes+where+notes+match+%27council%27"
        while not self.stop.is_set():
            for path in [poison, match] * count:
                with contextlib.suppress(OSError, http.client.HTTPException):
                    connection = http.client.HTTPConnection("127.0.0.1", self.front.port,
                                                            timeout=5)
                    connection.request("GET", path, headers={"Host": self.front.host})
                    connection.getresponse().read()
                    connection.close()
            self.stop.wait(0.5)


COUNTS = {"slow-readers": 40, "stalled-bodies": 33, "slowloris": 200, "idle": 1000,
          "big-heads": 4, "crash-sql": 1}


# --- one measurement ---------------------------------------------------------------------------


@dataclass
class Outcome:
    requests: int
    failures: int
    failure_kinds: dict[str, int]
    p50_s: float
    p99_s: float
    rss_growth_mb: float
    state: str
    closed_by_front: int


def measure(front: Front, pattern: str, duration: float, scale: float) -> Outcome:
    front.restart_tenant()
    time.sleep(1)
    pids = front.pids()
    baseline = rss_mb(pids)
    stop = threading.Event()
    hostile = Hostile(front, stop)
    count = max(1, round(COUNTS[pattern] * scale))
    attacker = threading.Thread(target=getattr(hostile, pattern.replace("-", "_")),
                                args=(count,), daemon=True)
    attacker.start()
    time.sleep(min(3.0, duration / 4))  # let the attack take hold first
    normal_stop = threading.Event()
    normal: list[Normal] = []
    client = threading.Thread(target=lambda: normal.append(normal_client(front, normal_stop)),
                              daemon=True)
    client.start()
    peak = baseline
    states: list[str] = []
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        peak = max(peak, rss_mb(pids))
        time.sleep(0.5)
    states.append(front.state())
    normal_stop.set()
    client.join(15)
    stop.set()
    attacker.join(30)
    result = normal[0] if normal else Normal(failures=["client hung"])
    latencies = sorted(result.latencies) or [float("nan")]
    kinds: dict[str, int] = {}
    for failure in result.failures:
        kinds[failure] = kinds.get(failure, 0) + 1
    return Outcome(
        requests=len(result.latencies), failures=len(result.failures), failure_kinds=kinds,
        p50_s=statistics.median(latencies),
        p99_s=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        rss_growth_mb=peak - baseline, state=states[-1], closed_by_front=hostile.closed_by_front)


def report(results: dict[tuple[str, str], Outcome], fronts: list[str]) -> bool:
    print()
    print(f"{'pattern':<15}{'front':<9}{'requests':>9}{'failures':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'RSS +MB':>9}{'closed':>8}  tenant")
    ok = True
    for (pattern, front), o in results.items():
        kinds = f" {o.failure_kinds}" if o.failure_kinds else ""
        print(f"{pattern:<15}{front:<9}{o.requests:>9}{o.failures:>9}{o.p50_s * 1000:>9.1f}"
              f"{o.p99_s * 1000:>9.1f}{o.rss_growth_mb:>9.1f}{o.closed_by_front:>8}  {o.state}"
              f"{kinds}")
        if front == "gateway":
            ok &= (o.failures == 0 and o.p99_s < TARGET_P99_S
                   and o.rss_growth_mb < TARGET_RSS_MB and not o.state.startswith("failed"))
    print()
    print(f"targets (gateway, every pattern: 0 failures, p99 < {TARGET_P99_S * 1000:.0f} ms,"
          f" RSS growth < {TARGET_RSS_MB:.0f} MB, tenant never failed): "
          + ("met" if ok else "NOT MET"))
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per pattern")
    parser.add_argument("--only", default=",".join(PATTERNS), help="patterns, comma-separated")
    parser.add_argument("--fronts", default="gateway,caddy", help="fronts, comma-separated")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply connection counts")
    parser.add_argument("--gateway-toml", default="", metavar="TOML",
                        help='more gateway.toml lines, ";" between lines, e.g.'
                             ' "[proxy];response_buffer_total_bytes = 0"')
    args = parser.parse_args()
    patterns = [p for p in args.only.split(",") if p]
    unknown = set(patterns) - set(PATTERNS)
    if unknown:
        raise SystemExit(f"bench: unknown patterns {sorted(unknown)}; known: {PATTERNS}")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))  # 1,000 idle sockets
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    bench = Bench(args)
    try:
        starters = {"gateway": bench.start_gateway, "caddy": bench.start_caddy}
        fronts = [starters[name]() for name in args.fronts.split(",")]
        print(f"fronts: {', '.join(f'{f.name} :{f.port}' for f in fronts)}; {args.duration:g} s"
              f" per pattern; normal client: GET {NORMAL_PATH}", flush=True)
        results: dict[tuple[str, str], Outcome] = {}
        for pattern in patterns:
            for front in fronts:
                outcome = measure(front, pattern, args.duration, args.scale)
                results[(pattern, front.name)] = outcome
                print(f"  {pattern} / {front.name}: {outcome.failures} failures of"
                      f" {outcome.requests}, p99 {outcome.p99_s * 1000:.0f} ms, {outcome.state}",
                      flush=True)
        ok = report(results, [f.name for f in fronts])
    finally:
        bench.close()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
