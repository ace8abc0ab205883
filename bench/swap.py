#!/usr/bin/env python3
"""Fearless deploys, measured: load runs while the backend is replaced again and again.

    make bench-swap            (or: .venv/bin/python bench/swap.py [--duration 25])

One run, three fronts, the same load (wrk, 2 threads, 32 connections, DURATION s, on a small
JSON page of the same Datasette database):

- the gateway, while it does 10 tenant swaps (`gateway tenant restart`), 1 kill -9 of the
  tenant's Datasette and 1 `gateway upgrade`;
- Caddy (`reverse_proxy` with `lb_try_duration 10s`), while it does 10 backend swaps: a new
  Datasette on a new socket, the Caddyfile pointed at it, `caddy reload`, the old one stopped;
- nginx (keep-alive upstream), with the same 10 swaps done by `nginx -s reload`.

It prints requests, failures (non-2xx responses and socket errors, as wrk counts them), p99 and
max latency for each. Target for the gateway: 0 failures, max latency under 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import Processes, free_port, wait_until

BIN = Path(sys.executable).parent
HOST = "alice.bench.test"
PATH = "/db/items.json?_size=10"
SWAPS = 10
DRAIN_S = 1.0  # given to Caddy and nginx after a reload before the old backend stops


@dataclass
class Result:
    name: str
    requests: int
    failures: int
    detail: str
    p99_ms: float
    max_ms: float
    actions: str


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(f"GET {PATH} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
                         .encode())
            return sock.recv(12).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def uds_answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(str(path))
            sock.sendall(f"GET {PATH} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
                         .encode())
            return sock.recv(12).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def make_database(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("create table items (id integer primary key, name text, value real)")
        db.executemany("insert into items values (?, ?, ?)",
                       ((i, f"item {i}", i * 1.5) for i in range(1, 1001)))
    db.close()


def parse_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port: int, duration: float, name: str, actions: Callable[[], str]) -> Result:
    """Run the load; call `actions` (in a thread) while it runs; parse wrk's summary."""
    load = subprocess.Popen(
        ["wrk", "-t2", "-c32", f"-d{duration:.0f}s", "--timeout", "10s", "--latency",
         "-H", f"Host: {HOST}", f"http://127.0.0.1:{port}{PATH}"],
        stdout=subprocess.PIPE, text=True,
    )
    done: dict[str, str] = {}
    worker = threading.Thread(target=lambda: done.setdefault("actions", actions()))
    worker.start()
    output, _ = load.communicate()
    worker.join()
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    counts = {"non-2xx": int(non2xx.group(1)) if non2xx else 0}
    if errors:
        counts.update(zip(("connect", "read", "write", "timeout"),
                          map(int, errors.groups()), strict=True))
    p99 = re.search(r"99%\s+(\S+)", output).group(1)  # type: ignore[union-attr]
    maximum = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", output).group(1)  # type: ignore[union-attr]
    detail = ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "-"
    return Result(name, requests, sum(counts.values()), detail, parse_ms(p99),
                  parse_ms(maximum), done.get("actions", ""))


# --- the gateway ----------------------------------------------------------------------------


def gateway_run(root: Path, duration: float, procs: Processes) -> Result:
    site = root / "gateway"
    data = site / "tenants" / "alice" / "data"
    data.mkdir(parents=True)
    make_database(data / "db.db")
    (site / "tenants" / "alice" / "tenant.toml").write_text(
        "public = true\n[datasette]\nsuggest_facets = false\n")
    port = free_port()
    (site / "gateway.toml").write_text(
        f'domain = "bench.test"\n[listen]\nhost = "127.0.0.1"\nhttp_port = {port}\n'
        f'[paths]\nrun_dir = "{root}/run"\n[log]\naccess_log = false\n')
    os.chmod(root, 0o755)
    os.chmod(site, 0o755)
    procs.start([str(BIN / "gateway"), "--config", str(site / "gateway.toml"), "serve"],
                errors=root / "gateway-events.log", name="gateway")
    wait_until(lambda: answers(port), "the gateway to serve alice")

    def cli(*args: str) -> Any:
        result = subprocess.run([str(BIN / "gateway"), "--config", str(site / "gateway.toml"),
                                 *args], capture_output=True, text=True, check=True)
        return json.loads(result.stdout) if "--json" in args else result.stdout

    def actions() -> str:
        time.sleep(2)
        pause = (duration - 6) / (SWAPS + 2)
        for i in range(SWAPS):
            cli("tenant", "restart", "alice")
            time.sleep(pause)
            if i == SWAPS // 2:
                pid = next(t["pid"] for t in cli("status", "--json")["tenants"])
                os.kill(pid, signal.SIGKILL)
                wait_until(lambda: next(t for t in cli("status", "--json")["tenants"])["state"]
                           == "running", "alice restarted")
                time.sleep(pause)
        cli("upgrade")
        return f"{SWAPS} tenant restarts, 1 kill -9, 1 gateway upgrade"

    return wrk(port, duration, "gateway", actions)


# --- Caddy and nginx in front of plain Datasette processes ----------------------------------


class Backends:
    """Plain Datasette processes on numbered sockets; `swap` starts the next, stops the last."""

    def __init__(self, root: Path, database: Path, procs: Processes) -> None:
        self.root = root
        self.database = database
        self.procs = procs
        self.generation = 0
        self.current: subprocess.Popen[bytes] | None = None

    def socket(self, generation: int | None = None) -> Path:
        return self.root / f"ds{self.generation if generation is None else generation}.sock"

    def start_next(self) -> subprocess.Popen[bytes]:
        self.generation += 1
        path = self.socket()
        path.unlink(missing_ok=True)
        process = self.procs.start([
            str(BIN / "datasette"), "serve", str(self.database), "--uds", str(path),
            "--setting", "suggest_facets", "off",
        ])
        wait_until(lambda: uds_answers(path), f"Datasette on {path.name}")
        return process

    def swap(self, point_proxy_at: Callable[[Path], None]) -> None:
        """Blue/green by hand: new backend, proxy reloaded, old one drained and stopped."""
        old = self.current
        self.current = self.start_next()
        point_proxy_at(self.socket())
        time.sleep(DRAIN_S)  # what the proxy's old config still has in flight may finish
        if old is not None:
            self.procs.stop(old)  # SIGTERM: Datasette finishes in-flight requests first


def proxy_run(name: str, root: Path, duration: float, procs: Processes) -> Result:
    home = root / name
    home.mkdir()
    database = home / "db.db"
    make_database(database)
    backends = Backends(home, database, procs)
    port = free_port()
    if name == "caddy":
        config = home / "Caddyfile"
        admin = home / "admin.sock"
        env = {**os.environ, "XDG_CONFIG_HOME": str(home), "XDG_DATA_HOME": str(home)}

        def write(socket_path: Path) -> None:
            config.write_text(
                "{\n\tauto_https off\n\tadmin unix/" + str(admin) + "\n\tlog default {\n"
                "\t\toutput discard\n\t}\n}\n"
                f"http://{HOST}:{port} {{\n\tbind 127.0.0.1\n"
                f"\treverse_proxy unix/{socket_path} {{\n\t\tlb_try_duration 10s\n\t}}\n}}\n"
            )

        def start() -> None:
            procs.start(["caddy", "run", "--config", str(config), "--adapter", "caddyfile"],
                        env=env)

        def reload(socket_path: Path) -> None:
            write(socket_path)
            subprocess.run(["caddy", "reload", "--config", str(config), "--adapter", "caddyfile",
                            "--address", f"unix/{admin}"], env=env, check=True,
                           capture_output=True)
    else:
        config = home / "nginx.conf"

        def write(socket_path: Path) -> None:
            config.write_text(
                f"pid {home}/nginx.pid;\nerror_log {home}/error.log;\nworker_processes 1;\n"
                "events { worker_connections 1024; }\nhttp {\n  access_log off;\n"
                f"  upstream ds {{ server unix:{socket_path}; keepalive 64; }}\n"
                f"  server {{\n    listen 127.0.0.1:{port};\n    server_name {HOST};\n"
                "    location / {\n      proxy_pass http://ds;\n      proxy_http_version 1.1;\n"
                "      proxy_set_header Connection \"\";\n      proxy_set_header Host $http_host;\n"
                "    }\n  }\n}\n"
            )

        def start() -> None:
            procs.start(["nginx", "-p", str(home), "-c", str(config), "-g", "daemon off;"])

        def reload(socket_path: Path) -> None:
            write(socket_path)
            subprocess.run(["nginx", "-p", str(home), "-c", str(config), "-s", "reload"],
                           check=True, capture_output=True)

    backends.current = backends.start_next()
    write(backends.socket())
    start()
    wait_until(lambda: answers(port), f"{name} to serve")

    def actions() -> str:
        time.sleep(2)
        pause = (duration - 6) / (SWAPS + 1)
        for _ in range(SWAPS):
            backends.swap(reload)
            time.sleep(pause)
        return f"{SWAPS} backend swaps ({'caddy reload' if name == 'caddy' else 'nginx -s reload'})"

    return wrk(port, duration, name, actions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=25.0, help="seconds of load per front")
    args = parser.parse_args()
    for tool in ("wrk", "caddy", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/swap.py needs {tool}: run `make bench-debs`")
    root = Path(tempfile.mkdtemp(prefix="swap-", dir="/tmp"))
    procs = Processes()
    results = []
    try:
        for run in (gateway_run, lambda r, d, p: proxy_run("caddy", r, d, p),
                    lambda r, d, p: proxy_run("nginx", r, d, p)):
            results.append(run(root, args.duration, procs))
    finally:
        procs.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nbench/swap.py: wrk -t2 -c32 -d{args.duration:.0f}s {PATH} while the backend is"
          f" replaced ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)\n")
    print(f"{'front':<9} {'requests':>9} {'failures':>9} {'p99 ms':>8} {'max ms':>8}  "
          "failure kinds / what happened")
    for r in results:
        print(f"{r.name:<9} {r.requests:>9} {r.failures:>9} {r.p99_ms:>8.1f} {r.max_ms:>8.1f}"
              f"  {r.detail} / {r.actions}")
    gateway = results[0]
    ok = gateway.failures == 0 and gateway.max_ms < 3000
    print(f"\ntarget (gateway: 0 failures, max latency < 3 s): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
