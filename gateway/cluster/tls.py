"""The cluster's own CA and node certificates, and the mutual-TLS contexts made from them.

Edges and hosts talk over TCP with mutual TLS: each side shows a certificate signed by the
cluster CA (`gateway cluster init`) and accepts only peers with one. The CA key stays where
`init` ran; `gateway cluster cert NODE` issues a node's ca.pem, node.pem and node.key, to be
copied to that node's cluster.tls_dir, with the cluster's secret.key (every node has the same:
the key that encrypts the ACME certificate's private key in etcd, cluster/certs.py). Peers are
identified by the CA alone (any node may talk to any node), not by name: host addresses change
as tenants move.
"""

from __future__ import annotations

import datetime
import os
import re
import secrets
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigError

CA_CERT, CA_KEY = "ca.pem", "ca.key"
NODE_CERT, NODE_KEY = "node.pem", "node.key"
SECRET = "secret.key"  # every node's: encrypts the ACME certificate's key in etcd (certs.py)
_DAY = datetime.timedelta(days=1)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_ca(folder: Path, *, days: int = 3650) -> Path:
    """Make the cluster CA in `folder` (ca.pem, ca.key 0600); refuses to replace one."""
    if (folder / CA_KEY).exists():
        raise ConfigError(f"{folder / CA_KEY} exists: the cluster already has a CA")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway cluster CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY).not_valid_after(now + days * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(folder / CA_KEY, _key_pem(key), 0o600)
    _write(folder / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _make_secret(folder)
    return folder / CA_CERT


def _make_secret(folder: Path) -> None:
    if not (folder / SECRET).exists():  # a CA made before there were secrets gets one now
        _write(folder / SECRET, secrets.token_hex(32).encode() + b"\n", 0o600)


def read_secret(folder: Path) -> bytes:
    """The cluster's shared secret (made by `init`, copied to each node by `cert NODE`)."""
    try:
        secret = (folder / SECRET).read_bytes().strip()
    except FileNotFoundError:
        raise ConfigError(f"{folder / SECRET}: missing; `gateway cluster cert NODE` copies it"
                          " from the folder where `gateway cluster init` ran") from None
    if len(secret) < 32:
        raise ConfigError(f"{folder / SECRET}: too short to be the cluster's secret")
    return secret


def issue_node(ca_folder: Path, node: str, out: Path, *, days: int = 825) -> Path:
    """Sign a certificate for `node` (both a TLS server and client) into `out`."""
    if not re.fullmatch(r"[a-z0-9-]{1,63}", node):
        raise ConfigError(f"{node!r} is not a node name: use 1 to 63 characters from a-z, 0-9"
                          " and '-'")
    try:
        ca_key = serialization.load_pem_private_key((ca_folder / CA_KEY).read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate((ca_folder / CA_CERT).read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no cluster CA in {ca_folder}: run `gateway cluster init`") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{ca_folder / CA_KEY}: not the cluster CA's key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY).not_valid_after(now + days * _DAY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(node)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(out / NODE_KEY, _key_pem(key), 0o600)
    _write(out / NODE_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    if (out / CA_CERT).resolve() != (ca_folder / CA_CERT).resolve():
        _write(out / CA_CERT, (ca_folder / CA_CERT).read_bytes(), 0o644)
        _make_secret(ca_folder)
        _write(out / SECRET, (ca_folder / SECRET).read_bytes(), 0o600)
    return out / NODE_CERT


def _load(context: ssl.SSLContext, folder: Path) -> ssl.SSLContext:
    try:
        context.load_verify_locations(folder / CA_CERT)
        context.load_cert_chain(folder / NODE_CERT, folder / NODE_KEY)
    except (FileNotFoundError, ssl.SSLError) as exc:
        raise ConfigError(f"cluster TLS files in {folder}: {exc}; make them with"
                          " `gateway cluster cert NODE`") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def server_context(folder: Path) -> ssl.SSLContext:
    """A host's listener: its node certificate; clients must show one from the cluster CA."""
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), folder)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(folder: Path) -> ssl.SSLContext:
    """An edge's connections: its node certificate; the host's must be from the cluster CA."""
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), folder)
    context.check_hostname = False  # peers are known by the CA, not by name (module docstring)
    context.verify_mode = ssl.CERT_REQUIRED
    return context
