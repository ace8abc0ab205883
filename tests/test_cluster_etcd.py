"""gateway.cluster.etcd and .lease against a real 3-member etcd cluster."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from gateway.cluster.etcd import Etcd, EtcdUnavailable, WatchEvent
from gateway.cluster.lease import Election, Lease


def prefix() -> str:
    return f"/test/{uuid.uuid4().hex}/"


async def test_kv_put_get_prefix_create_and_fenced_put(etcd_cluster: Any) -> None:
    etcd = Etcd(etcd_cluster.endpoints)
    base = prefix()
    try:
        assert await etcd.get(base + "a") is None
        await etcd.put(base + "a", "1")
        await etcd.put(base + "b", "2")
        found, revision = await etcd.get_prefix(base)
        assert [(kv.key, kv.value) for kv in found] == [(base + "a", "1"), (base + "b", "2")]
        assert revision >= found[-1].mod_revision
        assert await etcd.create(base + "c", "first") == (True, None)
        created, holder = await etcd.create(base + "c", "second")
        assert not created and holder is not None and holder.value == "first"
        assert await etcd.put_if_owner(base + "c", "first", base + "d", "ok")
        assert not await etcd.put_if_owner(base + "c", "other", base + "d", "no")
        assert (await etcd.get(base + "d")).value == "ok"  # type: ignore[union-attr]
        await etcd.delete(base + "a")
        assert await etcd.get(base + "a") is None
    finally:
        await etcd.close()


async def test_watch_streams_puts_and_deletes(etcd_cluster: Any) -> None:
    etcd = Etcd(etcd_cluster.endpoints)
    base = prefix()
    seen: list[WatchEvent] = []

    async def watch(start: int) -> None:
        async for events in etcd.watch_prefix(base, start):
            seen.extend(events)
            if len(seen) >= 3:
                return

    try:
        start = await etcd.put(base + "x", "0") + 1
        watcher = asyncio.create_task(watch(start))
        await etcd.put(base + "x", "1")
        await etcd.put(base + "y", "2")
        await etcd.delete(base + "x")
        await asyncio.wait_for(watcher, 10)
        assert [(e.kind, e.key, e.value) for e in seen] == [
            ("put", base + "x", "1"), ("put", base + "y", "2"), ("delete", base + "x", "")]
    finally:
        await etcd.close()


async def test_keys_on_a_lease_vanish_when_it_is_revoked(etcd_cluster: Any) -> None:
    etcd = Etcd(etcd_cluster.endpoints)
    base = prefix()
    lease = Lease(etcd, ttl_s=5)
    try:
        await lease.start()
        await etcd.put(base + "node", "alive", lease=lease.id)
        assert await etcd.keep_alive(lease.id) == 5
        await lease.stop()
        assert await etcd.get(base + "node") is None
        assert await etcd.keep_alive(lease.id) == 0
    finally:
        await etcd.close()


async def test_election_one_leader_then_the_next_when_its_lease_ends(etcd_cluster: Any) -> None:
    etcd = Etcd(etcd_cluster.endpoints)
    key = prefix() + "leader"
    first, second = Lease(etcd, ttl_s=5), Lease(etcd, ttl_s=5)
    try:
        await first.start()
        await second.start()
        await asyncio.wait_for(Election(etcd, first, "one", key).campaign(), 5)
        waiting = asyncio.create_task(Election(etcd, second, "two", key).campaign())
        await asyncio.sleep(0.5)
        assert not waiting.done()
        assert await Election(etcd, second, "two", key).leader() == "one"
        await first.stop()  # the leader's lease ends: its key goes, the other one wins
        await asyncio.wait_for(waiting, 10)
        assert await Election(etcd, second, "two", key).leader() == "two"
    finally:
        await second.stop()
        await etcd.close()


async def test_no_member_answering_is_etcd_unavailable() -> None:
    etcd = Etcd(["http://127.0.0.1:9"], timeout_s=0.5)
    try:
        with pytest.raises(EtcdUnavailable, match="no etcd member answered"):
            await etcd.get("/x")
    finally:
        await etcd.close()
