"""[backup] and what is built from it (pure): config errors, Litestream's config and command."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.backup import litestream
from gateway.backup.catalog import Catalog, Lineage, lineage_at
from gateway.backup.progress import LAGGING_AFTER_S, Progress, classify
from gateway.config import BackupSettings, load_config

from .test_config import error_of, write

BACKUP = """domain = "example.com"
[backup]
endpoint = "https://s3.example.net"
bucket = "b"
prefix = "/site/prod/"
access_key_id_file = "keys/id"
secret_access_key_file = "keys/secret"
"""


def test_backup_is_off_by_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'domain = "example.com"\n'))
    assert config.gateway.backup.endpoint == ""


def test_backup_paths_are_absolute_and_prefix_trimmed(tmp_path: Path) -> None:
    backup = load_config(write(tmp_path, BACKUP)).gateway.backup
    assert backup.access_key_id_file == tmp_path / "keys/id"
    assert backup.prefix == "site/prod"


@pytest.mark.parametrize(("change", "message"), [
    ('bucket = "b"\n', "gateway.toml: backup.bucket: required when backup.endpoint is set"),
    ('secret_access_key_file = "keys/secret"\n',
     "gateway.toml: backup.secret_access_key_file: required when backup.endpoint is set"),
    ('endpoint = "https://s3.example.net"\n',
     "gateway.toml: backup.endpoint: expected an http:// or https:// URL, got 's3.example.net'"),
])
def test_backup_errors(tmp_path: Path, change: str, message: str) -> None:
    text = BACKUP.replace(change, 'endpoint = "s3.example.net"\n' if "endpoint" in change
                          else "")
    assert error_of(write(tmp_path, text)) == message


def test_litestream_config_has_no_credentials() -> None:
    settings = BackupSettings(endpoint="http://127.0.0.1:9000", bucket="b", prefix="p",
                              sync_interval_s=0.5, retention_h=2)
    replica = litestream.Replica(Path("/t/alice/data/a.db"),
                                 litestream.tenant_object_path(settings, "alice", 3, "a.db"),
                                 Path("/s/meta"))
    assert litestream.config(settings, [replica]) == {
        "logging": {"level": "debug"},
        "snapshot": {"interval": "1h", "retention": "7200000ms"},
        "dbs": [{"path": "/t/alice/data/a.db", "meta-path": "/s/meta",
                 "monitor-interval": "500ms", "replica": {
            "type": "s3", "bucket": "b", "path": "p/tenants/alice/g3/a.db",
            "endpoint": "http://127.0.0.1:9000", "region": "us-east-1",
            "force-path-style": True, "sync-interval": "500ms"}}],
    }
    env = litestream.environment(litestream.Credentials("id", "secret"))
    assert env == {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8",
                   "LITESTREAM_ACCESS_KEY_ID": "id", "LITESTREAM_SECRET_ACCESS_KEY": "secret"}


def test_run_as_drops_everything_but_the_tenants_group() -> None:
    assert litestream.run_as(30001, 20001) == [
        "setpriv", "--pdeathsig", "TERM", "--reuid=30001", "--regid=30001", "--groups=20001",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    assert litestream.run_as(None, None) == ["setpriv", "--pdeathsig", "TERM",
                                             "--no-new-privs", "--"]


def test_lineage_at_a_time() -> None:
    lines = [Lineage("alice", "a.db", 1, 100.0, 200.0), Lineage("alice", "a.db", 2, 200.0, None),
             Lineage("alice", "old.db", 1, 50.0, 150.0)]
    assert [(x.name, x.lineage) for x in lineage_at(lines, None)] == [("a.db", 2)]
    assert [(x.name, x.lineage) for x in lineage_at(lines, 120.0)] == [("a.db", 1),
                                                                        ("old.db", 1)]
    assert [(x.name, x.lineage) for x in lineage_at(lines, 250.0)] == [("a.db", 2)]


LINES = {
    "sync": b'time=2026-12-06T11:47:25.249Z level=DEBUG msg="replica sync" system=store'
            b' db=a.db replica=s3 txid.replica=0000000000000001 txid.db=000000000000000a\n',
    "uploaded": b'time=2026-12-06T11:47:26.251Z level=DEBUG msg="ltx file uploaded"'
                b' system=store db=a.db replica=s3 level=0 minTXID=0000000000000002'
                b' maxTXID=000000000000000a size=191\n',
    "full": b'time=2026-12-06T11:47:27.251Z level=ERROR msg="sync error" system=store db=a.db'
            b' error="write ltx: open /s/meta/ltx/0/x.ltx: no space left on device"'
            b' consecutive_errors=1 backoff=1s\n',
    "other_db": b'time=2026-12-06T11:47:25.249Z level=DEBUG msg="replica sync" db=b.db'
                b' txid.replica=0000000000000001 txid.db=0000000000000001\n',
    "noise": b'time=2026-12-06T11:47:25.249Z level=DEBUG msg=verify db=a.db saltMatch=true\n',
}


def test_progress_follows_litestreams_log() -> None:
    """A replica behind is not confirmed until the upload of its newest transaction; a full
    disk starts a run of failures (one event), the next sync ends it (one event); a replica
    unconfirmed for LAGGING_AFTER_S is said to be behind, then caught up."""
    progress = Progress(["a.db"], started_at=1000.0)
    assert progress.read(LINES["noise"], 1001.0) is None
    assert progress.read(LINES["other_db"], 1001.0) is None
    assert progress.read(LINES["sync"], 1002.0) is None
    state = progress.databases["a.db"]
    assert (state.db_txid, state.replica_txid, state.confirmed_at) == (10, 1, None)
    assert state.lag_s(1005.0, progress.started_at) == 5.0
    assert progress.read(LINES["uploaded"], 1003.0) is None
    assert state.confirmed_at == 1003.0
    assert progress.read(LINES["full"], 1004.0) == ("backup_disk_full", {
        "database": "a.db", "reason": "disk_full",
        "error": "write ltx: open /s/meta/ltx/0/x.ltx: no space left on device"})
    assert progress.read(LINES["full"], 1005.0) is None
    assert progress.check(1003.0 + LAGGING_AFTER_S) == [
        ("backup_replica_behind", {"database": "a.db", "lag_s": LAGGING_AFTER_S})]
    assert progress.check(1004.0 + LAGGING_AFTER_S) == []
    assert progress.read(LINES["sync"], 1040.0) == ("backup_sync_resumed", {
        "database": "a.db", "reason": "disk_full", "failures": 2, "failed_s": 36.0})
    assert progress.check(1041.0) == [("backup_replica_caught_up",
                                       {"database": "a.db", "lag_s": 1.0})]
    assert state.errors == {"disk_full": 2}


@pytest.mark.parametrize(("error", "reason"), [
    ("write /s/meta/x.ltx: no space left on device", "disk_full"),
    ('operation error S3: PutObject, dial tcp 127.0.0.1:9000: connect: connection refused',
     "storage"),
    ("database is locked", "other"),
])
def test_sync_errors_are_classified(error: str, reason: str) -> None:
    assert classify(error) == reason


def test_removed_tenants_expire_after_retention_and_only_this_sites(tmp_path: Path) -> None:
    """Lineages of a removed tenant expire after the cutoff; not those of a tenant still
    here, nor those written by the site a `restore --all` came from."""
    catalog = Catalog(tmp_path / "backup.db")
    try:
        rows = [("old", "a.db", 1, 10.0, None), ("bob", "a.db", 1, 10.0, None),
                ("alice", "a.db", 1, 10.0, 50.0), ("alice", "a.db", 2, 50.0, None)]
        catalog.connection.executemany("INSERT INTO databases VALUES (?, ?, ?, ?, ?)", rows)
        catalog.start_epoch()  # "old"'s and bob's first folders are another site's...
        catalog.connection.execute("UPDATE site SET value = 20.0")
        catalog.connection.execute("INSERT INTO databases VALUES ('bob', 'b.db', 1, 30, NULL)")
        catalog.put_file("tenants/bob/tenant.toml", b"public = true", 0o644)
        catalog.remove_tenant("bob")
        catalog.remove_tenant("old")
        removed_at = catalog.connection.execute(
            "SELECT removed_at FROM removals WHERE tenant = 'bob'").fetchone()[0]
        assert catalog.files() == []
        assert catalog.expired(removed_at) == []
        expired = catalog.expired(removed_at + 1)
        assert [(x.tenant, x.name, x.lineage) for x in expired] == [("bob", "b.db", 1)]
        catalog.drop_lineage(expired[0])
        assert catalog.expired(removed_at + 1) == []
        assert [(x.tenant, x.lineage) for x in catalog.lineages("bob")] == [("bob", 1)]
    finally:
        catalog.close()
