"""One ACME certificate for a cluster (issue 17, point 6): the leader obtains it from a real CA
(pebble, DNS-01 through knot), publishes it in a real etcd with its key encrypted, and the other
edge serves it, and each renewal, without ever talking to the CA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.cluster import tls
from gateway.cluster.certs import certificate_cipher, seal, unseal
from gateway.errors import CertificateError, ConfigError

from .acme_servers import key_pem, make_certificate
from .conftest import RunningGateway, wait_until
from .test_cluster import Cluster, _etcd_get, cluster  # noqa: F401 (a fixture)
from .test_tls import AcmeStack, acme_stack, https_port, installed, serial_over_https  # noqa: F401


def test_the_key_is_sealed_to_the_clusters_secret_and_its_chain(tmp_path: Path) -> None:
    tls.init_ca(tmp_path)
    cipher = certificate_cipher(tls.read_secret(tmp_path))
    certificate, key = make_certificate(["gw.test"])
    chain = certificate.public_bytes(Encoding.PEM)
    value = seal(cipher, chain, key_pem(key), "https://ca/dir")
    assert b"PRIVATE KEY" not in value.encode() and "PRIVATE KEY" in key_pem(key).decode()
    assert unseal(cipher, value) == (chain, key_pem(key), "https://ca/dir")
    other = certificate_cipher(b"f" * 64)
    message = ("the certificate in etcd cannot be read with this node's secret.key (InvalidTag):"
               " is it the same as the other nodes'?")
    with pytest.raises(CertificateError) as wrong_secret:
        unseal(other, value)
    assert str(wrong_secret.value) == message
    swapped = json.loads(value)
    swapped["chain"] = make_certificate(["gw.test"])[0].public_bytes(Encoding.PEM).decode()
    with pytest.raises(CertificateError):  # the key belongs to its chain only
        unseal(cipher, json.dumps(swapped))


def test_a_node_without_the_secret_is_told_where_it_comes_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        tls.read_secret(tmp_path)
    assert str(missing.value) == (f"{tmp_path}/secret.key: missing; `gateway cluster cert NODE`"
                                  " copies it from the folder where `gateway cluster init` ran")


def _edge(cluster: Cluster, node: str, acme_stack: AcmeStack) -> RunningGateway:  # noqa: F811
    site = cluster.site(node, "edge")
    site.write_config(listen={"https_port": 0}, tls=acme_stack.tls_settings())
    cluster.nodes[node] = RunningGateway(site)
    return cluster.nodes[node]


def _requested(gateway: RunningGateway) -> list[dict[str, Any]]:
    return [e for e in gateway.events if e.get("event") == "certificate_requesting"]


@pytest.mark.slow
@pytest.mark.root
def test_the_leader_obtains_and_every_edge_serves_and_swaps(
        cluster: Cluster, acme_stack: AcmeStack) -> None:  # noqa: F811
    first = _edge(cluster, "e1", acme_stack)  # alone: it leads
    published = first.wait_for_event("certificate_published", timeout=60)
    serial = published["serial"]
    second = _edge(cluster, "e2", acme_stack)
    assert second.wait_for_event("certificate_installed", source="cluster")["serial"] == serial
    for edge in (first, second):
        assert serial_over_https(https_port(edge), acme_stack.root_pem) == serial
    assert _requested(second) == []  # only the leader talks to the CA
    raw = _etcd_get(cluster.etcd.endpoints[0], "/gateway/certificate")
    assert raw is not None and "BEGIN CERTIFICATE" in raw and "PRIVATE KEY" not in raw

    status = json.loads(second.cli("cert", "status", "--json").stdout)
    assert status["renewal_basis"] == ("the cluster's leader (e1) renews it; this node loads"
                                       " what the leader publishes")

    # A renewal reaches the other edge: new handshakes get the new certificate.
    renewed = json.loads(first.cli("cert", "renew", "--force", "--json").stdout)
    new_serial = renewed["certificate"]["serial"]
    assert new_serial != serial
    wait_until(lambda: len(installed(second, "cluster")) == 2, message="e2 swapped")
    assert installed(second, "cluster")[1]["serial"] == new_serial
    assert serial_over_https(https_port(second), acme_stack.root_pem) == new_serial
    # Asked on the follower, the leader renews (the follower never talks to the CA).
    asked = second.cli("cert", "renew", "--force").stdout
    assert asked.startswith("Renewed by the cluster's leader, e1.\nmode          acme\n")
    third_serial = wait_until(lambda: len(installed(second, "cluster")) == 3
                              and installed(second, "cluster")[2]["serial"],
                              message="e2 swapped again")
    assert f"serial        {third_serial}\n" in asked
    assert len(_requested(first)) == 3 and _requested(second) == []
    new_serial = third_serial

    # The leader goes: the next one takes over the renewals, and orders nothing it has.
    first.stop()
    del cluster.nodes["e1"]
    wait_until(lambda: json.loads(second.cli("cert", "status", "--json").stdout)
               ["renewal_basis"] == "two thirds of its lifetime", timeout=30,
               message="e2 renews now")
    assert _requested(second) == []
    assert serial_over_https(https_port(second), acme_stack.root_pem) == new_serial
