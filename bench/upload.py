#!/usr/bin/env python3
"""CSV upload, measured: the gateway's /-/upload beside sqlite-utils and the sqlite3 shell.

    make bench-upload          (or: .venv/bin/python bench/upload.py [--rows 1000000] [--rounds 1])

One generated CSV (1M rows, about 90 MB: integers, floats, short and long text, some empty
cells), imported by:

- the gateway: curl POSTs it to a tenant's /-/upload with a member's API token; the clock stops
  when the answer says the typed table is committed (end to end: HTTP, the sandboxed importer,
  the commit);
- `sqlite-utils insert DB TABLE FILE --csv` (it detects column types by default);
- `sqlite3 DB ".import --csv FILE t"` (no types: the practical floor).

Rounds are interleaved (one of each per round); the median is shown. Also shown: CPU seconds,
the gateway's RSS growth and peak, the importer's peak RSS, and whether the gateway's table has
the same column types as sqlite-utils' (it must). Targets (issue 13 item 8): at least 12x faster
than sqlite-utils (goal: 15x, within 2x of the sqlite3 shell), importer RSS under 100 MB, gateway
RSS growth under 50 MB.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
DOMAIN = "bench.test"
EMAIL = "bench@example.com"
PASSWORD = "bench password 123"
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
         "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi"]


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    rss_mb: float  # peak RSS of the process doing the work
    extra: dict[str, float] = field(default_factory=dict)


def generate(path: Path, rows: int) -> None:
    """id, count (5% empty), price, ratio (10% empty), name, description (long, sometimes
    empty), city (with a comma and non-ASCII), date, code (leading zeros)."""
    rng = random.Random(8)
    cities = ["Berlin", "Paris", "São Paulo", "Zürich", "New York, NY", "Kraków"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "count", "price", "ratio", "name", "description", "city", "date",
                         "code"])
        for i in range(1, rows + 1):
            writer.writerow([
                i,
                rng.randint(-5000, 100000) if rng.random() > 0.05 else "",
                f"{rng.uniform(0, 1000):.2f}",
                repr(rng.random()) if rng.random() > 0.1 else "",
                f"{rng.choice(WORDS).title()} {rng.choice(WORDS)}",
                " ".join(rng.choices(WORDS, k=rng.randint(0, 6))),
                rng.choice(cities),
                f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                f"{rng.randint(0, 99999):05d}",
            ])


def timed(argv: list[str], **kwargs: Any) -> Run:
    """Run a command to its end; wall time, CPU time and peak RSS from wait4."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, **kwargs)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"bench/upload.py: {argv[0]} failed ({process.returncode})")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def proc_status(pid: int, key: str) -> int:
    """A /proc/PID/status value in kB (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Watches the gateway's RSS while an upload runs."""

    def __init__(self, gateway_pid: int) -> None:
        self.gateway_pid = gateway_pid
        self.baseline_kb = proc_status(gateway_pid, "VmRSS")
        self.peak_kb = self.baseline_kb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_kb = max(self.peak_kb, proc_status(self.gateway_pid, "VmRSS"))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Gateway:
    """A gateway serving one private tenant, and a member's API token for it."""

    def __init__(self, root: Path) -> None:
        self.site = root / "gateway"
        self.data_dir = self.site / "tenants" / "alice" / "data"
        self.data_dir.mkdir(parents=True)
        sqlite3.connect(self.data_dir / "data.db").close()
        (self.site / "tenants" / "alice" / "tenant.toml").write_text("public = false\n")
        (self.site / "gateway.toml").write_text(
            f'domain = "{DOMAIN}"\n[listen]\nhost = "127.0.0.1"\nhttp_port = 0\n'
            f'[paths]\nrun_dir = "{root}/run"\n[log]\naccess_log = false\n'
            "[upload]\nmax_file_mb = 2048\n")
        for folder in (root, self.site):
            os.chmod(folder, 0o755)
        self.events = open(root / "gateway-events.log", "w+b")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(BIN / "gateway"), "--config", str(self.site / "gateway.toml"), "serve"],
            stdout=subprocess.DEVNULL, stderr=self.events)
        self.port = self._wait_listening()
        self.cli("user", "add", EMAIL, "--password-stdin", input=PASSWORD + "\n")
        self.cli("tenant", "members", "alice", "--add", EMAIL)
        self.token = self.cli("user", "token", EMAIL).strip()
        deadline = time.monotonic() + 60
        while (status := json.loads(self.cli("status", "--json")))["tenants"][0]["state"] \
                != "running":
            if time.monotonic() > deadline:
                raise SystemExit("bench/upload.py: the tenant did not start")
            time.sleep(0.1)
        self.worker_pid = int(status["worker_pid"])  # `gateway serve` runs the gateway in it

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                return int(self.last_event("gateway_listening")["http"].rpartition(":")[2])
            except StopIteration:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit("bench/upload.py: the gateway did not start (see gateway-events.log)")

    def cli(self, *args: str, input: str | None = None) -> str:
        return subprocess.run(
            [str(BIN / "gateway"), "--config", str(self.site / "gateway.toml"), *args],
            capture_output=True, text=True, check=True, input=input).stdout

    def upload(self, csv_path: Path) -> Run:
        """curl POSTs the file; the importer's CPU and peak RSS come from the gateway's log."""
        sampler = Sampler(self.worker_pid)
        cpu_before = cpu_s(self.worker_pid)
        answer = Path(self.site / "answer.json")
        run = timed(["curl", "-sS", "--fail-with-body", "-o", str(answer),
                     "-H", f"Host: alice.{DOMAIN}", "-H", f"Authorization: Bearer {self.token}",
                     "-F", "table=upload", "-F", "mode=replace",
                     "-F", f"file=@{csv_path};type=text/csv",
                     f"http://127.0.0.1:{self.port}/-/upload"])
        sampler.stop()
        result = json.loads(answer.read_text())
        if not result.get("ok"):
            raise SystemExit(f"bench/upload.py: the upload failed: {result}")
        imported = self.last_event("upload_imported")
        return Run(run.wall_s, imported["importer_cpu_s"], imported["importer_rss_mb"], {
            "gateway_cpu_s": cpu_s(self.worker_pid) - cpu_before,
            "gateway_growth_mb": (sampler.peak_kb - sampler.baseline_kb) / 1024,
            "gateway_peak_mb": sampler.peak_kb / 1024,
            "rows": result["rows"],
        })

    def last_event(self, name: str) -> dict[str, Any]:
        self.events.seek(0)
        events = [json.loads(line) for line in self.events.read().splitlines()]
        return next(e for e in reversed(events) if e.get("event") == name)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.events.close()


def column_types(database: Path, table: str) -> list[tuple[str, str]]:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return [(row[1], row[2]) for row in connection.execute(f"PRAGMA table_info({table})")]
    finally:
        connection.close()


def fresh(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/upload.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/upload.py: not root, so tenants run without their sandbox", file=sys.stderr)
    root = Path(tempfile.mkdtemp(prefix="bench-upload-", dir="/tmp"))
    try:
        measure(root, args.rows, args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # the CSV and four databases: ~400 MB


def measure(root: Path, rows: int, rounds: int) -> None:
    csv_path = root / "bench.csv"
    generate(csv_path, rows)
    print(f"CSV: {rows:,} rows, {csv_path.stat().st_size / 1e6:.1f} MB", flush=True)
    gateway = Gateway(root)
    runs: dict[str, list[Run]] = {"gateway": [], "sqlite-utils": [], "sqlite3": []}
    try:
        for round_ in range(1, rounds + 1):
            runs["gateway"].append(gateway.upload(csv_path))
            runs["sqlite-utils"].append(timed([
                str(BIN / "sqlite-utils"), "insert", str(fresh(root / "su.db")), "upload",
                str(csv_path), "--csv"]))
            runs["sqlite3"].append(timed([
                "sqlite3", str(fresh(root / "shell.db")), f".import --csv {csv_path} upload"]))
            print(f"round {round_}: " + ", ".join(
                f"{name} {r[-1].wall_s:.2f} s" for name, r in runs.items()), flush=True)
        ours = column_types(gateway.data_dir / "data.db", "upload")
        theirs = column_types(root / "su.db", "upload")
        imported = runs["gateway"][-1].extra["rows"]
    finally:
        gateway.stop()
    report(runs, rows, imported, ours, theirs)


def median(runs: list[Run], key: str) -> float:
    return statistics.median(r.extra[key] if key in r.extra else getattr(r, key) for r in runs)


def report(runs: dict[str, list[Run]], rows: int, imported: float,
           ours: list[tuple[str, str]], theirs: list[tuple[str, str]]) -> None:
    labels = {"gateway": "gateway /-/upload, end to end",
              "sqlite-utils": "sqlite-utils insert --csv", "sqlite3": 'sqlite3 ".import --csv"'}
    print()
    print(f"{'method':32} {'wall s':>8} {'rows/s':>10} {'CPU s':>7} {'peak RSS MB':>12}")
    for name, label in labels.items():
        wall = median(runs[name], "wall_s")
        print(f"{label:32} {wall:8.2f} {rows / wall:10,.0f} {median(runs[name], 'cpu_s'):7.2f}"
              f" {median(runs[name], 'rss_mb'):12.1f}")
    gateway = runs["gateway"]
    print(f"  (gateway row: CPU and peak RSS are the importer's; the gateway itself used"
          f" {median(gateway, 'gateway_cpu_s'):.2f} s CPU, RSS peak"
          f" {median(gateway, 'gateway_peak_mb'):.1f} MB, growth"
          f" {median(gateway, 'gateway_growth_mb'):+.1f} MB)")
    ours_wall = median(gateway, "wall_s")
    print()
    print(f"gateway vs sqlite-utils: {median(runs['sqlite-utils'], 'wall_s') / ours_wall:.1f}x"
          f" faster (target: at least 12x; goal 15x)")
    print(f"gateway vs sqlite3 shell: {ours_wall / median(runs['sqlite3'], 'wall_s'):.2f}x the"
          f" time (goal: within 2x)")
    print(f"importer peak RSS: {median(gateway, 'rss_mb'):.1f} MB (target: under 100 MB)")
    print(f"rows imported by the gateway: {imported:,.0f} of {rows:,}")
    same = "the same as" if ours == theirs else "DIFFERENT from"
    print(f"column types: {same} sqlite-utils': " + ", ".join(f"{n} {t}" for n, t in ours))
    if ours != theirs:
        print("  sqlite-utils: " + ", ".join(f"{n} {t}" for n, t in theirs))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
