"""A tenant's replica, found and restored across hosts: how a tenant moves to another machine.

Each host replicates its tenants with Litestream ([backup]) under a bucket prefix of its own
(lineage numbers come from each host's catalog, so hosts must not share a prefix). Once a tenant
serves, its host records in etcd where the tenant's databases are replicated
(/gateway/replicas/<tenant>, not on a lease: it must outlive the host). A host the tenant is
placed on next restores from there before starting it; at most [backup].sync_interval_s of the
latest writes is lost with a dead host.
"""

from __future__ import annotations

import os
import shutil
import time

from ..backup import litestream
from ..backup.catalog import CATALOG_FILE, Catalog, lineage_at
from ..backup.restore import RESTORED_DIR, storage
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


def restore_replicas(config: Config, name: str, paths: dict[str, str]) -> None:
    """Replace tenant `name`'s data/ with its replicas (the old folder kept in .restored/)."""
    tenant = config.tenants[name]
    staging = tenant.directory / f".{DATA_DIR}.restoring"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        with storage(config) as bucket:
            for database, object_path in paths.items():
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
