"""Beyond one machine (issue 17): edges and tenant hosts coordinated through etcd.

Nothing here runs unless gateway.toml has a [cluster] table; one machine is unchanged.

    etcd.py     etcd's v3 API over its JSON gateway (httpx): KV, txn, leases, watches
    lease.py    a node's lease kept alive; the leader election on it
"""
