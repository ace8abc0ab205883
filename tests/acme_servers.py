"""A real ACME CA and a real DNS server on loopback: Debian's pebble and knot.

    knot    authoritative for a test zone, accepts TSIG-signed TXT updates (RFC 2136)
    pebble  the ACME CA; validates DNS-01 by asking that knot (its -dnsserver)

Both run on free loopback ports with their state in a temporary folder. Pebble's issuing root
is new on every start: `Pebble.root_pem()` fetches it. Pebble's own HTTPS listener uses a
certificate from a CA made here (`tls_ca_file`), a different trust anchor. Used by the tests
(session fixtures) and by bench/acme.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import secrets
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import dns.tsigkeyring
import dns.update
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TSIG_KEY_NAME = "gateway-acme"


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (knot listens on both)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {timeout} s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certificate(names: list[str], *, issuer: tuple[x509.Certificate,
                     ec.EllipticCurvePrivateKey] | None = None, is_ca: bool = False,
                     ip: str | None = None, days: int = 30
                     ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for `names` (self-signed, or signed by `issuer`), with its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = dt.datetime.now(dt.UTC)
    end = now + dt.timedelta(days=days)  # days < 0: already expired
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now - dt.timedelta(minutes=5), end - dt.timedelta(days=1)))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    )
    if is_ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    if not is_ca:
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        if ip:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def serial_bytes(serial: int) -> bytes:
    """The DER INTEGER content of a (positive) serial: big-endian, room for the sign bit."""
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big")


def ari_cert_id(certificate: x509.Certificate) -> str:
    """RFC 9773 4.1: base64url(AKI keyIdentifier) "." base64url(DER serial), unpadded."""
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    return f"{b64(aki.key_identifier or b'')}.{b64(serial_bytes(certificate.serial_number))}"


class Knot:
    """knotd, authoritative for `zone`, taking TSIG-signed TXT updates."""

    def __init__(self, directory: Path, zone: str) -> None:
        self.directory = directory
        self.zone = zone
        self.port = free_port()
        self.secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.secret_file = directory / "tsig.secret"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Knot:
        d = self.directory
        for sub in ("run", "db", "zones"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.secret_file.write_text(self.secret + "\n")
        (d / "zones" / f"{self.zone}.zone").write_text(
            f"$ORIGIN {self.zone}.\n$TTL 60\n"
            "@ SOA ns1 hostmaster 1 60 60 3600 60\n@ NS ns1\nns1 A 127.0.0.1\n"
            "@ A 127.0.0.1\n* A 127.0.0.1\n")
        # zonefile-sync -1 and journal-content none: every start is clean (no stale TXT).
        (d / "knot.conf").write_text(f"""\
server:
    rundir: "{d}/run"
    listen: 127.0.0.1@{self.port}
log:
  - target: stderr
    any: info
database:
    storage: "{d}/db"
key:
  - id: {TSIG_KEY_NAME}
    algorithm: hmac-sha256
    secret: {self.secret}
acl:
  - id: acme-update
    key: {TSIG_KEY_NAME}
    action: update
    update-type: [TXT]
template:
  - id: default
    storage: "{d}/zones"
    file: "%s.zone"
    zonefile-sync: -1
    journal-content: none
zone:
  - domain: {self.zone}
    acl: acme-update
""")
        self.log = open(d / "knotd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(["knotd", "-c", str(d / "knot.conf")],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.query(self.zone, "SOA").answer, 10, "knotd")
        return self

    def query(self, name: str, rdtype: str) -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1",
                             port=self.port, timeout=1)

    def txt(self, name: str) -> set[str]:
        return {b"".join(r.strings).decode() for rrset in self.query(name, "TXT").answer
                if rrset.rdtype == dns.rdatatype.TXT for r in rrset}

    def set_txt(self, name: str, values: list[str]) -> None:
        keyring = dns.tsigkeyring.from_text({TSIG_KEY_NAME: self.secret})
        update = dns.update.UpdateMessage(self.zone, keyring=keyring)
        update.delete(name + ".", "TXT")
        for value in values:
            update.add(name + ".", 60, "TXT", f'"{value}"')
        dns.query.tcp(update, "127.0.0.1", port=self.port, timeout=5)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.log.close()


class Pebble:
    """pebble on free ports, resolving DNS-01 names with `dns_port` on 127.0.0.1."""

    def __init__(self, directory: Path, dns_port: int, *, nonce_reject_percent: int = 5,
                 eab_keys: dict[str, str] | None = None, ocsp_url: str = "") -> None:
        self.directory = directory
        self.ocsp_url = ocsp_url  # put in issued certificates (testssl rates none as HIGH)
        self.dns_port = dns_port
        self.nonce_reject_percent = nonce_reject_percent
        self.eab_keys = eab_keys or {}
        self.port = free_port()
        self.management_port = free_port()
        self.tls_ca_file = directory / "tls-ca.pem"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> Pebble:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        ca = make_certificate(["pebble test TLS CA"], is_ca=True)
        leaf, leaf_key = make_certificate(["localhost"], issuer=ca, ip="127.0.0.1")
        self.tls_ca_file.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
        (d / "localhost.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        (d / "localhost.key").write_bytes(key_pem(leaf_key))
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(d / "localhost.pem"),
            "privateKey": str(d / "localhost.key"),
            "httpPort": free_port(), "tlsPort": free_port(), "ocspResponderURL": self.ocsp_url,
            "externalAccountBindingRequired": bool(self.eab_keys),
            "externalAccountMACKeys": self.eab_keys,
            "certificateValidityPeriod": 7776000,
        }}
        (d / "pebble.json").write_text(json.dumps(config, indent=2))
        environment = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0",
                       "PEBBLE_WFE_NONCEREJECT": str(self.nonce_reject_percent)}
        self.log = open(d / "pebble.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            ["pebble", "-config", str(d / "pebble.json"),
             "-dnsserver", f"127.0.0.1:{self.dns_port}"],
            stdout=self.log, stderr=subprocess.STDOUT, env=environment)
        wait_for(lambda: self.get(f"https://127.0.0.1:{self.port}/dir"), 20, "pebble")
        return self

    def get(self, url: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.tls_ca_file))
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return bytes(response.read())

    def root_pem(self) -> bytes:
        """The root that signs issued certificates (new on every pebble start)."""
        return self.get(f"https://127.0.0.1:{self.management_port}/roots/0")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.log.close()
