"""A host's share of the cluster: the tenants placed on it, taken over and given up.

Taking a tenant over (each tenant its own task, so one slow restore holds no other back):

1. a planned move to here waits for the old host's hand-off (moves.py);
2. the tenant is restored from the replica recorded in replicas/<tenant> (replicas.py), unless
   that record is this host's own. A restore that fails is retried with backoff and the tenant
   stays unavailable meanwhile (`cluster_restore_failed`): a stale local copy is never served;
3. it starts; once it serves, this host claims the record (its own replica's paths, the record
   it restored from kept as `previous` until its own replica has a copy), then announces the
   tenant's address on its lease. So a host serves a tenant only while etcd points at where its
   writes go, and the "ours: no restore" shortcut is only taken by the host that served last;
4. once its replica has every write seen so far, the record gets that position (`txids`).

Giving one up: the endpoint is withdrawn (edges hold requests), in-flight requests finish, the
process stops; on a planned move the host first waits (still serving) until its replica has
every write so far, then after the stop until it has the last ones, records that position, and
marks the move "synced"; then its Litestream stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from ..backends import TenantRoute
from ..config import load_tenant
from ..errors import GatewayError
from . import replicas
from .etcd import EtcdUnavailable
from .forward import TenantDoor
from .keys import ENDPOINTS, MOVES, NODES, REPLICAS

if TYPE_CHECKING:
    import ssl

    from ..config import Config, TenantConfig
    from .node import ClusterNode

log = logging.getLogger(__name__)

_POLL_S = 0.1
_RECORD_TRIES = 240  # looks 0.5 s apart (and each takes a while): a first snapshot is slow


class Hosting:
    def __init__(self, node: ClusterNode, tls: ssl.SSLContext) -> None:
        self.node = node
        self.etcd = node.etcd
        self.name = node.name
        self.tls = tls
        self.doors: dict[str, TenantDoor] = {}  # tenants this host serves
        self._taking: dict[str, asyncio.Task[None]] = {}  # being restored and started here
        self._releasing: dict[str, asyncio.Task[None]] = {}  # being stopped here

    @property
    def config(self) -> Config:
        return self.node.gateway.config

    async def apply(self, placement: dict[str, str]) -> None:
        """Take the tenants newly placed here, give up those placed elsewhere."""
        mine = {t for t, host in placement.items() if host == self.name}
        for name in sorted((set(self.doors) | set(self._taking)) - mine):
            taking = self._taking.pop(name, None)
            if taking is not None:
                taking.cancel()
            if name in self.doors and name not in self._releasing:
                self._releasing[name] = asyncio.ensure_future(self._release(name))
        for name in sorted(set(self.node.gateway.supervisors) - mine - set(self.doors)
                           - set(self._taking) - set(self._releasing)):
            # adopted by an upgrade's new worker, but placed elsewhere meanwhile
            self.node.spawn(self._stop_adopted(name))
        for name in sorted(mine - (set(self.doors) - set(self._releasing)) - set(self._taking)):
            tenant = self.config.tenants.get(name)
            if tenant is None:
                log.error("cluster_tenant_unknown", extra={"tenant": name})
                continue
            self._taking[name] = asyncio.ensure_future(self._take(tenant))

    async def _stop_adopted(self, name: str) -> None:
        await self.node.gateway.remove_tenant(name)
        await self.node.gateway.track_backups()
        log.info("cluster_tenant_released", extra={"tenant": name})

    def announce_all(self) -> None:
        """After a new lease: every tenant served here announced on it again."""
        for name, door in self.doors.items():
            self.node.spawn(self._announce(name, door, None, claim=False))

    async def stop(self, *, successor: bool = False) -> None:
        """Stop taking and giving up tenants, close the doors. With a `successor` (an upgrade's
        new worker, which adopted the tenants and opens doors of its own): first wait until
        it has announced each tenant, so edges have moved on, and let open connections end."""
        tasks = [*self._taking.values(), *self._releasing.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        drain_s = self.config.gateway.proxy.drain_timeout_s
        if successor:
            with contextlib.suppress(TimeoutError, EtcdUnavailable):
                async with asyncio.timeout(drain_s):
                    await self._wait_for_successor()
        await asyncio.gather(*(door.close(drain_s if successor else 0)
                               for door in self.doors.values()))

    async def _wait_for_successor(self) -> None:
        ours = {name: door.address for name, door in self.doors.items()}
        while ours:
            found, _ = await self.etcd.get_prefix(ENDPOINTS)
            announced = {kv.key.removeprefix(ENDPOINTS): json.loads(kv.value)["address"]
                         for kv in found}
            ours = {name: address for name, address in ours.items()
                    if announced.get(name) == address}
            await asyncio.sleep(_POLL_S)

    # Taking over --------------------------------------------------------------------------

    async def _take(self, tenant: TenantConfig) -> None:
        name = tenant.name
        log.info("cluster_tenant_taking", extra={"tenant": name})
        releasing = self._releasing.get(name)
        if releasing is not None:  # placed back here while it was leaving
            await releasing
        # Already running here: an upgrade's new worker adopted it from the old one, which
        # served it (no restore; its replica record is claimed already).
        adopted = name in self.node.gateway.supervisors
        restored = None if adopted else await self._restore_until_done(name)
        # Its databases as data/ holds them now: the restore may have brought some that were not
        # there when the configuration was read (a host that never ran it had none).
        tenant = await asyncio.to_thread(load_tenant, tenant.directory,
                                         self.config.gateway.tenant_defaults)
        held = self.node.gateway.routes.get(name)  # this node routed it elsewhere till now
        route = held if adopted and held is not None else self.node.gateway.add_tenant(tenant)
        door = TenantDoor(route, self.node.settings.advertise, self.tls)
        await door.start()
        self.doors[name] = door
        self._taking.pop(name, None)
        self.node.spawn(self._announce(name, door, restored, held=held, claim=not adopted))

    async def _restore_until_done(self, name: str) -> dict[str, Any] | None:
        """Wait for the old host's hand-off and restore; on failure, again after a backoff
        (the tenant stays unavailable: never served from a stale copy)."""
        supervisor = self.config.gateway.supervisor
        backoff = supervisor.restart_backoff_initial_s
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._wait_for_hand_off(name)
                return await self._restore(name)
            except (GatewayError, OSError) as exc:
                log.error("cluster_restore_failed", extra={
                    "tenant": name, "attempt": attempt, "error": str(exc),
                    "retry_in_s": backoff, "serving": False})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, supervisor.restart_backoff_max_s)

    async def _move(self, name: str) -> dict[str, Any] | None:
        found = await self.etcd.get(MOVES + name)
        return None if found is None else dict(json.loads(found.value))

    async def _wait_for_hand_off(self, name: str) -> None:
        """A planned move to this host: wait until the old host has stopped the tenant and its
        replica has every write (or the old host died: its replica is all there is)."""
        waiting = False
        while (move := await self._move(name)) is not None and move.get("to") == self.name \
                and move.get("state") == "moving":
            if await self.etcd.get(NODES + move["from"]) is None:
                log.warning("cluster_move_source_gone", extra={"tenant": name,
                                                               "from": move["from"]})
                return
            if not waiting:
                log.info("cluster_move_waiting", extra={"tenant": name, "from": move["from"]})
                waiting = True
            await asyncio.sleep(_POLL_S)

    async def _restore(self, name: str) -> dict[str, Any] | None:
        """Restore the tenant from the replica its last host recorded (unless that is this
        host). Returns the replicas the local files now match, as a record (None: none); raises
        if they cannot be restored."""
        if not self.config.gateway.backup.endpoint:
            return None
        found = await self.etcd.get(REPLICAS + name)
        if found is None:
            return None
        record: dict[str, Any] = json.loads(found.value)
        if record["node"] == self.name and await asyncio.to_thread(self._holds, name, record):
            # Ours, and nobody served it since: the local files are the newest, and as new as
            # the replicas recorded (or their fallback, while ours had nothing yet).
            if record.get("txids"):
                return {"databases": record["databases"], "txids": record["txids"]}
            return record.get("previous")
        started = time.monotonic()
        used = await asyncio.to_thread(replicas.restore_replicas, self.config, name, record)
        log.info("cluster_tenant_restored", extra={
            "tenant": name, "from": record["node"], "txids": used["txids"],
            "duration_s": round(time.monotonic() - started, 2)})
        return used

    def _holds(self, name: str, record: dict[str, Any]) -> bool:
        """Are this host's files of tenant `name` the ones `record` says it replicated? Not
        on a host rebuilt under the same name (its data and catalog new, as after a whole
        cluster was restored from an etcd snapshot): it restores like any other."""
        data_dir = self.config.tenants[name].data_dir
        current = replicas.replica_paths(self.config, name)  # (a newer database may be extra)
        return all(current.get(database) == path and (data_dir / database).exists()
                   for database, path in record["databases"].items())

    async def _announce(self, name: str, door: TenantDoor, restored: dict[str, Any] | None,
                        *, claim: bool = True, held: TenantRoute | None = None) -> None:
        """Once the tenant serves: claim its replica record (`restored`: the replicas its files
        came from; unless it is claimed already), tell the edges where it is (on this host's
        lease), end a planned move to here, then record its replica's position. Requests this
        node (an edge too) `held` while the tenant had no host go to it here."""
        route = door.route
        while route.backend is None and self.doors.get(name) is door:
            await route.wait_for_change(5)
        if self.doors.get(name) is not door or route.backend is None:
            return
        if held is not None and held is not route and held.backend is None:
            held.publish(route.backend)
        value = json.dumps({"node": self.name, "address": door.address})
        while True:
            try:
                if claim:
                    await self._claim_replica(name, restored)
                await self.etcd.put(ENDPOINTS + name, value, lease=self.node.lease.id)
                await self._end_move(name)
                break
            except EtcdUnavailable:
                await asyncio.sleep(1)
        log.info("cluster_tenant_announced", extra={"tenant": name, "address": door.address})
        await self._record_replica(name, door)

    async def _claim_replica(self, name: str, previous: dict[str, Any] | None) -> None:
        """Point replicas/<tenant> at this host's replica before serving a write, keeping the
        replicas its files came from as `previous` (restores fall back to them for a database
        whose new replica has nothing yet)."""
        if not self.config.gateway.backup.endpoint:
            return
        paths: dict[str, str] = {}
        for _ in range(50):  # replication starts just after the tenant (Gateway.add_tenant)
            paths = await asyncio.to_thread(replicas.replica_paths, self.config, name)
            if paths:
                break
            await asyncio.sleep(0.2)
        await self.etcd.put(REPLICAS + name, json.dumps(
            {"node": self.name, "databases": paths, "txids": {}, "previous": previous}))

    async def _end_move(self, name: str) -> None:
        move = await self._move(name)
        if move is None or move.get("state") not in ("moving", "synced"):
            return
        if move["to"] == self.name:
            await self.etcd.delete(MOVES + name)
            log.info("cluster_tenant_moved", extra={"tenant": name, "from": move["from"]})
        elif await self.etcd.get(NODES + move["to"]) is None:
            await self.etcd.delete(MOVES + name)  # its new host died meanwhile
            log.warning("cluster_move_abandoned", extra={"tenant": name, "to": move["to"]})

    async def _record_replica(self, name: str, door: TenantDoor) -> None:
        """Once this host's replica has every write seen so far: record that position."""
        if not self.config.gateway.backup.endpoint:
            return
        for _ in range(_RECORD_TRIES):
            paths = await asyncio.to_thread(replicas.replica_paths, self.config, name)
            txids = None
            if paths:
                with contextlib.suppress(GatewayError):
                    txids = await asyncio.to_thread(replicas.caught_up, self.config, name,
                                                    paths)
            if self.doors.get(name) is not door:
                return  # given up meanwhile: the hand-off recorded it
            if txids is not None:
                with contextlib.suppress(EtcdUnavailable):  # the claim stands until next time
                    await self.etcd.put(REPLICAS + name, json.dumps(
                        {"node": self.name, "databases": paths, "txids": txids}))
                return
            await asyncio.sleep(0.5)

    # Giving up ----------------------------------------------------------------------------

    async def _release(self, name: str) -> None:
        """The tenant is placed elsewhere: withdraw it (edges hold its requests), let in-flight
        requests finish, stop it; on a planned move, hand its replica over."""
        try:
            move = await self._move(name)
            handing_off = (move is not None and move.get("from") == self.name
                           and move.get("state") == "moving")
            paths: dict[str, str] = {}
            if handing_off:  # (before its stream stops: that ends its lineage here)
                paths = await asyncio.to_thread(replicas.replica_paths, self.config, name)
                # While it still serves: the replica's first copy (a new host's may take a
                # while) is not part of the time it is unavailable.
                await self._caught_up(name, paths, settled=False)
            door = self.doors.pop(name)
            self.node.hold_route(name)  # (a node that is an edge too)
            with contextlib.suppress(EtcdUnavailable):
                await self.etcd.delete(ENDPOINTS + name)
            log.info("cluster_tenant_withdrawn", extra={"tenant": name})
            await self.node.gateway.remove_tenant(name)
            await door.stop()
            if handing_off and move is not None:
                await self._hand_off(name, paths, move)
            await self.node.gateway.track_backups()  # its Litestream stops (a last sync)
            log.info("cluster_tenant_released", extra={"tenant": name})
        finally:
            self._releasing.pop(name, None)

    async def _caught_up(self, name: str, paths: dict[str, str], *, settled: bool
                         ) -> dict[str, int]:
        """Wait until the replicas have every transaction Litestream has seen locally; with
        `settled`, twice the same _POLL_S apart (Litestream reads the WAL every 10 ms: a last
        write it had not read at the first look is not left behind). Returns their positions."""
        previous: dict[str, int] | None = None
        while True:
            try:
                txids = await asyncio.to_thread(replicas.caught_up, self.config, name, paths)
            except GatewayError as exc:  # the bucket unreachable: Litestream keeps what it has
                log.error("cluster_move_sync_failed", extra={"tenant": name, "error": str(exc),
                                                             "retry_in_s": 1})
                await asyncio.sleep(1)
                txids = None
            if txids is not None and (not settled or txids == previous):
                return txids
            previous = txids
            await asyncio.sleep(_POLL_S)

    async def _hand_off(self, name: str, paths: dict[str, str], move: dict[str, Any]) -> None:
        """Once the stopped tenant's replica has every write, record that position for the
        next host and tell it to go on."""
        txids = await self._caught_up(name, paths, settled=True)
        record = json.dumps({"node": self.name, "databases": paths, "txids": txids})
        while True:
            try:
                await self.etcd.put(REPLICAS + name, record)
                await self.etcd.put(MOVES + name, json.dumps({**move, "state": "synced"}))
                break
            except EtcdUnavailable:
                await asyncio.sleep(1)
        log.info("cluster_tenant_handed_off", extra={"tenant": name, "to": move.get("to"),
                                                     "txids": txids})
