"""A drill: a whole cluster lost (every node, every etcd member, every tenant's files) and
restored from an etcd snapshot plus the tenants' replicas, as README's Cluster section tells an
operator to do it; and, in make test, the etcd snapshot and restore it builds on."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import RunningGateway, wait_until
from .etcd_cluster import EtcdCluster
from .test_backup import seaweed, wait_replicated, write_rows  # noqa: F401 (a fixture)
from .test_cluster import Cluster, _etcd_get, _etcd_put, kill_machine, release_spares


@pytest.fixture
def lost_cluster() -> Iterator[tuple[Cluster, list[EtcdCluster]]]:
    """A cluster on an etcd of its own (the drill destroys it); the etcd clusters made, to
    close."""
    root = Path(tempfile.mkdtemp(prefix="gw-restore-", dir="/tmp"))
    os.chmod(root, 0o755)
    etcds = [EtcdCluster()]
    made = Cluster(etcds[0], root)
    try:
        yield made, etcds
    finally:
        made.close()
        for etcd in etcds:
            etcd.close()
        release_spares(root)
        shutil.rmtree(root, ignore_errors=True)


def _kill(gateway: RunningGateway) -> None:
    """Gone as a machine goes (kill_machine), and its client closed."""
    kill_machine(gateway)
    gateway.process.wait(10)
    gateway.client.close()


def test_an_etcd_snapshot_holds_every_key_for_a_new_cluster(tmp_path: Path) -> None:
    """What the drill below builds on, in seconds: keys put in one cluster, `etcdctl snapshot
    save`, the cluster gone, and a new 3-member cluster restored from the file has every key
    (and each member answers for it)."""
    first = EtcdCluster()
    try:
        _etcd_put(first.endpoints[0], "/gateway/definitions/alice", "alice's")
        _etcd_put(first.endpoints[1], "/gateway/placement/alice", "h1")
        first.snapshot(tmp_path / "etcd.snapshot")
    finally:
        first.close()
    second = EtcdCluster(snapshot=tmp_path / "etcd.snapshot")
    try:
        for endpoint in second.endpoints:
            assert _etcd_get(endpoint, "/gateway/definitions/alice") == "alice's"
            assert _etcd_get(endpoint, "/gateway/placement/alice") == "h1"
    finally:
        second.close()


@pytest.mark.root
@pytest.mark.drill
def test_a_whole_cluster_is_restored_from_an_etcd_snapshot_and_the_replicas(
        lost_cluster: tuple[Cluster, list[EtcdCluster]], seaweed: Any,  # noqa: F811
        tmp_path: Path) -> None:
    cluster, etcds = lost_cluster
    endpoint = seaweed.endpoint
    cluster.start_backed_up("h1", "127.0.0.2", endpoint)
    wait_until(lambda: cluster.placement("alice") == "h1", message="alice placed on h1")
    cluster.start_backed_up("h2", "127.0.0.3", endpoint)
    edge = cluster.start("e1", "edge")
    host = cluster.nodes["h1"]
    host.wait_for_event("backup_started", tenant="alice")
    before = wait_replicated(host)
    write_rows(cluster.sites["h1"].tenants_dir / "alice" / "data" / "data.db", "items",
               [(99, "written before the snapshot")])
    wait_replicated(host, since=before)

    def recorded() -> bool:
        found = _etcd_get(etcds[0].endpoints[0], "/gateway/replicas/alice")
        return bool(found and json.loads(found)["txids"])

    wait_until(recorded, timeout=60, message="alice's replica position recorded")
    assert edge.get("alice", "/data/items.json?_shape=array&id=99").json() == [
        {"id": 99, "name": "written before the snapshot"}]
    snapshot = tmp_path / "etcd.snapshot"
    etcds[0].snapshot(snapshot)
    # A write after the snapshot, replicated before the end: the replica (not etcd) has it.
    before = wait_replicated(host)
    write_rows(cluster.sites["h1"].tenants_dir / "alice" / "data" / "data.db", "items",
               [(100, "written after the snapshot")])
    wait_replicated(host, since=before)

    # Everything is lost: nodes, etcd's members and their data, every node's files but its
    # configuration (gateway.toml, tenants' definitions, its cluster certificate).
    for name in list(cluster.nodes):
        _kill(cluster.nodes.pop(name))
    etcds[0].close()
    for site in cluster.sites.values():
        shutil.rmtree(site.root / "state")
        for tenant in site.tenants_dir.iterdir():
            shutil.rmtree(tenant / "data", ignore_errors=True)
            (tenant / "data").mkdir()

    # The procedure: a new etcd cluster from the snapshot; every node pointed at it, each host
    # with a [backup] prefix of its own that no earlier host used; the nodes started.
    etcds.append(EtcdCluster(snapshot=snapshot))
    for site in cluster.sites.values():
        site.write_config(cluster={"etcd_endpoints": etcds[1].endpoints})
    # A host rebuilt with its old prefix refuses to restore: its new replicas would overwrite
    # the ones it restores from.
    reused = RunningGateway(cluster.sites["h1"])
    refused = reused.wait_for_event("cluster_restore_failed", tenant="alice", timeout=60)
    assert refused["error"].startswith("alice's replica t/") and refused["error"].endswith(
        " is under this host's [backup] prefix"
        f" {cluster.sites['h1'].settings['backup']['prefix']!r}, but this host's state/ did not"
        " make it (a host rebuilt under its old name?): its new replicas would overwrite it."
        " Give this host a [backup] prefix no host used before, then restart it")
    assert reused.status()["cluster"]["hosting"] == []
    reused.stop()
    shutil.rmtree(cluster.sites["h1"].root / "state")
    for name, site in cluster.sites.items():
        if "backup" in site.settings:
            site.write_config(backup={"prefix": site.settings["backup"]["prefix"] + "-rebuilt"})
        cluster.nodes[name] = RunningGateway(site)
    edge = cluster.nodes["e1"]
    wait_until(lambda: edge.get("alice", "/data/items.json?_shape=array&id=99").status_code
               == 200, timeout=120, message="alice served again")
    response = edge.get("alice", "/data/items.json?_shape=array&id=99")
    assert response.json() == [{"id": 99, "name": "written before the snapshot"}]
    response = edge.get("alice", "/data/items.json?_shape=array&id=100")
    assert response.json() == [{"id": 100, "name": "written after the snapshot"}]
    serving = _etcd_get(etcds[1].endpoints[0], "/gateway/placement/alice")
    assert serving in ("h1", "h2")
    restored = cluster.nodes[serving].wait_for_event("cluster_tenant_restored", tenant="alice")
    assert restored["from"] == "h1"
