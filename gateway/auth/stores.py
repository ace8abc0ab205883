"""Which accounts store a gateway opens: its own SQLite file in the state folder (store.py) or,
in a cluster, its replica of the accounts every edge shares (cluster/accounts.py, imported only
then: one machine never loads the cluster's code).
"""

from __future__ import annotations

from ..config import Config
from .store import ACCOUNTS_FILE, AccountStore


def open_store(config: Config) -> AccountStore:
    path = config.gateway.paths.state_dir / ACCOUNTS_FILE
    endpoints = config.gateway.cluster.etcd_endpoints
    if not endpoints:
        return AccountStore(path)
    from ..cluster.accounts import ReplicatedStore

    return ReplicatedStore(path, endpoints)
