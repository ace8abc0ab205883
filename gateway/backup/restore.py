"""Reading the replicas back: `gateway backup status`, `gateway restore`.

Runs in the CLI, as the operator (root): Litestream reads the bucket with the credentials of
[backup], in a clean environment, from a config written to a private temporary folder.

    status(config)                         per database: last sync, lag, replica size, snapshots
    restore_tenant(config, name, at, db)   a point-in-time copy of a tenant's data, swapped in
                                           for data/ (the old folder kept in tenants/.restored/);
                                           the CLI then hot-swaps the running tenant onto it
    restore_site(config, tenants, state)   tenants/ and state/ rebuilt in empty folders (`restore
                                           --all`, and `serve` on a new machine)
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..auth.store import ACCOUNTS_FILE
from ..config import DATA_DIR, BackupSettings, Config
from ..errors import GatewayError
from ..keys import MASTER_KEY_FILE
from ..tenant_files import TRASH_DIR
from . import litestream
from .catalog import CATALOG_FILE, Catalog, Lineage, lineage_at
from .replicator import REPLICATION_DIR

RESTORED_DIR = ".restored"  # in tenants/: data folders a restore replaced
_PARALLEL_RESTORES = 4


class RestoreError(GatewayError):
    """A restore could not be done; nothing was changed."""


@dataclass(frozen=True, slots=True)
class Storage:
    """The bucket, read through Litestream."""

    settings: BackupSettings
    credentials: litestream.Credentials
    workdir: Path

    def _run(self, args: list[str], database: Path, object_path: str) -> str:
        config = {"dbs": [{"path": str(database),
                           "replica": litestream.replica_block(self.settings, object_path)}]}
        fd, config_file = tempfile.mkstemp(suffix=".json", dir=self.workdir)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        try:
            result = subprocess.run(
                [str(litestream.binary()), *args[:1], "-no-expand-env", "-config", config_file,
                 *args[1:], str(database)],
                env=litestream.environment(self.credentials), capture_output=True, text=True,
                timeout=3600, check=False,
            )
        finally:
            os.unlink(config_file)
        if result.returncode != 0:
            message = (result.stderr.strip().splitlines() or ["exit status"])[-1]
            raise RestoreError(f"litestream {args[0]} {object_path}: {message}")
        return result.stdout

    def restore(self, object_path: str, output: Path, at: datetime | None = None) -> None:
        """The database as it was at `at` (default: the newest), written to `output`."""
        output.parent.mkdir(parents=True, exist_ok=True)
        args = ["restore", "-o", str(output)]
        if at is not None:
            args += ["-timestamp", at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]
        self._run(args, output, object_path)

    def files(self, object_path: str) -> list[dict[str, Any]]:
        """The replica's LTX files, every level: [{level, min_txid, max_txid, size, ...}]."""
        out = self._run(["ltx", "-json", "-level", "all"], self.workdir / "db", object_path)
        return list(json.loads(out or "[]") or [])


@contextmanager
def storage(config: Config) -> Iterator[Storage]:
    settings = config.gateway.backup
    if not settings.endpoint:
        raise RestoreError(f"{config.path.name}: [backup] has no endpoint: nothing is"
                           " replicated, so there is nothing to restore from")
    credentials = litestream.read_credentials(settings)
    with tempfile.TemporaryDirectory(prefix="gateway-restore-") as workdir:
        yield Storage(settings, credentials, Path(workdir))


# --- status ------------------------------------------------------------------------------------


def status(config: Config) -> list[dict[str, Any]]:
    """One entry per replicated database (tenant "" is the gateway's own state/)."""
    state_dir = config.gateway.paths.state_dir
    entries: list[tuple[str, str, str, Path]] = []
    epoch = litestream.read_epoch(state_dir)
    for name in (ACCOUNTS_FILE, CATALOG_FILE):
        entries.append(("", name, litestream.state_object_path(config.gateway.backup, epoch,
                                                               name),
                        state_dir / REPLICATION_DIR / ".state" / "litestream.json"))
    for line in lineage_at(_catalog_lineages(state_dir, None), None):
        path = litestream.tenant_object_path(config.gateway.backup, line.tenant, line.lineage,
                                             line.name)
        entries.append((line.tenant, line.name, path,
                        state_dir / REPLICATION_DIR / line.tenant / "litestream.json"))
    with storage(config) as bucket:
        return [_database_status(bucket, *entry) for entry in entries]


def _database_status(bucket: Storage, tenant: str, name: str, object_path: str,
                     config_file: Path) -> dict[str, Any]:
    files = bucket.files(object_path)
    replica_txid = max((int(f["max_txid"], 16) for f in files), default=0)
    stamps = [datetime.fromisoformat(f["timestamp"]) for f in files]
    last_sync = max(stamps, default=None)
    local = local_txid(config_file, name)
    behind = max(0, local - replica_txid) if local is not None else None
    lag_s = None
    if behind == 0:
        lag_s = 0.0
    elif behind and last_sync is not None:
        lag_s = round(time.time() - last_sync.timestamp(), 1)
    return {
        "tenant": tenant, "database": name, "replica": object_path,
        "last_sync": last_sync.isoformat() if last_sync else None,
        "local_txid": local, "replica_txid": replica_txid, "behind_txids": behind,
        "lag_s": lag_s, "replica_bytes": sum(int(f["size"]) for f in files),
        "snapshots": sum(1 for f in files if f["level"] == 9),
    }


def local_txid(config_file: Path, database: str) -> int | None:
    """The newest transaction Litestream has seen locally (None: not replicating here)."""
    if not config_file.exists():
        return None
    result = subprocess.run(
        [str(litestream.binary()), "status", "-json", "-no-expand-env", "-config",
         str(config_file)], env=litestream.environment(litestream.Credentials("", "")),
        capture_output=True, text=True, timeout=60, check=False)
    try:
        rows = json.loads(result.stdout)
    except ValueError:
        return None
    for row in rows if isinstance(rows, list) else []:
        if Path(str(row.get("database", ""))).name == database and row.get("local_txid"):
            try:
                return int(str(row["local_txid"]), 16)
            except ValueError:  # "-": Litestream has not read the database yet
                continue
    return None


def _catalog_lineages(state_dir: Path, tenant: str | None) -> list[Lineage]:
    path = state_dir / CATALOG_FILE
    if not path.exists():
        return []
    catalog = Catalog(path)
    try:
        return catalog.lineages(tenant)
    finally:
        catalog.close()


# --- one tenant --------------------------------------------------------------------------------


def restore_tenant(config: Config, name: str, at: datetime | None, database: str | None
                   ) -> Path | None:
    """Put a point-in-time copy of tenant `name`'s databases in its data/ (only `database`, if
    given: the others are copied as they are now). Returns where the old data/ was kept (None:
    it had none)."""
    tenant = config.tenants.get(name)
    if tenant is None:
        raise RestoreError(f"no tenant {name!r} in {config.gateway.paths.tenants_dir}")
    state_dir = config.gateway.paths.state_dir
    lines = lineage_at(_catalog_lineages(state_dir, name), at.timestamp() if at else None)
    if database is not None:
        lines = [line for line in lines if line.name == database]
        if not lines:
            raise RestoreError(f"tenant {name!r} had no replicated database {database!r}"
                               + (f" at {at.isoformat()}" if at else ""))
    if not lines:
        raise RestoreError(f"tenant {name!r} has no replica"
                           + (f" from {at.isoformat()}" if at else ""))
    def fill(staging: Path) -> None:
        with storage(config) as bucket:
            for line in lines:
                path = litestream.tenant_object_path(config.gateway.backup, name, line.lineage,
                                                     line.name)
                bucket.restore(path, staging / line.name, at)
        for other in set(tenant.databases) - {line.name for line in lines}:
            copy_database(tenant.data_dir / other, staging / other)

    return replace_data(config, name, fill)


def replace_data(config: Config, name: str, fill: Callable[[Path], None]) -> Path | None:
    """Give tenant `name` a new data/: `fill(staging)` makes it in a folder beside the old one,
    then the catalog's lineages end (the new files start new replica folders) and two renames
    swap it in. A running Datasette (its folder bind-mounted) keeps serving the old files until
    the hot swap; the new process sees the new ones. Returns where the old data/ was kept
    (under tenants/.restored/), None if there was none; on failure nothing has changed."""
    tenant = config.tenants[name]
    staging = tenant.directory / f".{DATA_DIR}.restoring"
    _remove_tree(staging)
    staging.mkdir(mode=0o700)
    try:
        fill(staging)
    except BaseException:
        _remove_tree(staging)
        raise
    catalog = Catalog(config.gateway.paths.state_dir / CATALOG_FILE)
    try:
        catalog.end_lineages(name)
    finally:
        catalog.close()
    kept = None
    if tenant.data_dir.exists():
        kept = config.gateway.paths.tenants_dir / RESTORED_DIR / f"{name}.{_now()}"
        kept.parent.mkdir(mode=0o700, exist_ok=True)
        os.rename(tenant.data_dir, kept)
    os.rename(staging, tenant.data_dir)
    return kept


def copy_database(source: Path, destination: Path) -> None:
    """A consistent copy of a live database (SQLite's backup API)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(destination)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


# --- the whole site ----------------------------------------------------------------------------


def restore_site(config: Config, tenants_dir: Path, state_dir: Path) -> dict[str, Any] | None:
    """tenants/ and state/ as the bucket has them (both folders must be empty). None: the
    bucket has no site under [backup]'s prefix."""
    for folder in (tenants_dir, state_dir):
        if _site_entries(folder, config.gateway.paths):
            raise RestoreError(f"{folder} is not empty: a site is only restored into empty"
                               " folders")
    settings = config.gateway.backup
    started = time.monotonic()
    with storage(config) as bucket:
        epoch = _newest_epoch(bucket)
        if epoch is None:
            return None
        for folder, mode in ((tenants_dir, 0o711), (state_dir, 0o711)):
            folder.mkdir(mode=mode, parents=True, exist_ok=True)
            os.chmod(folder, mode)
        catalog_path = state_dir / CATALOG_FILE
        bucket.restore(litestream.state_object_path(settings, epoch, CATALOG_FILE), catalog_path)
        catalog = Catalog(catalog_path)
        try:
            files, lines = catalog.files(), lineage_at(catalog.lineages(), None)
            for tenant in {line.tenant for line in lines}:
                catalog.end_lineages(tenant)  # this site replicates into new folders
            catalog.start_epoch()  # and never deletes the old site's folders
        finally:
            catalog.close()
        for relative, mode, content in files:
            top, _, rest = relative.partition("/")
            _write_file(tenants_dir if top == "tenants" else state_dir, rest, content, mode)
        jobs = [(litestream.state_object_path(settings, epoch, ACCOUNTS_FILE),
                 state_dir / ACCOUNTS_FILE)]
        jobs += [(litestream.tenant_object_path(settings, line.tenant, line.lineage, line.name),
                  tenants_dir / line.tenant / DATA_DIR / line.name) for line in lines]
        for _, output in jobs:
            output.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with concurrent.futures.ThreadPoolExecutor(_PARALLEL_RESTORES) as pool:
            for future in [pool.submit(bucket.restore, path, output) for path, output in jobs]:
                future.result()
    litestream.write_epoch(state_dir, epoch + 1)
    for path in (state_dir / MASTER_KEY_FILE, state_dir / ACCOUNTS_FILE, catalog_path):
        if path.exists():
            os.chmod(path, 0o600)
    return {"tenants": sorted({line.tenant for line in lines}), "databases": len(lines),
            "epoch": epoch, "duration_s": round(time.monotonic() - started, 2)}


def _newest_epoch(bucket: Storage) -> int | None:
    epoch = 0
    while bucket.files(litestream.state_object_path(bucket.settings, epoch + 1, CATALOG_FILE)):
        epoch += 1
    return epoch or None


def is_empty_site(config: Config) -> bool:
    """No tenant and no state yet: a new machine (or a container with empty volumes)."""
    paths = config.gateway.paths
    return not _site_entries(paths.tenants_dir, paths) and not _site_entries(paths.state_dir,
                                                                            paths)


def _site_entries(folder: Path, paths: Any) -> list[str]:
    """What a folder holds, but for the run folder (sockets) and removed tenants."""
    return [entry for entry in _entries(folder)
            if folder / entry != paths.run_dir and entry not in (TRASH_DIR, RESTORED_DIR)]


def _entries(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def _write_file(root: Path, relative: str, content: bytes, mode: int) -> None:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()) or TRASH_DIR in Path(relative).parts:
        raise RestoreError(f"the catalog names a file outside the site: {relative!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o777)
    with os.fdopen(fd, "wb") as f:
        f.write(content)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _now() -> str:
    return time.strftime("%Y%m%dT%H%M%S")


def parse_time(text: str) -> datetime:
    """--at: an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise RestoreError(f"--at: {text!r} is not a time; use ISO 8601, e.g."
                           " 2026-03-01T09:30:00Z") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
