"""[backup] and what is built from it (pure): config errors, Litestream's config and command."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.backup import litestream
from gateway.backup.catalog import Lineage, lineage_at
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
        "snapshot": {"interval": "1h", "retention": "7200000ms"},
        "dbs": [{"path": "/t/alice/data/a.db", "meta-path": "/s/meta", "replica": {
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
