"""A node's etcd lease kept alive, and the leader election that rides on it.

A node is alive for the cluster while its lease is: every key it owns (/nodes/<name>, the leader
key) is attached to the lease, so etcd deletes them itself when the node stops refreshing it.

The election is etcd's own primitive, nothing home-made: a transaction creates the leader key
only if it does not exist (create_revision == 0), attached to the candidate's lease. The winner
leads until its lease ends; the others watch the key and try again when it is deleted. Every
write a leader makes is fenced by a transaction comparing the leader key's value, so a leader
whose lease has expired cannot overwrite its successor's decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .etcd import Etcd, EtcdUnavailable

log = logging.getLogger(__name__)

LEADER_KEY = "/gateway/leader"


class Lease:
    """A lease granted once and refreshed every ttl/3 until `stop` or until it is lost."""

    def __init__(self, etcd: Etcd, ttl_s: int) -> None:
        self.etcd = etcd
        self.ttl_s = ttl_s
        self.id = 0
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, adopt: int = 0) -> None:
        """A new lease, or `adopt` (an upgrade's old worker held it) while etcd still has it."""
        if adopt and await self.etcd.keep_alive(adopt) > 0:
            self.id = adopt
        else:
            self.id = await self.etcd.grant(self.ttl_s)
        self.lost = asyncio.Event()
        self._task = asyncio.create_task(self._refresh())

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                remaining = await self.etcd.keep_alive(self.id)
            except EtcdUnavailable as exc:
                # No quorum: keep trying; what this node runs stays as it is meanwhile.
                log.warning("cluster_lease_unrefreshed", extra={"error": str(exc)})
                continue
            if remaining <= 0:
                log.warning("cluster_lease_lost", extra={"lease": self.id})
                self.lost.set()
                return

    async def stop(self, *, revoke: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if revoke and self.id and not self.lost.is_set():
            with contextlib.suppress(EtcdUnavailable):
                await self.etcd.revoke(self.id)


class Election:
    """Campaign for LEADER_KEY with `lease`; `campaign` returns once this node leads."""

    def __init__(self, etcd: Etcd, lease: Lease, node: str, key: str = LEADER_KEY) -> None:
        self.etcd = etcd
        self.lease = lease
        self.node = node
        self.key = key

    async def campaign(self) -> None:
        while True:
            try:
                created, holder = await self.etcd.create(self.key, self.node, lease=self.lease.id)
            except EtcdUnavailable:
                await asyncio.sleep(1)
                continue
            if created or (holder is not None and holder.lease == self.lease.id):
                log.info("cluster_leader_elected", extra={"node": self.node})
                return
            if holder is None:
                continue  # deleted between the compare and the read: try again at once
            await self._wait_for_deletion(holder.mod_revision + 1)

    async def leader(self) -> str | None:
        holder = await self.etcd.get(self.key)
        return holder.value if holder is not None else None

    async def _wait_for_deletion(self, revision: int) -> None:
        try:
            async for events in self.etcd.watch_prefix(self.key, revision):
                if any(event.kind == "delete" and event.key == self.key for event in events):
                    return
        except EtcdUnavailable:
            await asyncio.sleep(1)
