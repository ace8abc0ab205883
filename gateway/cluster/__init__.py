"""Beyond one machine (issue 17): edges and tenant hosts coordinated through etcd.

Nothing here runs unless gateway.toml has a [cluster] table; one machine is unchanged
(runtime.Gateway makes a ClusterNode only then).

    etcd.py       etcd's v3 API over its JSON gateway (httpx): KV, txn, leases, watches
    lease.py      a node's lease kept alive; the leader election on it
    placement.py  which host runs which tenant (pure)
    keys.py       the keys in etcd
    node.py       this machine as a node: membership, the leader's placing and moves, routing
    hosting.py    a host's tenants taken over (restored, started, announced) and given up
    moves.py      a planned move of a tenant (`gateway tenant move`)
    forward.py    a host's mutual-TLS door to one tenant's Unix socket
    replicas.py   where a tenant's replica is, and restoring it on its next host
    tls.py        the cluster CA, node certificates, the mutual-TLS contexts
    accounts.py   the accounts database every edge shares: a replica per node, writes ordered
                  by a log in etcd
    throttle.py   sign-in throttling counted by every edge together
    etcd_thread.py  etcd's client on a thread of its own, for the synchronous accounts store
"""
