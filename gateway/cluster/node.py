"""This machine as a cluster node: its lease, its share of the leader's work, its tenants, routes.

Keys in etcd (all under /gateway/):

    nodes/<node>        {"capacity": N, "advertise": IP} on the host's lease: it is alive
    leader              "<node> <lease>" on the leader's lease (lease.Election)
    placement/<tenant>  the host that runs it, written by the leader only
    endpoints/<tenant>  {"node": ..., "address": "tcp:IP:PORT"} on the host's lease, once serving
    replicas/<tenant>   {"node": ..., "databases": {db: object path}}: where to restore it from

Every node campaigns; the leader re-places whenever nodes/ changes. A host runs the tenants
placed on it and announces each one's address once it serves; an edge routes each tenant to the
address announced for it, over mutual TLS. While a tenant has no address (its host died, the
next one restores and starts it) the edge keeps its route with no backend, so the proxy holds
requests within proxy.retry_budget_s. If etcd loses quorum every read fails: nothing is applied,
so edges keep their routes and hosts their tenants until it returns.

Every node reads the same gateway.toml and tenants/ (the tenants' definitions); what a host runs
comes from etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..backend_client import BackendAddress
from ..backends import Backend, TenantRoute
from ..errors import ConfigError, GatewayError
from . import operate, replicas, tls
from .etcd import Etcd, EtcdUnavailable
from .forward import TenantDoor
from .lease import Election, Lease
from .placement import changes, place

if TYPE_CHECKING:
    from ..runtime import Gateway

log = logging.getLogger(__name__)

ROOT = "/gateway/"
NODES, PLACEMENT, ENDPOINTS = ROOT + "nodes/", ROOT + "placement/", ROOT + "endpoints/"
REPLICAS = ROOT + "replicas/"
LEADER = ROOT + "leader"


async def follow(etcd: Etcd, prefix: str,
                 apply: Callable[[dict[str, str]], Awaitable[None]]) -> None:
    """Call `apply` with everything under `prefix` now and after every change, for ever. While
    etcd is unreachable nothing is applied (what runs stays as it is)."""
    while True:
        try:
            found, revision = await etcd.get_prefix(prefix)
            await apply({kv.key.removeprefix(prefix): kv.value for kv in found})
            async for _events in etcd.watch_prefix(prefix, revision + 1):
                found, revision = await etcd.get_prefix(prefix)
                await apply({kv.key.removeprefix(prefix): kv.value for kv in found})
        except EtcdUnavailable as exc:
            log.warning("cluster_etcd_unavailable", extra={"prefix": prefix, "error": str(exc)})
            await asyncio.sleep(1)
        except Exception:  # a bug or an OS error must not end the node's part: try again
            log.exception("cluster_apply_failed", extra={"prefix": prefix})
            await asyncio.sleep(1)


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
        self.doors: dict[str, TenantDoor] = {}
        self.placement: dict[str, str] = {}
        self.endpoints: dict[str, str] = {}
        self._generations = itertools.count(1)
        self._tasks: list[asyncio.Future[Any]] = []
        self._leading_task: asyncio.Future[None] | None = None
        tls_dir = self.settings.tls_dir
        if tls_dir is None:  # config.load_config always resolves it
            raise ConfigError("cluster.tls_dir: not set")
        self._server_tls = tls.server_context(tls_dir) if self.is_host else None
        self._client_tls = tls.client_context(tls_dir) if self.is_edge else None

    async def start(self) -> None:
        """Join: take a lease, announce this host, then lead, host and route in the background."""
        await self.lease.start()
        await self._register()
        if self.is_edge:
            for tenant in self.gateway.config.tenants.values():
                self._remote_route(tenant.name)
        self._leading_task = asyncio.ensure_future(self._lead())
        self._spawn(self._rejoin())
        self._spawn(operate.serve_requests(self))
        if self.is_host:
            self._spawn(follow(self.etcd, PLACEMENT, self._host))
        if self.is_edge:
            self._spawn(follow(self.etcd, ENDPOINTS, self._route))
        log.info("cluster_joined", extra={"node": self.name, "role": self.settings.role,
                                          "lease": self.lease.id})

    async def _register(self) -> None:
        await operate.register_member(self)
        if self.is_host:
            await self.etcd.put(NODES + self.name, json.dumps(
                {"capacity": self.settings.capacity, "advertise": self.settings.advertise}),
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
            for name, door in self.doors.items():
                self._spawn(self._announce(name, door.route, door))
            self._leading_task = asyncio.ensure_future(self._lead())

    def _spawn(self, work: Awaitable[Any]) -> None:
        self._tasks.append(asyncio.ensure_future(work))
        self._tasks = [task for task in self._tasks if not task.done()]

    async def stop(self) -> None:
        if self._leading_task is not None:
            self._tasks.append(self._leading_task)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for door in self.doors.values():
            await door.stop()
        await self.lease.stop()  # revoked: our keys go now, not after the TTL
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

    # The leader ---------------------------------------------------------------------------

    async def _lead(self) -> None:
        election = Election(self.etcd, self.lease, f"{self.name} {self.lease.id}", LEADER)
        await election.campaign()
        self.leading = True
        await follow(self.etcd, NODES, self._place)

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

    # A host -------------------------------------------------------------------------------

    async def _host(self, placement: dict[str, str]) -> None:
        if self._server_tls is None:
            return  # not a host
        self.placement = placement
        mine = {t for t, host in placement.items() if host == self.name}
        for name in sorted(set(self.doors) - mine):
            await self.etcd.delete(ENDPOINTS + name)
            await self.doors.pop(name).stop()
            self.gateway.remove_tenant(name)
            log.info("cluster_tenant_released", extra={"tenant": name})
        for name in sorted(mine - set(self.doors)):
            tenant = self.gateway.config.tenants.get(name)
            if tenant is None:
                log.error("cluster_tenant_unknown", extra={"tenant": name})
                continue
            await self._restore(name)
            route = self.gateway.add_tenant(tenant)
            door = TenantDoor(route, self.settings.advertise, self._server_tls)
            await door.start()
            self.doors[name] = door
            self._spawn(self._announce(name, route, door))

    async def _restore(self, name: str) -> None:
        """The tenant ran on another host: start from its replica (replicas.py)."""
        config = self.gateway.config
        if not config.gateway.backup.endpoint:
            return
        recorded = await self.etcd.get(REPLICAS + name)
        if recorded is None:
            return
        replica = json.loads(recorded.value)
        if replica["node"] == self.name:
            return  # ours: the local files are as new as the replica, or newer
        started = time.monotonic()
        try:
            await asyncio.to_thread(replicas.restore_replicas, config, name,
                                    replica["databases"])
        except GatewayError as exc:  # serve what this host has rather than nothing
            log.error("cluster_restore_failed", extra={"tenant": name, "error": str(exc)})
            return
        log.info("cluster_tenant_restored", extra={
            "tenant": name, "from": replica["node"],
            "duration_s": round(time.monotonic() - started, 2)})

    async def _record_replica(self, name: str) -> None:
        """Where this host replicates the tenant, for the host it moves to next."""
        config = self.gateway.config
        if not config.gateway.backup.endpoint:
            return
        for _ in range(50):  # replication starts just after the tenant (Gateway.add_tenant)
            paths = await asyncio.to_thread(replicas.replica_paths, config, name)
            if paths:
                with contextlib.suppress(EtcdUnavailable):  # the next start records it
                    await self.etcd.put(REPLICAS + name,
                                        json.dumps({"node": self.name, "databases": paths}))
                return
            await asyncio.sleep(0.2)

    async def _announce(self, name: str, route: TenantRoute, door: TenantDoor) -> None:
        """Once the tenant serves, tell the edges where (on this host's lease)."""
        while route.backend is None and self.doors.get(name) is door:
            await route.wait_for_change(5)
        if self.doors.get(name) is not door:
            return
        value = json.dumps({"node": self.name, "address": door.address})
        while True:
            try:
                await self.etcd.put(ENDPOINTS + name, value, lease=self.lease.id)
                break
            except EtcdUnavailable:
                await asyncio.sleep(1)
        log.info("cluster_tenant_announced", extra={"tenant": name, "address": door.address})
        await self._record_replica(name)

    # An edge ------------------------------------------------------------------------------

    def _remote_route(self, name: str) -> TenantRoute | None:
        """The route for a tenant served by a host elsewhere (None: it runs on this node)."""
        if name in self.doors:
            return None
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
                    self._spawn(gone.backend.drain(proxy.drain_timeout_s))
        for name in self.gateway.config.tenants:
            route = self._remote_route(name)
            if route is None:
                continue
            address = json.loads(endpoints[name])["address"] if name in endpoints else None
            current = route.backend
            if current is not None and str(current.address) == address:
                continue
            if address is None:
                if current is not None:  # its host is gone: hold requests until the next one
                    route.withdraw(current, "restarting")
                    current.pool.close()
                continue
            backend = Backend(BackendAddress.parse(address), generation=next(self._generations),
                              connect_timeout=proxy.connect_timeout_s, tls=self._client_tls)
            previous = route.publish(backend)
            log.info("cluster_route_changed", extra={"tenant": name, "address": address})
            if previous is not None:
                self._spawn(previous.drain(proxy.drain_timeout_s))

    def status(self) -> dict[str, Any]:
        return {"node": self.name, "role": self.settings.role, "leader": self.leading,
                "lease": self.lease.id, "placement": self.placement,
                "endpoints": {t: json.loads(v)["address"] for t, v in self.endpoints.items()},
                "hosting": sorted(self.doors)}
