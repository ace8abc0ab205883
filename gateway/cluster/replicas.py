"""A tenant's replica, found and restored across hosts: how a tenant moves to another machine.

Each host replicates its tenants with Litestream ([backup]) under a bucket prefix of its own
(lineage numbers come from each host's catalog, so hosts must not share a prefix). Once a tenant
serves, its host records in etcd where the tenant's databases are replicated
(/gateway/replicas/<tenant>, not on a lease: it must outlive the host). A host the tenant is
placed on next restores from there before starting it; at most [backup].sync_interval_s of the
latest writes is lost with a dead host.

The record also says a position the replica holds (per database, the last transaction in the
bucket once it had every local one: `caught_up`), recorded once that is so and, on a planned
move, after the tenant stopped. The next host checks the replica holds at least that much before
restoring, so it never starts from a copy older than the one recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..backup import litestream
from ..backup.catalog import CATALOG_FILE, Catalog, lineage_at
from ..backup.replicator import REPLICATION_DIR
from ..backup.restore import (
    RestoreError,
    Storage,
    copy_database,
    local_txid,
    replace_data,
    storage,
)
from ..config import Config


def replica_paths(config: Config, tenant: str) -> dict[str, str]:
    """database -> object path of its current replica, from this host's catalog."""
    catalog = Catalog(config.gateway.paths.state_dir / CATALOG_FILE)
    try:
        lines = lineage_at(catalog.lineages(tenant), None)
    finally:
        catalog.close()
    return {line.name: litestream.tenant_object_path(config.gateway.backup, tenant,
                                                     line.lineage, line.name)
            for line in lines}


def _replica_txid(bucket: Storage, object_path: str) -> int:
    """The last transaction the replica holds (0: none)."""
    return max((int(f["max_txid"], 16) for f in bucket.files(object_path)), default=0)


def caught_up(config: Config, name: str, paths: dict[str, str]) -> dict[str, int] | None:
    """database -> the replica's last transaction, once each replica has every transaction
    Litestream has seen locally (None: not yet, or Litestream has not looked yet)."""
    litestream_config = (config.gateway.paths.state_dir / REPLICATION_DIR / name
                         / "litestream.json")
    local = {database: local_txid(litestream_config, database) for database in paths}
    if any(txid is None for txid in local.values()):
        return None
    with storage(config) as bucket:
        replica = {database: _replica_txid(bucket, path) for database, path in paths.items()}
    if any(replica[database] < (local[database] or 0) for database in paths):
        return None
    return replica


def check_not_reused(config: Config, name: str, record: dict[str, Any]) -> None:
    """Raise RestoreError if `record` names replicas under this host's own [backup] prefix
    that its catalog never made: this host was rebuilt with a new state/ and its old prefix
    (after a whole cluster was restored, say). Its catalog would number the tenant's new
    replica folders from 1 again, into the ones it is about to restore from."""
    own = litestream.object_path(config.gateway.backup, "tenants", name) + "/"
    named = {path for source in (record, record.get("previous") or {})
             for path in source.get("databases", {}).values() if path.startswith(own)}
    if not named:
        return
    catalog_path = config.gateway.paths.state_dir / CATALOG_FILE
    made: set[str] = set()
    if catalog_path.exists():
        catalog = Catalog(catalog_path)
        try:
            made = {litestream.tenant_object_path(config.gateway.backup, name, line.lineage,
                                                  line.name)
                    for line in catalog.lineages(name)}
        finally:
            catalog.close()
    if named - made:
        raise RestoreError(
            f"{name}'s replica {sorted(named - made)[0]} is under this host's [backup] prefix"
            f" {config.gateway.backup.prefix!r}, but this host's state/ did not make it (a host"
            " rebuilt under its old name?): its new replicas would overwrite it. Give this host"
            " a [backup] prefix no host used before, then restart it")


def restore_replicas(config: Config, name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Replace tenant `name`'s data/ with the replicas `record` names (the old folder kept in
    .restored/). Returns what was restored, as a record ({"databases": {db: path}, "txids":
    {db: txid it held}}): the fallback of the next one. Each replica must hold at
    least the transaction the record has for it, else RestoreError. A database whose replica
    has nothing yet (its host died before a first sync) comes from the record's `previous`;
    one no replica has anything of (nor a recorded position) is the local file as it is."""
    check_not_reused(config, name, record)
    tenant = config.tenants[name]
    used: dict[str, Any] = {"databases": {}, "txids": {}}
    previous = record.get("previous") or {}

    def fill(staging: Path) -> None:
        with storage(config) as bucket:
            for database in sorted({*record["databases"], *previous.get("databases", {})}):
                held = 0
                for source in (record, previous):
                    object_path = source.get("databases", {}).get(database)
                    if object_path and (held := _replica_txid(bucket, object_path)):
                        break
                if not held:  # no replica has it yet: the local file is all there is
                    if any(int(r.get("txids", {}).get(database, 0)) for r in (record, previous)):
                        raise RestoreError(f"the replica of {name}/{database} is empty, but its"
                                           " last host recorded transactions in it: not"
                                           " restored")
                    if (tenant.data_dir / database).exists():
                        copy_database(tenant.data_dir / database, staging / database)
                    continue
                wanted = int(source.get("txids", {}).get(database, 0))
                if held < wanted:
                    raise RestoreError(
                        f"the replica of {name}/{database} ({object_path}) ends at transaction"
                        f" {held:x}, older than the {wanted:x} its last host recorded: not"
                        " restored from it")
                bucket.restore(object_path, staging / database)
                used["databases"][database], used["txids"][database] = object_path, held

    replace_data(config, name, fill)  # this host replicates the restored files anew
    return used
