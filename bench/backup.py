#!/usr/bin/env python3
"""Replication, measured: lag, the cost to uploads, restore times. Run as root.

    .venv/bin/python bench/backup.py [--appends 30] [--append-rows 20000] [--big-rows 1000000]
                                  [--site-tenants 20]

Starts a SeaweedFS S3 server and two gateways side by side, one with [backup] and one
without, each with a tenant `alice` (a 1M-row database) and `--site-tenants` small tenants.
Then prints:

1. replication lag: CSV appends (`--append-rows` rows each) are uploaded to alice one after
   another; for each, the time from the upload's answer until the replica holds its
   transaction: Litestream's transaction id before the upload is noted, and the bucket's
   level-0 files are listed every 20 ms (a direct S3 list, ~5 ms) until one goes past it (an
   upload is one SQLite transaction). p50 and p99. Target: p99 under 2 s.
2. upload time with replication on and off: the same appends, interleaved between the two
   gateways; median and ratio. Target: under 10 % slower.
3. restoring alice's 1M-row database: `gateway restore alice` (replica -> file -> hot swap ->
   served). Target: under 10 s.
4. `gateway restore --all --to` an empty folder: the whole site.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import wait_until

from gateway.backup import litestream
from gateway.backup.restore import Storage
from gateway.backup.s3 import Bucket
from gateway.config import load_config

BIN = Path(sys.executable).parent
KEY_ID, SECRET, BUCKET = "bench", "bench-secret", "bench"
PASSWORD = "bench password 123"


def free_port_pair() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 <= 65535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def start_seaweed(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    ports = [free_port_pair() for _ in range(4)]
    (root / "s3.json").write_text(json.dumps({"identities": [{"name": "b", "credentials": [
        {"accessKey": KEY_ID, "secretKey": SECRET}], "actions": ["Admin", "Read", "Write",
                                                                  "List"]}]}))
    (root / "weed").mkdir()
    process = subprocess.Popen(
        [str(BIN / "weed"), "server", f"-dir={root / 'weed'}", "-ip=127.0.0.1",
         f"-master.port={ports[0]}", f"-volume.port={ports[1]}", "-filer",
         f"-filer.port={ports[2]}", "-s3", f"-s3.port={ports[3]}",
         f"-s3.config={root / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
         "-master.telemetry=false"], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{ports[3]}"

    def up() -> bool:
        try:
            return httpx.get(endpoint, timeout=1).status_code == 403
        except httpx.HTTPError:
            return False

    wait_until(up, "SeaweedFS", 90, interval=0.05)
    wait_until(lambda: subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
         f"{endpoint}/{BUCKET}", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user",
         f"{KEY_ID}:{SECRET}"], capture_output=True, text=True).stdout in ("200", "409"),
        "the bucket", 30, interval=0.05)
    return process, endpoint


def make_site(root: Path, endpoint: str | None, big: Path, tenants: int, uid_base: int) -> Path:
    root.mkdir()
    os.chmod(root, 0o755)
    (root / "tenants").mkdir()
    lines = ['domain = "bench.test"', "[listen]", 'host = "127.0.0.1"', "http_port = 0",
             "[paths]", f'run_dir = "{root / "run"}"', "[sandbox]",
             f"uid_min = {uid_base}", f"uid_max = {uid_base + 99}",
             "[metrics]", 'listen = ""',  # two gateways: not both on the default port
             "[auth]", "password_time_cost = 1", "password_memory_kib = 8",
             "password_parallelism = 1"]
    if endpoint:
        (root / "key_id").write_text(KEY_ID)
        (root / "secret").write_text(SECRET)
        lines += ["[backup]", f'endpoint = "{endpoint}"', f'bucket = "{BUCKET}"',
                  f'prefix = "{root.name}"', 'access_key_id_file = "key_id"',
                  'secret_access_key_file = "secret"', "uid_offset = 200"]
    (root / "gateway.toml").write_text("\n".join(lines) + "\n")
    for i in range(tenants):
        name = "alice" if i == 0 else f"t{i:02d}"
        data = root / "tenants" / name / "data"
        data.mkdir(parents=True)
        (root / "tenants" / name / "tenant.toml").write_text("public = true\n")
        if name == "alice":
            shutil.copy(big, data / "big.db")
        with sqlite3.connect(data / "data.db") as db:
            db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
            db.execute("CREATE TABLE appends (n INTEGER, label TEXT)")
            db.executemany("INSERT INTO items VALUES (?, ?)",
                           [(n, f"item {n}") for n in range(1000)])
        db.close()
    return root / "gateway.toml"


def make_big(path: Path, rows: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, name TEXT, value REAL)")
        db.executemany("INSERT INTO big VALUES (?, ?, ?)",
                       ((n, f"row {n} of the big table", n * 0.5) for n in range(rows)))
    db.close()


class Gateway:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.process = subprocess.Popen([str(BIN / "gateway"), "--config", str(config), "serve"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            try:
                event = json.loads(raw)
            except ValueError:
                raise SystemExit(f"gateway: {raw.decode(errors='replace')}") from None
            if event.get("event") == "gateway_listening":
                self.url = "http://127.0.0.1:" + event["http"].rpartition(":")[2]
                break
        threading.Thread(target=self._drain, daemon=True).start()
        self.client = httpx.Client(base_url=self.url, timeout=300)
        wait_until(lambda: self.client.get("/data/items.json", headers={"host": "alice.bench.test"})
                   .status_code == 200, "alice", 60, interval=0.05)
        self.cli("user", "add", "b@example.com", "--password-stdin", input=PASSWORD + "\n")
        self.cli("tenant", "members", "alice", "--add", "b@example.com")
        self.token = self.cli("user", "token", "b@example.com").strip()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for _ in self.process.stderr:
            pass

    def cli(self, *args: str, input: str | None = None) -> str:
        return subprocess.run([str(BIN / "gateway"), "--config", str(self.config), *args],
                              capture_output=True, text=True, check=True, input=input).stdout

    def upload(self, body: bytes, table: str) -> float:
        started = time.perf_counter()
        response = self.client.post(
            "/-/upload", data={"database": "data", "table": table, "mode": "append"},
            files={"file": ("a.csv", body, "text/csv")},
            headers={"host": "alice.bench.test", "authorization": f"Bearer {self.token}"})
        assert response.status_code == 200, response.text
        return time.perf_counter() - started

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def local_txid(config_file: Path, database: str) -> int:
    result = subprocess.run([str(litestream.binary()), "status", "-json", "-no-expand-env",
                             "-config", str(config_file)], capture_output=True, text=True,
                            env=litestream.environment(litestream.Credentials("", "")))
    for row in json.loads(result.stdout):
        if Path(row["database"]).name == database:
            return int(row["local_txid"], 16)
    raise SystemExit(f"no local txid for {database}")


def replica_txid(bucket: Bucket, client: httpx.Client, path: str) -> int:
    """The newest transaction in the replica's level 0 (keys are MIN-MAX.ltx, in hex)."""
    keys = bucket.keys(client, f"{path}/0000/")
    return max((int(key.rpartition("-")[2].removesuffix(".ltx"), 16) for key in keys),
               default=0)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--appends", type=int, default=30)
    parser.add_argument("--append-rows", type=int, default=20000)
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--site-tenants", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (tenant users)")
    root = Path(tempfile.mkdtemp(prefix="bench-backup-", dir="/tmp"))
    os.chmod(root, 0o755)
    weed, gateways = None, []
    try:
        weed, endpoint = start_seaweed(root)
        big = root / "big.db"
        make_big(big, args.big_rows)
        on = Gateway(make_site(root / "on", endpoint, big, args.site_tenants, 27100))
        gateways.append(on)
        off = Gateway(make_site(root / "off", None, big, args.site_tenants, 27300))
        gateways.append(off)
        config = load_config(on.config)
        settings = config.gateway.backup
        with tempfile.TemporaryDirectory() as work:
            bucket = Storage(settings, litestream.read_credentials(settings), Path(work))
            s3 = Bucket(settings, bucket.credentials)
            poller = httpx.Client(timeout=10, trust_env=False)
            ls_config = root / "on/state/replication/alice/litestream.json"
            wait_until(lambda: ls_config.exists(), "alice's Litestream", 30, interval=0.05)
            body = ("n,label\n" + "".join(f"{n},label {n}\n" for n in range(args.append_rows))
                    ).encode()
            on.upload(body, "appends")
            off.upload(body, "appends")
            lags, times_on, times_off = [], [], []
            lineage = json.loads(ls_config.read_text())["dbs"]
            path = next(d["replica"]["path"] for d in lineage if d["path"].endswith("/data.db"))
            for _ in range(args.appends):
                times_off.append(off.upload(body, "appends"))
                # the previous upload is in the replica: Litestream's txid is the replica's
                before = local_txid(ls_config, "data.db")
                wait_until(lambda before=before: replica_txid(s3, poller, path) >= before,
                           "the replica", 60, interval=0.05)
                times_on.append(on.upload(body, "appends"))
                answered = time.perf_counter()
                deadline = answered + 60
                while replica_txid(s3, poller, path) <= before:
                    if time.perf_counter() > deadline:
                        raise SystemExit("the replica did not catch up in 60 s")
                    time.sleep(0.02)
                lags.append(time.perf_counter() - answered)
            poller.close()
            print(f"replication lag after an upload of {args.append_rows} rows"
                  f" ({len(lags)} uploads): p50 {percentile(lags, 50):.2f} s,"
                  f" p99 {percentile(lags, 99):.2f} s, max {max(lags):.2f} s")
            median_on, median_off = statistics.median(times_on), statistics.median(times_off)
            print(f"upload time, median: replication on {median_on:.3f} s, off"
                  f" {median_off:.3f} s, ratio {median_on / median_off:.3f}")

        started = time.perf_counter()
        on.cli("restore", "alice", "--database", "big.db")
        response = on.client.get("/big/big.json?_size=1&_sort_desc=id",
                                 headers={"host": "alice.bench.test"})
        restore_s = time.perf_counter() - started
        assert response.status_code == 200, response.text
        print(f"restore of a {args.big_rows}-row database ({big.stat().st_size / 1e6:.0f} MB)"
              f" and serving it: {restore_s:.2f} s")

        started = time.perf_counter()
        out = on.cli("restore", "--all", "--to", str(root / "new-machine"))
        print(f"restore --all of {args.site_tenants} tenants on an empty folder:"
              f" {time.perf_counter() - started:.2f} s ({out.strip()})")
    finally:
        for gateway in gateways:
            gateway.stop()
        if weed is not None:
            weed.terminate()
            weed.wait(30)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
