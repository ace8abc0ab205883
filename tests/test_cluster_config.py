"""[cluster] settings, and the cluster CA and node certificates (mutual TLS)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import cli
from gateway.cluster import tls
from gateway.config import load_config
from gateway.errors import ConfigError

from .conftest import Site


def test_no_cluster_table_means_no_cluster(site: Site) -> None:
    cluster = load_config(site.config_path).gateway.cluster
    assert cluster.etcd_endpoints == ()
    state_dir = load_config(site.config_path).gateway.paths.state_dir
    assert cluster.tls_dir == state_dir / "cluster"


@pytest.mark.parametrize(("table", "message"), [
    ({"etcd_endpoints": ["127.0.0.1:2379"]},
     "gateway.toml: cluster.etcd_endpoints: expected http:// or https:// URLs, got"
     " '127.0.0.1:2379'"),
    ({"etcd_endpoints": ["http://127.0.0.1:2379"]},
     "gateway.toml: cluster.node: required with cluster.etcd_endpoints: 1 to 63 characters"
     " from a-z, 0-9 and '-'"),
    ({"etcd_endpoints": ["http://127.0.0.1:2379"], "node": "h1"},
     "gateway.toml: cluster.advertise: required for a host (role 'both'): the IP edges reach"
     " it at"),
    ({"role": "gateway"},
     "gateway.toml: cluster.role: expected one of \"edge\", \"host\", \"both\", got \"gateway\""),
])
def test_bad_cluster_settings_are_named(site: Site, table: dict[str, object],
                                        message: str) -> None:
    site.write_config(cluster=table)
    with pytest.raises(ConfigError) as raised:
        load_config(site.config_path)
    assert str(raised.value) == message


def test_an_edge_needs_no_advertised_address(site: Site) -> None:
    site.write_config(cluster={"etcd_endpoints": ["http://127.0.0.1:2379"], "node": "e1",
                               "role": "edge", "tls_dir": "certs"})
    cluster = load_config(site.config_path).gateway.cluster
    assert (cluster.node, cluster.role, cluster.tls_dir) == ("e1", "edge", site.root / "certs")


def test_cluster_init_and_cert_commands(site: Site) -> None:
    folder = site.root / "ca"
    runner = CliRunner()
    config = ["--config", str(site.config_path)]
    result = runner.invoke(cli, [*config, "cluster", "init", "--dir", str(folder)])
    assert result.output == f"cluster CA: {folder / 'ca.pem'}\n"
    assert (folder / "ca.key").stat().st_mode & 0o777 == 0o600
    again = runner.invoke(cli, [*config, "cluster", "init", "--dir", str(folder)])
    assert again.exit_code == 1
    assert again.output == f"Error: {folder / 'ca.key'} exists: the cluster already has a CA\n"
    result = runner.invoke(cli, [*config, "cluster", "cert", "h1", "--dir", str(folder)])
    assert result.output == f"h1: {folder / 'h1' / 'node.pem'}\n"
    assert sorted(p.name for p in (folder / "h1").iterdir()) == [
        "ca.pem", "node.key", "node.pem", "secret.key"]
    assert (folder / "h1" / "node.key").stat().st_mode & 0o777 == 0o600
    assert (folder / "h1" / "secret.key").stat().st_mode & 0o777 == 0o600
    assert (folder / "h1" / "secret.key").read_bytes() == (folder / "secret.key").read_bytes()
    bad = runner.invoke(cli, [*config, "cluster", "cert", "H 1", "--dir", str(folder)])
    assert bad.output == ("Error: 'H 1' is not a node name: use 1 to 63 characters from a-z,"
                          " 0-9 and '-'\n")


async def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> bytes:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        data = await reader.read()
        writer.close()
        return data
    finally:
        listener.close()


async def _refused(server: ssl.SSLContext, client: ssl.SSLContext) -> bool:
    """With TLS 1.3 the client learns of a refused certificate on its first read: an alert
    (SSLError) or the end of the stream, never the server's data."""
    try:
        return await _handshake(server, client) == b""
    except (ssl.SSLError, ConnectionError):
        return True


async def test_mutual_tls_needs_a_certificate_from_the_cluster_ca(tmp_path: Path) -> None:
    tls.init_ca(tmp_path / "ca")
    tls.issue_node(tmp_path / "ca", "host", tmp_path / "host")
    tls.issue_node(tmp_path / "ca", "edge", tmp_path / "edge")
    server = tls.server_context(tmp_path / "host")
    assert await _handshake(server, tls.client_context(tmp_path / "edge")) == b"hello"
    tls.init_ca(tmp_path / "other")  # another cluster's node is refused
    tls.issue_node(tmp_path / "other", "stranger", tmp_path / "stranger")
    assert await _refused(server, tls.client_context(tmp_path / "stranger"))
    anonymous = ssl.create_default_context(cafile=tmp_path / "ca" / "ca.pem")
    anonymous.check_hostname = False
    assert await _refused(server, anonymous)


def test_a_tenant_move_needs_a_cluster(site: Site) -> None:
    site.add_tenant("alice")
    result = CliRunner().invoke(cli, ["--config", str(site.config_path), "tenant", "move",
                                      "alice", "h2"])
    assert result.exit_code == 1
    assert result.output == ("Error: gateway.toml has no [cluster]: a tenant moves between the"
                             " hosts of a cluster\n")
