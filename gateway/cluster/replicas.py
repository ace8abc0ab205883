"""A tenant's replica, found and restored across hosts: how a tenant moves to another machine.

Each host replicates its tenants with Litestream ([backup]) under a bucket prefix of its own
(lineage numbers come from each host's catalog, so hosts must not share a prefix). Once a tenant
serves, its host records in etcd where the tenant's databases are replicated
(/gateway/replicas/<tenant>, not on a lease: it must outlive the host). A host the tenant is
placed on next restores from there before starting it; at most [backup].sync_interval_s of the
latest writes is lost with a dead host.

A planned move also records the replica's position (per database, the last transaction in the
bucket once it had every local one: `caught_up`). The next host checks the replica holds at
least that much before restoring, so it never starts from a copy older than the one recorded.
"""

from __future__ import annotations

import os
import shutil
import time

from ..backup import litestream
from ..backup.catalog import CATALOG_FILE, Catalog, lineage_at
from ..backup.replicator import REPLICATION_DIR
from ..backup.restore import RESTORED_DIR, RestoreError, Storage, _local_txid, storage
from ..config import DATA_DIR, Config


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
    local = {database: _local_txid(litestream_config, database) for database in paths}
    if any(txid is None for txid in local.values()):
        return None
    with storage(config) as bucket:
        replica = {database: _replica_txid(bucket, path) for database, path in paths.items()}
    if any(replica[database] < (local[database] or 0) for database in paths):
        return None
    return replica


def restore_replicas(config: Config, name: str, paths: dict[str, str],
                     txids: dict[str, int]) -> None:
    """Replace tenant `name`'s data/ with its replicas (the old folder kept in .restored/).
    Each must hold at least the transaction `txids` records for it, else RestoreError."""
    tenant = config.tenants[name]
    staging = tenant.directory / f".{DATA_DIR}.restoring"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        with storage(config) as bucket:
            for database, object_path in paths.items():
                held, wanted = _replica_txid(bucket, object_path), txids.get(database, 0)
                if held < wanted:
                    raise RestoreError(
                        f"the replica of {name}/{database} ({object_path}) ends at transaction"
                        f" {held:x}, older than the {wanted:x} its last host recorded: not"
                        " restored from it")
                bucket.restore(object_path, staging / database)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    catalog = Catalog(config.gateway.paths.state_dir / CATALOG_FILE)
    try:
        catalog.end_lineages(name)  # this host replicates the restored files anew
    finally:
        catalog.close()
    if tenant.data_dir.exists():
        kept = config.gateway.paths.tenants_dir / RESTORED_DIR / f"{name}.{time.time():.0f}"
        kept.parent.mkdir(mode=0o700, exist_ok=True)
        os.rename(tenant.data_dir, kept)
    os.rename(staging, tenant.data_dir)
