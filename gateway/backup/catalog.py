"""state/backup.db: which database is replicated where, and the small files a restore needs.

It is itself replicated with the accounts database (see replicator.py), so that a new machine
can find everything from the bucket alone:

    databases   tenant, name, lineage, added_at, removed_at: one row per replica folder
                (litestream.tenant_object_path); removed_at is set when the database or its
                tenant goes away, or a restore starts a new lineage.
    removals    tenant, removed_at: tenants removed from this site. Their replica folders
                (the ones this site wrote) are deleted `backup.retention_h` after that
                (`expired`); nothing else is ever deleted by the gateway.
    site        key, value: `epoch_started_at`, when a `restore --all` made this site (folders
                from before belong to the site it came from, which may still run).
    files       the gateway's key and every tenant's operator files (tenant.toml, metadata,
                plugins/): what is not a database but is needed to serve the site again.

Only the gateway's user (root) reads or writes it: it holds the gateway's key.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config import DATA_DIR, PLUGINS_DIR, TENANT_SETTINGS_FILE, TenantConfig

CATALOG_FILE = "backup.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS databases (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    lineage INTEGER NOT NULL,
    added_at REAL NOT NULL,
    removed_at REAL,
    PRIMARY KEY (tenant, name, lineage)
);
CREATE TABLE IF NOT EXISTS removals (
    tenant TEXT PRIMARY KEY,
    removed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS site (
    key TEXT PRIMARY KEY,
    value
);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    mode INTEGER NOT NULL,
    content BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Lineage:
    tenant: str
    name: str
    lineage: int
    added_at: float
    removed_at: float | None


class Catalog:
    def __init__(self, path: Path) -> None:
        new = not path.exists()
        self.connection = sqlite3.connect(path, timeout=10, isolation_level=None)
        if new:
            os.chmod(path, 0o600)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.executescript(_SCHEMA)

    def close(self) -> None:
        self.connection.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield self.connection
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")

    def track_tenant(self, tenant: TenantConfig) -> dict[str, int]:
        """Record the tenant's databases and files; return each database's current lineage."""
        now = time.time()
        with self._transaction() as db:
            current = dict(db.execute(
                "SELECT name, lineage FROM databases WHERE tenant = ? AND removed_at IS NULL",
                (tenant.name,)).fetchall())
            for name in set(current) - set(tenant.databases):
                db.execute("UPDATE databases SET removed_at = ? WHERE tenant = ? AND name = ?"
                           " AND removed_at IS NULL", (now, tenant.name, name))
            for name in tenant.databases:
                if name not in current:
                    (last,) = db.execute("SELECT max(lineage) FROM databases WHERE tenant = ?"
                                         " AND name = ?", (tenant.name, name)).fetchone()
                    current[name] = (last or 0) + 1
                    db.execute("INSERT INTO databases VALUES (?, ?, ?, ?, NULL)",
                               (tenant.name, name, current[name], now))
            files = _tenant_files(tenant)
            for path, mode, content in files:
                db.execute("INSERT INTO files VALUES (?, ?, ?) ON CONFLICT (path) DO UPDATE"
                           " SET mode = excluded.mode, content = excluded.content"
                           " WHERE content != excluded.content OR mode != excluded.mode",
                           (path, mode, content))
            db.execute("DELETE FROM files WHERE path LIKE ? AND path NOT IN (SELECT value FROM"
                       " json_each(?))", (f"tenants/{tenant.name}/%",
                                          json.dumps([path for path, _, _ in files])))
        return {name: current[name] for name in tenant.databases}

    def end_lineages(self, tenant: str) -> None:
        """The tenant was removed, or restored: its next databases start new lineages."""
        with self._transaction() as db:
            db.execute("UPDATE databases SET removed_at = ? WHERE tenant = ? AND"
                       " removed_at IS NULL", (time.time(), tenant))

    def remove_tenant(self, tenant: str) -> None:
        """The tenant is gone from this site: its lineages end, its replica folders expire
        after the retention time, and a restored site will not have its files."""
        now = time.time()
        with self._transaction() as db:
            db.execute("UPDATE databases SET removed_at = ? WHERE tenant = ? AND"
                       " removed_at IS NULL", (now, tenant))
            db.execute("INSERT OR REPLACE INTO removals VALUES (?, ?)", (tenant, now))
            db.execute("DELETE FROM files WHERE path LIKE ?", (f"tenants/{tenant}/%",))

    def expired(self, cutoff: float) -> list[Lineage]:
        """The replica folders of tenants removed before `cutoff` that this site wrote."""
        return [Lineage(*row) for row in self.connection.execute(
            "SELECT d.* FROM databases d JOIN removals r USING (tenant) WHERE r.removed_at < ?"
            " AND d.removed_at IS NOT NULL AND d.removed_at <= r.removed_at"
            " AND d.added_at >= coalesce((SELECT value FROM site WHERE key ="
            " 'epoch_started_at'), 0) ORDER BY d.tenant, d.name, d.lineage", (cutoff,))]

    def drop_lineage(self, line: Lineage) -> None:
        """Its replica folder was deleted; the removal is done when nothing is left of it."""
        with self._transaction() as db:
            db.execute("DELETE FROM databases WHERE tenant = ? AND name = ? AND lineage = ?",
                       (line.tenant, line.name, line.lineage))
            db.execute("DELETE FROM removals WHERE tenant = ? AND NOT EXISTS (SELECT 1 FROM"
                       " databases WHERE tenant = ? AND removed_at IS NOT NULL AND removed_at"
                       " <= removals.removed_at)", (line.tenant, line.tenant))

    def start_epoch(self) -> None:
        """A `restore --all` made this site from the catalog of another."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO site VALUES ('epoch_started_at', ?)",
                       (time.time(),))

    def put_file(self, path: str, content: bytes, mode: int) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?)", (path, mode, content))

    def lineages(self, tenant: str | None = None) -> list[Lineage]:
        query = "SELECT * FROM databases"
        args: tuple[str, ...] = ()
        if tenant is not None:
            query, args = query + " WHERE tenant = ?", (tenant,)
        rows = self.connection.execute(query + " ORDER BY tenant, name, lineage", args)
        return [Lineage(*row) for row in rows]

    def files(self) -> list[tuple[str, int, bytes]]:
        return list(self.connection.execute("SELECT path, mode, content FROM files"))


def lineage_at(lineages: list[Lineage], when: float | None) -> list[Lineage]:
    """The replica folders that held the databases at `when` (None: the current ones)."""
    if when is None:
        return [line for line in lineages if line.removed_at is None]
    return [line for line in lineages
            if line.added_at <= when and (line.removed_at is None or line.removed_at > when)]


def _tenant_files(tenant: TenantConfig) -> list[tuple[str, int, bytes]]:
    """The operator's files in the tenant's folder (not data/: that is the databases)."""
    found = []
    directory = tenant.directory
    candidates = [directory / TENANT_SETTINGS_FILE]
    if tenant.metadata_file:
        candidates.append(directory / tenant.metadata_file)
    if tenant.has_plugins:
        candidates += sorted(p for p in (directory / PLUGINS_DIR).rglob("*") if p.is_file())
    for path in candidates:
        relative = path.relative_to(directory)
        if relative.parts[0] == DATA_DIR or not path.is_file():
            continue
        found.append((f"tenants/{tenant.name}/{relative}", path.stat().st_mode & 0o777,
                      path.read_bytes()))
    return found

