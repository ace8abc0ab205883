"""Operating a cluster from any node (issue 17, point 7): status, a tenant's restart and a
reload of every node, asked on one node and done on another through etcd. Real etcd (3
members), a host and an edge as separate `gateway serve` processes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from gateway.cluster.etcd import Etcd

from .conftest import wait_until
from .test_cluster import Cluster, cluster  # noqa: F401 (a fixture)


async def test_a_delete_says_who_claimed_and_a_lease_its_time_left(etcd_cluster: Any) -> None:
    etcd = Etcd(etcd_cluster.endpoints)
    key = f"/test/{uuid.uuid4().hex}"
    try:
        lease = await etcd.grant(30)
        await etcd.put(key, "request", lease=lease)
        assert 0 < await etcd.time_to_live(lease) <= 30
        assert await etcd.delete(key) and not await etcd.delete(key)  # one claimer only
        await etcd.revoke(lease)
        assert await etcd.time_to_live(lease) == -1
        assert await etcd.time_to_live(0) == 0
    finally:
        await etcd.close()


@pytest.mark.root
def test_status_restart_and_reload_from_the_edge(cluster: Cluster) -> None:  # noqa: F811
    host = cluster.start("h1", "host", advertise="127.0.0.2")
    edge = cluster.start("e1", "edge")
    wait_until(lambda: "alice" in edge.status()["cluster"]["view"]["endpoints"],
               message="alice served by h1")

    # Status on the edge shows the whole cluster: both nodes, their leases, the placement.
    view = edge.status()["cluster"]["view"]
    assert [(n["node"], n["role"], n["capacity"], n["tenants"]) for n in view["nodes"]] == [
        ("e1", "edge", None, []), ("h1", "host", 50, ["alice"])]
    assert all(0 < n["lease_ttl_s"] <= 2 for n in view["nodes"])
    assert view["leader"] in ("e1", "h1")
    assert [n["node"] for n in view["nodes"] if n["leader"]] == [view["leader"]]
    assert view["placement"] == {"alice": "h1"}
    assert view["endpoints"]["alice"].startswith("tcp:127.0.0.2:")
    assert view["unplaced"] == []
    text = edge.cli("status").stdout
    assert "NODE                 ROLE     LEASE CAPACITY  TENANTS" in text
    assert "        -  -" in text.split("\ne1")[1].splitlines()[0]  # the edge: no capacity
    assert text.split("\nh1")[1].splitlines()[0].endswith("      50  alice")
    assert f"alice                h1                   {view['endpoints']['alice']}" in text

    # A restart asked on the edge is done by the host: a new process, no request lost.
    before = host.tenant("alice")["pid"]
    result = edge.cli("tenant", "restart", "alice")
    assert result.stdout == "Restarted alice on h1.\n"
    after = host.tenant("alice")
    assert after["pid"] != before and after["state"] == "running"
    assert edge.get("alice", "/data/items.json?_shape=array&id=3").json() == [
        {"id": 3, "name": "item 3"}]
    failed = edge.cli("tenant", "restart", "nobody", check=False)
    assert failed.returncode == 1
    assert failed.stderr == ("Error: tenant 'nobody' is not placed on any host:"
                             " see `gateway status`\n")

    # A tenant added on every node's disk, then one reload asked on the edge: every node
    # reloads, the leader places it, the host starts it, the edge routes it.
    for site in cluster.sites.values():
        site.add_tenant("bob", tables={"things": [{"id": 1, "name": "thing"}]})
    result = edge.cli("reload", "--cluster")
    # (Each node reports what it runs itself: the edge none, the host what is placed on it.)
    unchanged = "  added: -\n  removed: -\n  changed: -\n  needs_restart: -\n"
    assert result.stdout == f"e1:\n{unchanged}h1:\n{unchanged}"
    wait_until(lambda: cluster.placement("bob") == "h1", message="bob placed on h1")
    response = edge.get("bob", "/data/things.json?_shape=array")
    assert response.status_code == 200
    assert response.json() == [{"id": 1, "name": "thing"}]
    assert [n["tenants"] for n in edge.status()["cluster"]["view"]["nodes"]] == [
        [], ["alice", "bob"]]


    # A node whose files do not load says so; the others reload; the command fails.
    broken = cluster.sites["h1"].tenants_dir / "carol"
    broken.mkdir()
    (broken / "tenant.toml").write_text('memory_mb = "lots"\n')
    failed = edge.cli("reload", "--cluster", check=False)
    assert failed.returncode == 1
    assert failed.stdout.startswith(f"e1:\n{unchanged}h1: error: ")
    assert "tenants/carol/tenant.toml: memory_mb: expected an integer" in failed.stdout
    assert failed.stderr == "Error: the reload failed on h1\n"
    assert host.tenant("bob")["state"] == "running"  # what ran keeps running


@pytest.mark.root
@pytest.mark.drill
def test_status_says_when_etcd_has_no_quorum(cluster: Cluster) -> None:  # noqa: F811
    edge = cluster.start("e1", "edge")
    wait_until(lambda: edge.status()["cluster"]["view"]["leader"] == "e1", message="e1 leads")
    etcd = cluster.etcd
    initial = ",".join(f"{m.name}={m.peer_url}" for m in etcd.members)
    stopped = etcd.members[1:]
    try:
        for member in stopped:
            member.stop()
        status = edge.status()
        assert status["cluster"]["view"]["error"].startswith("no etcd member answered: ")
        assert status["cluster"]["node"] == "e1"  # the node's own part is still there
        text = edge.cli("status").stdout
        assert "\n           etcd: no etcd member answered: " in text
    finally:
        for member in stopped:
            member.start(initial, token=etcd.folder.name)
        etcd.wait_healthy()
    wait_until(lambda: "error" not in edge.status()["cluster"]["view"], message="etcd back")
