"""This machine as a cluster node: its lease, its share of the leader's work, its tenants, routes.

Keys in etcd (all under /gateway/):

    nodes/<node>        {"capacity": N, "advertise": IP, "backup": bool} on the host's lease: it
                        is alive
    leader              "<node> <lease>" on the leader's lease (lease.Election)
    placement/<tenant>  the host that runs it, written by the leader only
    endpoints/<tenant>  {"node": ..., "address": "tcp:IP:PORT"} on the host's lease, once serving
    replicas/<tenant>   {"node": ..., "databases": {db: object path}, "txids": {db: txid},
                        "previous": {...}}: where to restore it from, and a position its replica
                        holds at least (hosting.py, replicas.py)
    moves/<tenant>      a planned move in progress (moves.py)

Every node campaigns; the leader re-places whenever nodes/ changes. A host runs the tenants
placed on it and announces each one's address once it serves; an edge routes each tenant to the
address announced for it, over mutual TLS. While a tenant has no address (its host died, the
next one restores and starts it) the edge keeps its route with no backend, so the proxy holds
requests within proxy.retry_budget_s. If etcd loses quorum every read fails: nothing is applied,
so edges keep their routes and hosts their tenants until it returns.

Every node reads the same gateway.toml; tenants/ (the tenants' definitions) is kept the same
on every node from etcd (definitions.py); what a host runs comes from etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ..backend_client import BackendAddress
from ..backends import Backend, TenantRoute
from ..errors import ConfigError
from . import definitions, operate, tls
from .etcd import Etcd, EtcdUnavailable, follow
from .hosting import Hosting
from .keys import ENDPOINTS, LEADER, MOVES, NODES, PLACEMENT
from .lease import Election, Lease
from .moves import check_move, read_state
from .placement import changes, place

if TYPE_CHECKING:
    from ..runtime import Gateway

log = logging.getLogger(__name__)


class ClusterNode:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.config.gateway.cluster
        self.name = self.settings.node
        self.is_host = self.settings.role in ("host", "both")
        self.is_edge = self.settings.role in ("edge", "both")
        self.etcd = Etcd(self.settings.etcd_endpoints)
        self.lease = Lease(self.etcd, self.settings.lease_ttl_s)
        self.leading = False
        self.placement: dict[str, str] = {}
        self._placement_read = False
        self.endpoints: dict[str, str] = {}
        self._generations = itertools.count(1)
        self._tasks: list[asyncio.Future[Any]] = []
        self._leading_task: asyncio.Future[None] | None = None
        tls_dir = self.settings.tls_dir
        if tls_dir is None:  # config.load_config always resolves it
            raise ConfigError("cluster.tls_dir: not set")
        self.hosting = Hosting(self, tls.server_context(tls_dir)) if self.is_host else None
        self._client_tls = tls.client_context(tls_dir) if self.is_edge else None

    async def start(self, lease: int = 0) -> None:
        """Join: take a lease (or keep `lease`, after an upgrade), announce this host, then
        lead, host and route in the background."""
        await self.lease.start(lease)
        await self._register()
        if self.is_edge:
            for tenant in self.gateway.config.tenants.values():
                self._remote_route(tenant.name)
        self._leading_task = asyncio.ensure_future(self._lead())
        self.spawn(self._rejoin())
        self.spawn(operate.serve_requests(self))
        self.spawn(definitions.follow_definitions(self))
        if self.is_host:
            self.spawn(follow(self.etcd, PLACEMENT, self._host))
        if self.is_edge:
            self.spawn(follow(self.etcd, ENDPOINTS, self._route))
        log.info("cluster_joined", extra={"node": self.name, "role": self.settings.role,
                                          "lease": self.lease.id})

    async def _register(self) -> None:
        await operate.register_member(self)
        if self.is_host:
            await self.etcd.put(NODES + self.name, json.dumps(
                {"capacity": self.settings.capacity, "advertise": self.settings.advertise,
                 "backup": bool(self.gateway.config.gateway.backup.endpoint)}),
                lease=self.lease.id)

    async def _rejoin(self) -> None:
        """etcd let our lease expire (we could not refresh it within its TTL while etcd had
        quorum): our keys are gone and our tenants re-placed. Join again with a new lease."""
        while True:
            await self.lease.lost.wait()
            if self._leading_task is not None:
                self._leading_task.cancel()
            self.leading = False
            while True:
                try:
                    await self.lease.start()
                    await self._register()
                    break
                except EtcdUnavailable:
                    await asyncio.sleep(1)
            log.warning("cluster_rejoined", extra={"node": self.name, "lease": self.lease.id})
            if self.hosting is not None:
                self.hosting.announce_all()
            self._leading_task = asyncio.ensure_future(self._lead())

    def spawn(self, work: Awaitable[Any]) -> None:
        self._tasks.append(asyncio.ensure_future(work))
        self._tasks = [task for task in self._tasks if not task.done()]

    async def stop(self, *, revoke: bool = True) -> None:
        """Leave the cluster (`revoke`: at once; else an upgrade's new worker keeps the lease)."""
        if self._leading_task is not None:
            self._tasks.append(self._leading_task)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.hosting is not None:
            await self.hosting.stop(successor=not revoke)
        await self.lease.stop(revoke=revoke)  # revoked: our keys go now, not after the TTL
        await self.etcd.close()

    async def reconfigured(self) -> None:
        """The tenants on disk changed (gateway reload): the leader places the new set, an
        edge routes it. Without etcd this waits for the next change it hears of."""
        with contextlib.suppress(EtcdUnavailable):
            if self.leading:
                found, _ = await self.etcd.get_prefix(NODES)
                await self._place({kv.key.removeprefix(NODES): kv.value for kv in found})
            if self.is_edge:
                await self._route(self.endpoints)
        if self.hosting is not None and self._placement_read:
            await self.hosting.apply(self.placement)  # one placed here before we had read it

    # The leader ---------------------------------------------------------------------------

    async def _lead(self) -> None:
        election = Election(self.etcd, self.lease, f"{self.name} {self.lease.id}", LEADER)
        await election.campaign()
        self.leading = True
        await asyncio.gather(follow(self.etcd, NODES, self._place),
                             follow(self.etcd, MOVES, self._moves))

    async def _place(self, nodes: dict[str, str]) -> None:
        capacity = {name: int(json.loads(value)["capacity"]) for name, value in nodes.items()}
        found, _ = await self.etcd.get_prefix(PLACEMENT)
        current = {kv.key.removeprefix(PLACEMENT): kv.value for kv in found}
        decided = place(self.gateway.config.tenants, capacity, current)
        writes, deletes = changes(current, decided)
        fence = f"{self.name} {self.lease.id}"
        for tenant, host in writes.items():
            if not await self.etcd.put_if_owner(LEADER, fence, PLACEMENT + tenant, host):
                log.warning("cluster_leadership_lost", extra={"node": self.name})
                return
            log.info("cluster_tenant_placed", extra={"tenant": tenant, "host": host,
                                                     "was": current.get(tenant, "")})
        for tenant in deletes:
            await self.etcd.delete(PLACEMENT + tenant)
        if decided.unplaced:
            log.error("cluster_no_capacity", extra={"tenants": list(decided.unplaced)})

    async def _moves(self, moves: dict[str, str]) -> None:
        """Moves asked for (moves.py): place the tenant on its new host with a "moving"
        marker naming the old one (one fenced transaction), or say why not."""
        fence = f"{self.name} {self.lease.id}"
        for tenant, value in moves.items():
            move = json.loads(value)
            if move.get("state") != "asked":
                continue
            nodes, placement, _ = await read_state(self.etcd)
            reason = check_move(tenant, move["to"], nodes, placement)
            if tenant not in self.gateway.config.tenants:
                reason = f"no tenant {tenant!r} on the leader ({self.name})"
            if reason is not None:
                log.warning("cluster_move_refused", extra={"tenant": tenant, "reason": reason})
                await self.etcd.put(MOVES + tenant, json.dumps(
                    {**move, "state": "refused", "reason": reason}))
                continue
            moving = {"to": move["to"], "from": placement[tenant], "state": "moving"}
            if not await self.etcd.put_all_if_owner(LEADER, fence, {
                    PLACEMENT + tenant: move["to"], MOVES + tenant: json.dumps(moving)}):
                log.warning("cluster_leadership_lost", extra={"node": self.name})
                return
            log.info("cluster_move_started", extra={"tenant": tenant, **moving})

    # A host -------------------------------------------------------------------------------

    async def _host(self, placement: dict[str, str]) -> None:
        self.placement = placement
        self._placement_read = True
        if self.hosting is not None:
            await self.hosting.apply(placement)

    # An edge ------------------------------------------------------------------------------

    def hold_route(self, name: str) -> None:
        """This node stops serving `name` itself but goes on routing it: a new route with no
        backend, where requests wait until its next host is announced (in-flight ones finish
        on the old route)."""
        if self.is_edge:
            self.gateway.routes.pop(name, None)
            self._remote_route(name)

    def _remote_route(self, name: str) -> TenantRoute | None:
        """The route for a tenant served by a host elsewhere (None: it runs on this node)."""
        if self.hosting is not None and name in self.hosting.doors:
            return None
        supervisor = self.gateway.supervisors.get(name)
        if supervisor is not None and self.gateway.routes.get(name) is supervisor.route:
            return None  # its door is being opened (or an upgrade's new worker adopted it)
        route = self.gateway.routes.get(name)
        if route is None:
            config = self.gateway.config.tenants.get(name)
            if config is None:
                return None
            proxy = self.gateway.config.gateway.proxy
            route = TenantRoute(config, proxy.max_connections_per_tenant)
            route.state = "restarting"
            self.gateway.routes[name] = route
        return route

    async def _route(self, endpoints: dict[str, str]) -> None:
        self.endpoints = endpoints
        proxy = self.gateway.config.gateway.proxy
        for name in set(self.gateway.routes) - set(self.gateway.config.tenants):
            if name not in self.gateway.supervisors:  # removed from tenants/: no such site
                gone = self.gateway.routes.pop(name)
                if gone.backend is not None:
                    self.spawn(gone.backend.drain(proxy.drain_timeout_s))
        for name in self.gateway.config.tenants:
            route = self._remote_route(name)
            if route is None:
                continue
            address = json.loads(endpoints[name])["address"] if name in endpoints else None
            current = route.backend
            if current is not None and str(current.address) == address:
                continue
            if address is None:
                if current is not None:  # its host is gone or moving it: hold requests
                    route.withdraw(current, "restarting")  # until the next one serves it
                    self.spawn(current.drain(proxy.drain_timeout_s))
                continue
            backend = Backend(BackendAddress.parse(address), generation=next(self._generations),
                              connect_timeout=proxy.connect_timeout_s, tls=self._client_tls)
            previous = route.publish(backend)
            log.info("cluster_route_changed", extra={"tenant": name, "address": address})
            if previous is not None:
                self.spawn(previous.drain(proxy.drain_timeout_s))

    def status(self) -> dict[str, Any]:
        return {"node": self.name, "role": self.settings.role, "leader": self.leading,
                "lease": self.lease.id, "placement": self.placement,
                "endpoints": {t: json.loads(v)["address"] for t, v in self.endpoints.items()},
                "hosting": sorted(self.hosting.doors) if self.hosting is not None else []}
