"""TLS and certificate logic without servers: config rules, renewal planning, the live context."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import warnings
from pathlib import Path
from typing import Any

import pytest
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.certs.acme import NewOrder, RenewalAdvice
from gateway.certs.certificate import CertificateInfo, read_certificate, renewal_certificate_id
from gateway.certs.renewal import (
    NOW,
    AcmeCertificates,
    backoff_s,
    next_attempt,
    renewal_due,
)
from gateway.certs.store import StoredCertificate
from gateway.config import load_config, parse_server
from gateway.errors import CertificateError, ConfigError
from gateway.tls import LiveContext, load_certificate

from .acme_servers import ari_cert_id, key_pem, make_certificate

DIRECTORY = "https://ca.test/dir"
NAMES = ["gw.test", "*.gw.test"]
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def write(tmp_path: Path, tls: str) -> Path:
    (tmp_path / "tenants").mkdir(exist_ok=True)
    path = tmp_path / "gateway.toml"
    path.write_text(f'domain = "gw.test"\n{tls}')
    return path


ACME = '[tls]\nmode = "acme"\n'


@pytest.mark.parametrize(("tls", "message"), [
    ('[tls]\nmode = "files"\n',
     'gateway.toml: tls.cert_file: required when tls.mode is "files"'),
    (ACME, 'gateway.toml: tls.rfc2136.server: required when tls.dns.provider is "rfc2136"'),
    (ACME + '[tls.dns]\nprovider = "digitalocean"\n',
     'gateway.toml: tls.digitalocean.token_file: required when tls.dns.provider is'
     ' "digitalocean"'),
    (ACME + '[tls.dns]\nprovider = "exec"\n',
     'gateway.toml: tls.exec.command: required when tls.dns.provider is "exec"'),
    (ACME + '[tls.acme]\neab_kid = "k"\n[tls.rfc2136]\nserver = "ns"\n',
     "gateway.toml: tls.acme.eab_kid, tls.acme.eab_hmac_key_file: set both or neither"),
    (ACME + '[tls.rfc2136]\nserver = "ns"\ntsig_key_name = "k"\n',
     "gateway.toml: tls.rfc2136.tsig_key_name, tls.rfc2136.tsig_secret_file: set both or"
     " neither"),
    (ACME + '[tls.rfc2136]\nserver = "ns"\n[tls.dns]\nzone = "other.test"\n',
     "gateway.toml: tls.dns.zone: the domain gw.test is not in the zone other.test"),
    (ACME + '[tls.rfc2136]\nserver = "ns"\n[tls.dns]\nwait_servers = ["ns:http"]\n',
     "gateway.toml: tls.dns.wait_servers: 'ns:http' is not a host or host:port"),
    (ACME + '[tls.rfc2136]\nserver = "ns"\n[tls.acme]\nretry_initial_s = 10.0\n'
            "retry_max_s = 5.0\n",
     "gateway.toml: tls.acme.retry_max_s: must not be below tls.acme.retry_initial_s"),
    ('[tls]\nmode = "files"\ncert_file = 3\n',
     "gateway.toml: tls.cert_file: expected a path, got 3"),
    ('[tls]\nhsts_max_age_s = -1\n',
     "gateway.toml: tls.hsts_max_age_s: must be 0 or more (0 tells browsers to forget the"
     " policy)"),
])
def test_tls_errors_name_the_key(tmp_path: Path, tls: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, tls))
    assert str(info.value) == message


def test_tls_paths_are_relative_to_the_config_and_zone_defaults_to_domain(
        tmp_path: Path) -> None:
    tls = load_config(write(tmp_path, ACME + '[tls.rfc2136]\nserver = "ns"\n'
                            'tsig_key_name = "k"\ntsig_secret_file = "tsig.secret"\n'
                            '[tls.acme]\nca_file = "/etc/ca.pem"\n')).gateway.tls
    assert tls.rfc2136.tsig_secret_file == tmp_path / "tsig.secret"
    assert tls.acme.ca_file == Path("/etc/ca.pem")
    assert tls.dns.zone == "gw.test"


@pytest.mark.parametrize(("server", "parsed"), [
    ("ns1.example.com", ("ns1.example.com", 53)), ("192.0.2.1:5353", ("192.0.2.1", 5353)),
    ("[2001:db8::1]:53", ("2001:db8::1", 53)), ("[2001:db8::1]", ("2001:db8::1", 53)),
    ("ns:0", None), ("ns:", None), (":53", None), ("[::1]x", None),
])
def test_parse_server(server: str, parsed: tuple[str, int] | None) -> None:
    assert parse_server(server) == parsed


def stored(days: int = 90, names: list[str] = NAMES, directory: str = DIRECTORY
           ) -> StoredCertificate:
    info = CertificateInfo(tuple(names), "Test CA", 1, START, START + dt.timedelta(days=days))
    return StoredCertificate(Path("certificate.pem"), b"", info, directory)


def test_renewal_is_due_at_two_thirds_of_the_lifetime() -> None:
    due = renewal_due(stored(90), NAMES, DIRECTORY, None)
    assert (due.at, due.basis) == (START + dt.timedelta(days=60), "two thirds of its lifetime")
    assert renewal_due(stored(6), NAMES, DIRECTORY, None).at == START + dt.timedelta(days=4)


def test_renewal_follows_the_cas_window_but_never_past_expiry() -> None:
    window = START + dt.timedelta(days=75)
    due = renewal_due(stored(90), NAMES, DIRECTORY, RenewalAdvice(window, None))
    assert (due.at, due.basis) == (window, "the CA's renewal window (ARI)")
    late = RenewalAdvice(START + dt.timedelta(days=200), None)
    assert renewal_due(stored(90), NAMES, DIRECTORY, late).at == START + dt.timedelta(days=90)
    no_ari = RenewalAdvice(None, None)
    assert renewal_due(stored(90), NAMES, DIRECTORY, no_ari).basis == "two thirds of its lifetime"


@pytest.mark.parametrize(("certificate", "basis"), [
    (None, "no certificate yet"),
    (stored(names=["gw.test"]), "the certificate does not cover gw.test, *.gw.test"),
    (stored(directory="https://other.test/dir"),
     "the certificate comes from another CA (tls.acme.directory_url)"),
])
def test_replace_at_once(certificate: StoredCertificate | None, basis: str) -> None:
    assert renewal_due(certificate, NAMES, DIRECTORY, None).at == NOW
    assert renewal_due(certificate, NAMES, DIRECTORY, None).basis == basis


def test_failures_back_off_doubling_up_to_the_maximum() -> None:
    assert [backoff_s(n, 60, 3600) for n in range(1, 9)] == [
        60, 120, 240, 480, 960, 1920, 3600, 3600]
    due = renewal_due(None, NAMES, DIRECTORY, None)
    failed_at = START + dt.timedelta(days=1)
    assert next_attempt(due, 0, None, 60, 3600) == NOW
    assert next_attempt(due, 3, failed_at, 60, 3600) == failed_at + dt.timedelta(seconds=240)
    later = renewal_due(stored(90), NAMES, DIRECTORY, None)
    assert next_attempt(later, 1, failed_at, 60, 3600) == later.at  # never earlier than due


def test_renewal_certificate_id_and_replaces() -> None:
    ca = make_certificate(["CA"], is_ca=True)
    certificate, _ = make_certificate(["gw.test"], issuer=ca)
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    assert renewal_certificate_id(pem) == ari_cert_id(certificate)
    order = NewOrder(identifiers=[messages.Identifier(typ=messages.IDENTIFIER_FQDN,
                                                      value="gw.test")], replaces="a.b")
    assert order.to_partial_json()["replaces"] == "a.b"
    assert "replaces" not in NewOrder(identifiers=order.identifiers).to_partial_json()


def test_read_certificate(tmp_path: Path) -> None:
    certificate, _ = make_certificate(["gw.test", "*.gw.test"],
                                      issuer=make_certificate(["Test CA"], is_ca=True))
    info = read_certificate(certificate.public_bytes(serialization.Encoding.PEM), "x.pem")
    assert info.names == ("gw.test", "*.gw.test") and info.issuer == "Test CA"
    assert info.serial == certificate.serial_number
    with pytest.raises(CertificateError) as info:
        read_certificate(b"nothing", "x.pem")
    assert str(info.value) == "x.pem: no PEM certificate found"


# --- the live context: in-memory handshakes -----------------------------------------------------


class Handshake:
    def __init__(self, listener: ssl.SSLContext, client: ssl.SSLContext) -> None:
        buffers = [ssl.MemoryBIO() for _ in range(4)]
        self.server = listener.wrap_bio(buffers[0], buffers[1], server_side=True)
        self.client = client.wrap_bio(buffers[2], buffers[3], server_hostname="alice.gw.test")
        self.buffers = buffers
        for _ in range(10):
            done = [self._step(self.client), self._step(self.server)]
            buffers[0].write(buffers[3].read())
            buffers[2].write(buffers[1].read())
            if all(done):
                return
        raise AssertionError("handshake did not finish")

    @staticmethod
    def _step(side: ssl.SSLObject) -> bool:
        try:
            side.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def serial(self) -> int:
        der = self.client.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def certificates(tmp_path: Path) -> tuple[ssl.SSLContext, list[tuple[Path, Path, int]]]:
    ca = make_certificate(["Test CA"], is_ca=True)
    files = []
    for n in range(2):
        certificate, key = make_certificate(["gw.test", "*.gw.test"], issuer=ca)
        chain, key_file = tmp_path / f"{n}.crt", tmp_path / f"{n}.key"
        chain.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key_pem(key))
        files.append((chain, key_file, certificate.serial_number))
    client = ssl.create_default_context(cadata=ca[0].public_bytes(
        serialization.Encoding.PEM).decode())
    return client, files


def test_live_context_refuses_handshakes_until_a_certificate_is_installed(
        certificates: tuple[ssl.SSLContext, list[tuple[Path, Path, int]]]) -> None:
    client, [(chain, key, serial), (chain2, key2, serial2)] = certificates
    live = LiveContext("1.2")
    with pytest.raises(ssl.SSLError, match="CALLBACK_FAILED"):  # the SNI callback said no
        Handshake(live.listener, client)
    live.install(load_certificate(chain, key, "1.2"))
    first = Handshake(live.listener, client)
    assert first.serial() == serial
    live.install(load_certificate(chain2, key2, "1.2"))
    assert Handshake(live.listener, client).serial() == serial2
    assert first.serial() == serial  # an open connection keeps what it shook hands with


def any_server(maximum: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
    """A client that trusts anything, offering TLS up to `maximum` and these ciphers."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum
    if ciphers:
        context.set_ciphers(ciphers)
    return context


def test_only_tls_12_and_up_with_aead_ciphers(
        certificates: tuple[ssl.SSLContext, list[tuple[Path, Path, int]]]) -> None:
    _, [(chain, key, _), _] = certificates
    live = LiveContext("1.2")
    live.install(load_certificate(chain, key, "1.2"))
    names = {c["name"] for c in live.listener.get_ciphers()}
    assert all(("GCM" in n or "CHACHA20" in n) and n.startswith(("ECDHE-", "TLS_"))
               for n in names), names
    with pytest.raises(ssl.SSLError):
        Handshake(live.listener, any_server(ssl.TLSVersion.TLSv1_1, "ALL:@SECLEVEL=0"))
    with pytest.raises(ssl.SSLError):  # TLS 1.2 with CBC ciphers only
        Handshake(live.listener, any_server(ssl.TLSVersion.TLSv1_2,
                                            "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA"))
    assert Handshake(live.listener, any_server(ssl.TLSVersion.TLSv1_2)).client.version() \
        == "TLSv1.2"
    live13 = LiveContext("1.3")
    live13.install(load_certificate(chain, key, "1.3"))
    with pytest.raises(ssl.SSLError):
        Handshake(live13.listener, any_server(ssl.TLSVersion.TLSv1_2))


def test_unusable_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "a.crt").write_text("not a certificate")
    with pytest.raises(CertificateError) as info:
        load_certificate(tmp_path / "a.crt", tmp_path / "b.key", "1.2")
    assert str(info.value) == f"{tmp_path}/b.key: No such file or directory"
    (tmp_path / "b.key").write_text("not a key")
    with pytest.raises(CertificateError) as info:
        load_certificate(tmp_path / "a.crt", tmp_path / "b.key", "1.2")
    assert str(info.value) == (f"{tmp_path}/a.crt, {tmp_path}/b.key: not a usable certificate"
                               " and key (not PEM)")


async def test_an_expired_stored_certificate_is_not_served(tmp_path: Path) -> None:
    """1. certs/ holds a certificate that expired. 2. At start it is not installed (HTTPS would
    refuse handshakes) and renewal starts at once. 3. The CA is unreachable: the failure is
    recorded with its reason, and retried later."""
    ca = make_certificate(["Test CA"], is_ca=True)
    certificate, key = make_certificate(["gw.test", "*.gw.test"], issuer=ca, days=-1)
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "certificate.pem").write_bytes(
        certificate.public_bytes(serialization.Encoding.PEM) + key_pem(key))
    config = load_config(write(tmp_path, ACME + '[tls.acme]\ndirectory_url ='
                               ' "https://127.0.0.1:1/dir"\n[tls.rfc2136]\nserver = "ns"\n'))
    certificates = AcmeCertificates(config, LiveContext("1.2"))
    await certificates.start()
    try:
        assert not certificates.live.has_certificate
        status = await wait_for_failure(certificates)
        assert status["certificate"] is None and status["failures"] == 1
        assert status["last_error"].startswith(
            "reading the directory: cannot reach the CA at https://127.0.0.1:1/dir: ")
        assert status["renewal_basis"] == "no certificate yet"
        retry = dt.datetime.fromisoformat(status["next_renewal"]) - dt.datetime.now(dt.UTC)
        assert 50 < retry.total_seconds() <= 60  # tls.acme.retry_initial_s
    finally:
        await certificates.stop()


async def wait_for_failure(certificates: AcmeCertificates) -> dict[str, Any]:
    for _ in range(200):
        status: dict[str, Any] = certificates.status()
        if status["failures"]:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError("no failure recorded")


def test_exec_hook_removes_every_value_even_when_one_removal_fails(tmp_path: Path) -> None:
    """A removal that fails must not leave the other values behind: every one is tried, then
    the first error is raised."""
    from gateway.certs.dns import ExecHook
    from gateway.config import ExecSettings

    calls = tmp_path / "calls"
    hook = tmp_path / "hook"
    hook.write_text(f'#!/bin/sh\necho "$1 $3" >> {calls}\n'
                    '[ "$3" = first ] && { echo "first is stuck" >&2; exit 4; }\nexit 0\n')
    hook.chmod(0o755)
    provider = ExecHook(ExecSettings(command=(str(hook),)))
    with pytest.raises(CertificateError, match="first is stuck"):
        asyncio.run(provider.remove("_acme-challenge.gw.test", ["first", "second"]))
    assert calls.read_text().split("\n")[:2] == ["remove first", "remove second"]
