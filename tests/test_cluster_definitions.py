"""Tenant definitions published in etcd (issue 17, point 7): `gateway tenant add|remove` on any
node of a cluster; every node makes its tenants/ match. Real etcd (3 members), edges and a host
as separate `gateway serve` processes."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from gateway.cli import cli
from gateway.cluster.definitions import (
    Definition,
    decode,
    plan_sync,
    read_folder,
    sync_folders,
)
from gateway.cluster.etcd import Etcd
from gateway.errors import GatewayError
from gateway.tenant_files import tenant_toml

from .conftest import Site, wait_until
from .test_cluster import Cluster, _etcd_delete_prefix, _etcd_get, cluster  # noqa: F401

# Pure ------------------------------------------------------------------------------------

def test_tenants_folders_follow_the_published_definitions() -> None:
    sync = plan_sync(
        published={"new": "1", "same": "2", "readded": "3", "adopted": "4", "differs": "5"},
        marks={"same": "2", "readded": "old", "adopted": None, "differs": None, "gone": "6",
               "by-hand": None},
        same_files={"adopted": True, "differs": False})
    assert sync.create == ("new", "readded")
    assert sync.remove == ("gone", "readded")  # (moved aside first: its data is kept)
    assert sync.adopt == ("adopted",)
    assert sync.conflicts == ("differs",)  # by-hand, unpublished: left alone
    assert plan_sync({"a": "1"}, {"a": "1"}, {}).changed is False


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "data/evil.db", ".definition",
                                  "plugins/../../x", "a\\b", ""])
def test_a_definition_never_writes_outside_its_folder_nor_into_data(path: str) -> None:
    value = Definition("1", {path: b"x"}).encode()
    with pytest.raises(GatewayError, match="definitions/carol: a file may not be called"):
        decode("carol", value)


def test_a_definition_is_the_folders_files_but_data(tmp_path: Path) -> None:
    folder = tmp_path / "carol"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "big.db").write_bytes(b"x" * 100)
    (folder / "plugins" / "__pycache__").mkdir(parents=True)
    (folder / "plugins" / "hello.py").write_text("# hi\n")
    (folder / "plugins" / "__pycache__" / "hello.pyc").write_bytes(b"\0")
    (folder / "tenant.toml").write_text("public = true\n")
    (folder / ".definition").write_text("1\n")
    assert read_folder(folder) == {"plugins/hello.py": b"# hi\n",
                                   "tenant.toml": b"public = true\n"}
    assert decode("carol", Definition("1", read_folder(folder)).encode()).files == \
        read_folder(folder)
    (folder / "metadata.json").symlink_to("/etc/shadow")
    with pytest.raises(GatewayError) as raised:
        read_folder(folder)
    assert str(raised.value) == (f"{folder / 'metadata.json'} is a symbolic link: a tenant"
                                 " definition holds files only")


def test_a_nodes_folders_made_moved_aside_adopted_or_left_alone(tmp_path: Path) -> None:
    tenants = tmp_path / "tenants"
    tenants.mkdir()
    toml = {"tenant.toml": b"public = true\n"}
    sync_folders(tenants, {"carol": Definition("1", toml), "dora": Definition("2", toml)})
    assert (tenants / "carol" / "tenant.toml").read_bytes() == b"public = true\n"
    assert (tenants / "carol" / ".definition").read_text() == "1\n"
    assert list((tenants / "carol" / "data").iterdir()) == []
    (tenants / "carol" / "data" / "x.db").write_bytes(b"kept")
    (tenants / "by-hand" / "data").mkdir(parents=True)  # not published: never touched
    (tenants / "same" / "data").mkdir(parents=True)
    (tenants / "same" / "tenant.toml").write_bytes(b"public = true\n")
    (tenants / ".incoming-erin-0a1b").mkdir()  # a node stopped while writing it

    # carol removed, dora's definition unreadable here, "same" published with its files.
    sync = sync_folders(tenants, {"same": Definition("3", toml)}, frozenset({"dora"}))
    assert (sync.create, sync.remove, sync.adopt) == ((), ("carol",), ("same",))
    (kept,) = (tenants / ".removed").iterdir()
    assert kept.name.startswith("carol.") and (kept / "data" / "x.db").read_bytes() == b"kept"
    assert sorted(p.name for p in tenants.iterdir()) == [".removed", "by-hand", "dora", "same"]
    assert (tenants / "same" / ".definition").read_text() == "3\n"


# The CLI against a real etcd -----------------------------------------------------------------

def _cluster_site(site: Site, etcd_cluster: Any) -> list[str]:
    _etcd_delete_prefix(etcd_cluster.endpoints[0], "/gateway/")
    site.write_config(cluster={"etcd_endpoints": etcd_cluster.endpoints, "node": "e1",
                               "role": "edge"})
    return ["--config", str(site.config_path)]


def _published(etcd_cluster: Any, name: str) -> Definition | None:
    value = _etcd_get(etcd_cluster.endpoints[0], f"/gateway/definitions/{name}")
    return None if value is None else decode(name, value)


def test_add_publishes_a_prepared_folder_and_refuses_what_etcd_cannot_take(
        site: Site, etcd_cluster: Any) -> None:
    config = _cluster_site(site, etcd_cluster)
    folder = site.tenants_dir / "dora"
    (folder / "plugins").mkdir(parents=True)
    (folder / "tenant.toml").write_text("public = true\n")
    (folder / "plugins" / "big.py").write_text("#" * (600 * 1024))
    refused = CliRunner().invoke(cli, [*config, "tenant", "add", "dora"])
    assert refused.output == (f"Error: {folder}'s files are too big to publish (800 KiB encoded,"
                              " at most 512 KiB): a definition is settings and plugins; put data"
                              " in data/ on its host (uploads)\n")
    assert _published(etcd_cluster, "dora") is None
    (folder / "plugins" / "big.py").write_text("# small\n")
    (folder / "data").mkdir()
    (folder / "data" / "x.db").write_bytes(b"not published")
    added = CliRunner().invoke(cli, [*config, "tenant", "add", "dora"])
    assert added.exit_code == 0, added.output
    published = _published(etcd_cluster, "dora")
    assert published is not None
    assert published.files == {"plugins/big.py": b"# small\n", "tenant.toml": b"public = true\n"}
    again = CliRunner().invoke(cli, [*config, "tenant", "add", "dora"])
    assert again.output == "Error: tenant 'dora' already exists in the cluster\n"


def test_without_quorum_add_and_remove_say_why_and_change_nothing(
        site: Site, etcd_cluster: Any) -> None:
    config = _cluster_site(site, etcd_cluster)
    assert CliRunner().invoke(cli, [*config, "tenant", "add", "erin"]).exit_code == 0
    etcd = etcd_cluster
    initial = ",".join(f"{m.name}={m.peer_url}" for m in etcd.members)
    stopped = etcd.members[1:]
    try:
        for member in stopped:
            member.stop()
        for action, name in (("add", "frank"), ("remove", "erin")):
            result = CliRunner().invoke(cli, [*config, "tenant", action, name])
            assert result.exit_code == 1
            assert result.output.startswith(
                f"Error: cannot {action} tenant {name!r}: etcd did not answer (no etcd member"
                " answered: ")
            assert result.output.endswith(
                "); nothing was changed. Try again once etcd has quorum.\n")
    finally:
        for member in stopped:
            member.start(initial, token=etcd.folder.name)
        etcd.wait_healthy()
    assert _published(etcd_cluster, "frank") is None
    assert _published(etcd_cluster, "erin") is not None
    assert not (site.tenants_dir / "frank").exists()


# Real nodes -------------------------------------------------------------------------------

def _removed(site: Site, name: str) -> list[Path]:
    return sorted((site.tenants_dir / ".removed").glob(f"{name}.*"))


@pytest.mark.root
def test_a_tenant_added_on_one_edge_serves_everywhere_and_removed_on_another_goes(
        cluster: Cluster) -> None:  # noqa: F811
    host = cluster.start("h1", "host", advertise="127.0.0.2")
    edges = [cluster.start("e1", "edge"), cluster.start("e2", "edge")]
    wait_until(lambda: all("alice" in e.status()["cluster"]["endpoints"] for e in edges),
               message="alice routed by both edges")

    added = edges[0].cli("tenant", "add", "carol", "--public")
    assert added.stdout == ("Added carol to the cluster: every node makes tenants/carol/ (its"
                            " data/ starts empty) and the leader places it on a host; `gateway"
                            " status` shows where.\n")
    wait_until(lambda: cluster.placement("carol") == "h1", message="carol placed on h1")
    for edge in edges:
        wait_until(lambda edge=edge: edge.get("carol", "/-/databases.json").status_code == 200,
                   timeout=60, message="carol served through the edge")
        databases = edge.get("carol", "/-/databases.json").json()
        assert [d["name"] for d in databases] == ["_memory"]  # no data yet
    assert host.tenant("carol")["state"] == "running"
    for site in cluster.sites.values():  # every node has the folder, data/ empty
        folder = site.tenants_dir / "carol"
        assert (folder / "tenant.toml").read_text() == tenant_toml("carol", public=True)
        assert list((folder / "data").iterdir()) == []
    again = edges[1].cli("tenant", "add", "carol", check=False)
    assert again.stderr == "Error: tenant 'carol' already exists in the cluster\n"
    assert edges[0].get("alice", "/data/items.json?_shape=array&id=3").status_code == 200

    removed = edges[1].cli("tenant", "remove", "carol")
    assert removed.stdout == ("Removed carol from the cluster: its host stops it and every node"
                              " moves tenants/carol/ to tenants/.removed/ (nothing is"
                              " deleted).\n")
    for edge in edges:
        wait_until(lambda edge=edge: edge.get("carol").status_code == 404,
                   timeout=60, message="carol gone from the edge")
        assert "There is no site at carol." in edge.get("carol").text
    wait_until(lambda: "carol" not in [t["name"] for t in host.status()["tenants"]],
               message="h1 stopped carol")
    assert host.status()["cluster"]["hosting"] == ["alice"]
    assert cluster.placement("carol") is None
    for node, site in cluster.sites.items():  # moved aside, nothing deleted
        wait_until(lambda site=site: not (site.tenants_dir / "carol").exists(),
                   message=f"carol's folder moved aside on {node}")
        (kept,) = _removed(site, "carol")
        assert (kept / "tenant.toml").read_text() == tenant_toml("carol", public=True)
    # A tenant of the same name added again starts afresh, its old folder kept aside.
    edges[0].cli("tenant", "add", "carol", "--public")
    wait_until(lambda: edges[1].get("carol", "/-/databases.json").status_code == 200,
               timeout=60, message="carol served again")
    assert len(_removed(cluster.sites["h1"], "carol")) == 1
    assert edges[0].get("alice", "/data/items.json?_shape=array&id=3").status_code == 200

    # A folder prepared by hand on one node is published with its files; that node keeps it.
    prepared = cluster.sites["e2"].tenants_dir / "dora"
    (prepared / "data").mkdir(parents=True)
    (prepared / "tenant.toml").write_text("public = true\n")
    (prepared / "metadata.json").write_text('{"title": "Dora\'s data"}\n')
    edges[1].cli("tenant", "add", "dora")
    wait_until(lambda: edges[0].get("dora", "/-/metadata.json").status_code == 200,
               timeout=60, message="dora served")
    assert edges[0].get("dora", "/-/metadata.json").json()["title"] == "Dora's data"
    assert (cluster.sites["h1"].tenants_dir / "dora" / "metadata.json").read_text() == \
        '{"title": "Dora\'s data"}\n'
    wait_until(lambda: (prepared / ".definition").exists(), message="e2 adopted its folder")
    assert _removed(cluster.sites["e2"], "dora") == []

async def _definitions(etcd_cluster: Any) -> list[str]:
    etcd = Etcd(etcd_cluster.endpoints)
    try:
        found, _ = await etcd.get_prefix("/gateway/definitions/")
        return [kv.key for kv in found]
    finally:
        await etcd.close()


def test_remove_of_a_tenant_nobody_published_acts_on_this_node_only(
        site: Site, etcd_cluster: Any) -> None:
    config = _cluster_site(site, etcd_cluster)
    site.add_tenant("gina")  # made by hand, as before definitions were published
    removed = CliRunner().invoke(cli, [*config, "tenant", "remove", "gina"])
    assert removed.output.startswith(f"Moved to {site.tenants_dir / '.removed'}/gina.")
    assert removed.output.endswith(". Remove it on every node, then run"
                                   " `gateway reload --cluster` to stop it.\n")
    assert asyncio.run(_definitions(etcd_cluster)) == []


# Upgrades ---------------------------------------------------------------------------------

@pytest.mark.root
def test_an_upgraded_node_keeps_its_lease_its_role_and_its_tenants(
        cluster: Cluster) -> None:  # noqa: F811
    host = cluster.start("h1", "host", advertise="127.0.0.2")
    edge = cluster.start("e1", "edge")
    wait_until(lambda: "alice" in edge.status()["cluster"]["endpoints"], message="alice routed")
    before = {name: node.status() for name, node in cluster.nodes.items()}
    leader = next(name for name, status in before.items() if status["cluster"]["leader"])

    statuses: list[int] = []
    done = threading.Event()

    def load() -> None:  # requests through the edge while the host's worker is replaced
        with httpx.Client(base_url=edge.url, timeout=30) as client:
            while not done.is_set():
                statuses.append(client.get("/data/items.json?_shape=array&id=3",
                                           headers={"host": edge.host("alice")}).status_code)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        assert host.cli("upgrade").stdout.startswith("Upgraded: worker ")
        wait_until(lambda: host.status()["cluster"]["hosting"] == ["alice"],
                   message="h1 hosts alice again")
        count = len(statuses)
        wait_until(lambda: len(statuses) > count + 20, message="requests after the upgrade")
    finally:
        done.set()
        loader.join()
    assert set(statuses) == {200}
    after = host.status()
    assert after["worker_pid"] != before["h1"]["worker_pid"]
    assert after["cluster"]["lease"] == before["h1"]["cluster"]["lease"]
    assert [(t["name"], t["pid"]) for t in after["tenants"]] == [
        ("alice", before["h1"]["tenants"][0]["pid"])]  # the same process, adopted
    response = edge.get("alice", "/data/items.json?_shape=array&id=3")
    assert response.status_code == 200
    assert response.json() == [{"id": 3, "name": "item 3"}]

    assert edge.cli("upgrade").stdout.startswith("Upgraded: worker ")
    assert edge.status()["cluster"]["lease"] == before["e1"]["cluster"]["lease"]
    assert edge.status()["tenants"] == []  # an edge runs no tenant itself, upgraded or not
    assert edge.get("alice", "/data/items.json?_shape=array&id=3").status_code == 200
    assert cluster.placement("alice") == "h1"
    view = edge.status()["cluster"]["view"]
    assert view["leader"] == leader
    assert [n["node"] for n in view["nodes"]] == ["e1", "h1"]
    assert host.tenant("alice")["pid"] == before["h1"]["tenants"][0]["pid"]
