"""HTTPS end to end: a real gateway, a real ACME CA (pebble), a real DNS server (knot).

Pebble validates DNS-01 by asking the test's knot, which the gateway updates with TSIG-signed
RFC 2136 updates (or through an exec hook). Clients verify the served certificate against
pebble's root, as a browser would against a public CA.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import http.server
import json
import secrets
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.certs.dns import DigitalOcean, Rfc2136, published, wait_until_visible
from gateway.config import DigitalOceanSettings, DnsSettings, Rfc2136Settings
from gateway.errors import CertificateError

from .acme_servers import (
    TSIG_KEY_NAME,
    Knot,
    Pebble,
    ari_cert_id,
    b64,
    key_pem,
    make_certificate,
    serial_bytes,
)
from .conftest import RunningGateway, Site, wait_until

ZONE = "gw.test"  # the Site fixture's domain
CHALLENGE_NAME = f"_acme-challenge.{ZONE}"

pytestmark = pytest.mark.slow


class AcmeStack:
    def __init__(self, root: Path, **pebble_options: Any) -> None:
        self.knot = Knot(root / "knot", ZONE).start()
        try:
            self.pebble = Pebble(root / "pebble", self.knot.port, **pebble_options).start()
        except BaseException:
            self.knot.stop()
            raise
        self.root_pem = self.pebble.root_pem()

    def stop(self) -> None:
        self.pebble.stop()
        self.knot.stop()

    def tls_settings(self, **acme: Any) -> dict[str, Any]:
        """[tls] for an acme-mode gateway using this CA and this DNS server."""
        return {
            "mode": "acme",
            "acme": {"directory_url": self.pebble.directory_url,
                     "ca_file": str(self.pebble.tls_ca_file), "email": "ops@gw.test",
                     "retry_initial_s": 3600.0, "retry_max_s": 3600.0, **acme},
            "dns": {"wait_servers": [f"127.0.0.1:{self.knot.port}"], "wait_timeout_s": 10.0},
            "rfc2136": {"server": "127.0.0.1", "port": self.knot.port,
                        "tsig_key_name": TSIG_KEY_NAME,
                        "tsig_secret_file": str(self.knot.secret_file)},
        }


@pytest.fixture(scope="session")
def acme_stack() -> Iterator[AcmeStack]:
    """pebble (rejecting 5 % of nonces, its default) + knot, for the whole session."""
    with tempfile.TemporaryDirectory(prefix="acme-") as root:
        stack = AcmeStack(Path(root))
        yield stack
        stack.stop()


# --- helpers -----------------------------------------------------------------------------------


def https_port(gateway: RunningGateway) -> int:
    return int(gateway.wait_for_event("gateway_listening")["https"].rpartition(":")[2])


def installed(gateway: RunningGateway, source: str = "issued") -> list[dict[str, Any]]:
    return [e for e in gateway.events
            if e.get("event") == "certificate_installed" and e.get("source") == source]


def wait_installed(gateway: RunningGateway, count: int = 1, timeout: float = 30) -> str:
    """Wait for the count-th issued certificate; return its serial (hex)."""
    events = wait_until(lambda: len(installed(gateway)) >= count and installed(gateway),
                        timeout, message=f"certificate #{count} installed")
    return str(events[count - 1]["serial"])


def client_context(root_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=root_pem.decode())
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def connect(port: int, host: str, context: ssl.SSLContext) -> http.client.HTTPSConnection:
    """A verified HTTPS connection to 127.0.0.1:port that sends SNI and Host `host`."""
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sock = context.wrap_socket(raw, server_hostname=host)
    return connection


def peer_serial(connection: http.client.HTTPSConnection) -> str:
    der = connection.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    return f"{x509.load_der_x509_certificate(der).serial_number:x}"


def get(connection: http.client.HTTPSConnection, path: str = "/-/health") -> tuple[int, bytes]:
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read()


def serial_over_https(port: int, root_pem: bytes, host: str = ZONE) -> str:
    connection = connect(port, host, client_context(root_pem))
    try:
        assert get(connection)[0] == 200
        return peer_serial(connection)
    finally:
        connection.close()


def curl(port: int, host: str, path: str, ca_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--resolve", f"{host}:{port}:127.0.0.1", "--cacert", str(ca_file),
         "-o", "/dev/null", "-D", "-", "-w", "%{ssl_verify_result}",
         f"https://{host}:{port}{path}"],
        capture_output=True, text=True, timeout=30)


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.root
def test_first_certificate_is_issued_stored_and_reused(site: Site, start_gateway: Any,
                                                       acme_stack: AcmeStack) -> None:
    """1. An empty certs/: the gateway orders gw.test + *.gw.test over DNS-01.
    2. curl, trusting only pebble's root, gets 200 from alice.gw.test with SNI; a name two
       labels deep does not match. 3. HSTS is on; the TXT records are gone; certs/ is private.
    4. `gateway cert status` tells. 5. A restart, and then an upgrade (a new worker), serve the
    stored certificate and order nothing.
    """
    site.add_tenant("alice")
    site.write_config(listen={"https_port": 0}, tls=acme_stack.tls_settings())
    gateway = start_gateway()
    serial = wait_installed(gateway)
    gateway.wait_running("alice")
    port = https_port(gateway)
    root_file = site.root / "pebble-root.pem"
    root_file.write_bytes(acme_stack.root_pem)

    answer = curl(port, f"alice.{ZONE}", "/data/items.json?_shape=array&_size=1", root_file)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith("HTTP/1.1 200")
    assert "\nstrict-transport-security: max-age=31536000\n" in answer.stdout
    assert answer.stdout.endswith("0")  # ssl_verify_result: OK
    too_deep = curl(port, f"a.alice.{ZONE}", "/", root_file)
    assert too_deep.returncode == 60, too_deep.stdout  # a wildcard covers one label only

    leaf = x509.load_pem_x509_certificate((site.root / "certs" / "certificate.pem").read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == ["*.gw.test", "gw.test"]
    assert f"{leaf.serial_number:x}" == serial
    assert acme_stack.knot.txt(CHALLENGE_NAME) == set()
    certs = site.root / "certs"
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in certs.iterdir()} == {
        "account.key": 0o600, "certificate.pem": 0o600, "certificate.json": 0o600}

    status = gateway.cli("cert", "status").stdout
    assert "names         gw.test, *.gw.test\n" in status
    assert "issuer        Pebble Intermediate CA" in status
    assert f"serial        {serial}\n" in status
    assert "(two thirds of its lifetime)" in status

    assert gateway.stop() == 0
    again = start_gateway()
    assert again.wait_for_event("certificate_installed")["source"] == "stored"
    assert serial_over_https(https_port(again), acme_stack.root_pem) == serial
    upgraded = again.cli("upgrade", check=False)
    assert upgraded.stdout.startswith("Upgraded: worker "), (upgraded.stderr, again.events)
    assert len(installed(again, "stored")) == 2
    assert serial_over_https(https_port(again), acme_stack.root_pem) == serial
    assert not [e for e in again.events if e.get("event") == "certificate_requesting"]


def test_forced_renewal_leaves_open_connections_alone(site: Site, start_gateway: Any,
                                                      acme_stack: AcmeStack) -> None:
    """1. A client keeps one HTTPS connection open, using it every 0.3 s.
    2. `gateway cert renew --force` installs a new certificate meanwhile.
    3. The open connection kept working with the old certificate, never reconnecting; a new
       connection gets the new serial.
    """
    site.write_config(listen={"https_port": 0}, tls=acme_stack.tls_settings())
    gateway = start_gateway()
    old_serial = wait_installed(gateway)
    port = https_port(gateway)
    connection = connect(port, ZONE, client_context(acme_stack.root_pem))
    held = connection.sock
    assert get(connection)[0] == 200
    assert peer_serial(connection) == old_serial

    renewal: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: renewal.update(
        result=gateway.cli("cert", "renew", "--force", "--json", check=False)))
    thread.start()
    statuses = []
    while thread.is_alive():
        statuses.append(get(connection)[0])
        thread.join(0.3)
    statuses.append(get(connection)[0])

    result = renewal["result"]
    assert result.returncode == 0, result.stderr
    new_serial = json.loads(result.stdout)["certificate"]["serial"]
    assert new_serial != old_serial
    assert set(statuses) == {200} and connection.sock is held
    assert peer_serial(connection) == old_serial
    connection.close()
    assert serial_over_https(port, acme_stack.root_pem) == new_serial


def test_bad_nonces_and_external_account_binding(site: Site, start_gateway: Any,
                                                 tmp_path: Path) -> None:
    """1. A pebble that rejects half of all nonces and requires External Account Binding.
    2. The gateway registers with its EAB key and gets a certificate, then renews it: the
       library retries a badNonce once, the gateway keeps retrying (acme_bad_nonce events).
    """
    hmac_key = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    stack = AcmeStack(tmp_path, nonce_reject_percent=50, eab_keys={"kid-1": hmac_key})
    try:
        (site.root / "eab.key").write_text(hmac_key + "\n")
        site.write_config(listen={"https_port": 0}, tls=stack.tls_settings(
            eab_kid="kid-1", eab_hmac_key_file="eab.key"))
        gateway = start_gateway()
        first = wait_installed(gateway)
        renewed = gateway.cli("cert", "renew", "--force", "--json", check=False)
        assert renewed.returncode == 0, renewed.stderr
        second = json.loads(renewed.stdout)["certificate"]["serial"]
        assert serial_over_https(https_port(gateway), stack.root_pem) == second != first
        assert [e for e in gateway.events if e.get("event") == "acme_bad_nonce"]
        assert gateway.stop() == 0
    finally:
        stack.stop()


DNS_HOOK = """#!/bin/sh
# add|remove NAME VALUE through knsupdate; exits 3 after the update while $DIR/fail exists.
echo "$1 $3" >> "{dir}/calls"
if [ "$1" = add ]; then change="add $2. 60 TXT \\"$3\\""; else change="delete $2. TXT \\"$3\\""; fi
printf 'server 127.0.0.1 {port}\\nzone {zone}.\\nupdate %s\\nsend\\n' "$change" |
    knsupdate -y "hmac-sha256:{key}:$(cat {secret})" || exit 1
if [ "$1" = add ] && [ -e "{dir}/fail" ]; then echo "the provider timed out" >&2; exit 3; fi
"""


def test_failing_dns_updates_leave_nothing_behind(site: Site, start_gateway: Any,
                                                  acme_stack: AcmeStack) -> None:
    """With the exec provider (a knsupdate script) that fails after adding a record:
    1. No certificate yet: HTTPS refuses the handshake, HTTP still redirects, no TXT is left.
    2. The hook works again: `gateway cert renew` issues; HTTPS serves it.
    3. It fails again: a forced renewal fails with the hook's message, every value it added
       was removed, and the first certificate is still served.
    """
    hook = site.root / "dns-hook"
    hook.write_text(DNS_HOOK.format(dir=site.root, port=acme_stack.knot.port, zone=ZONE,
                                    key=TSIG_KEY_NAME, secret=acme_stack.knot.secret_file))
    hook.chmod(0o755)
    (site.root / "fail").touch()
    tls = acme_stack.tls_settings()
    del tls["rfc2136"]
    tls["dns"]["provider"] = "exec"
    tls["exec"] = {"command": [str(hook)]}
    site.write_config(listen={"https_port": 0}, tls=tls)
    gateway = start_gateway()
    failed = gateway.wait_for_event("certificate_failed")
    assert failed["error"] == (f"{hook} add {CHALLENGE_NAME} failed (exit status 3):"
                               " the provider timed out")
    port = https_port(gateway)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        serial_over_https(port, acme_stack.root_pem)
    redirect = gateway.client.get("/x?y=1", headers={"host": ZONE})
    assert redirect.status_code == 308
    assert redirect.headers["location"] == f"https://{ZONE}:{port}/x?y=1"
    assert acme_stack.knot.txt(CHALLENGE_NAME) == set()
    assert "the provider timed out" in gateway.cli("cert", "status").stdout

    (site.root / "fail").unlink()
    assert gateway.cli("cert", "renew").stdout.startswith("Renewed.\n")
    serial = serial_over_https(port, acme_stack.root_pem)

    (site.root / "fail").touch()
    (site.root / "calls").unlink()
    refused = gateway.cli("cert", "renew", "--force", check=False)
    assert refused.returncode == 1
    assert refused.stderr == (f"Error: {hook} add {CHALLENGE_NAME} failed (exit status 3):"
                              " the provider timed out\n")
    calls = (site.root / "calls").read_text().split()  # [action, value, action, value, ...]
    assert calls[0::2] == ["add", "remove", "remove"]  # both values removed, the added one too
    assert calls[1] == calls[3] != calls[5]
    assert acme_stack.knot.txt(CHALLENGE_NAME) == set()
    assert serial_over_https(port, acme_stack.root_pem) == serial


def test_files_mode_reloads_its_certificate(site: Site, start_gateway: Any) -> None:
    """1. tls.mode = files serves the operator's certificate.
    2. New files + SIGHUP: new handshakes get the new certificate; so does `gateway reload`.
    3. Unusable files: the reload is refused with the reason, the last good one stays.
    """
    ca = make_certificate(["test files CA"], is_ca=True)
    ca_pem = ca[0].public_bytes(serialization.Encoding.PEM)

    def write_certificate() -> str:
        certificate, key = make_certificate([ZONE, f"*.{ZONE}"], issuer=ca)
        (site.root / "site.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        (site.root / "site.key").write_bytes(key_pem(key))
        return f"{certificate.serial_number:x}"

    first = write_certificate()
    site.write_config(listen={"https_port": 0},
                      tls={"mode": "files", "cert_file": "site.crt", "key_file": "site.key"})
    gateway = start_gateway()
    port = https_port(gateway)
    assert serial_over_https(port, ca_pem) == first

    second = write_certificate()
    gateway.signal(signal.SIGHUP)
    wait_until(lambda: serial_over_https(port, ca_pem) == second, message="SIGHUP reload")

    third = write_certificate()
    gateway.cli("reload")
    assert serial_over_https(port, ca_pem) == third
    assert f"serial        {third}\n" in gateway.cli("cert", "status").stdout

    (site.root / "site.key").write_bytes(key_pem(make_certificate(["other"])[1]))
    refused = gateway.cli("reload", check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("Error: tls.cert_file, tls.key_file: ")
    assert "not a usable certificate and key (KEY_VALUES_MISMATCH)" in refused.stderr
    assert serial_over_https(port, ca_pem) == third
    renew = gateway.cli("cert", "renew", check=False)
    assert renew.stderr == ('Error: tls.mode is "files": replace tls.cert_file and'
                            " tls.key_file, then run `gateway reload`\n")


def test_http_redirects_to_https_keeping_path_and_query(site: Site, start_gateway: Any) -> None:
    """Plain HTTP answers 308 to the same host, path and query on the HTTPS port; hosts that
    are not the gateway's get 404. HTTPS answers carry HSTS as configured."""
    ca = make_certificate(["test files CA"], is_ca=True)
    certificate, key = make_certificate([ZONE, f"*.{ZONE}"], issuer=ca)
    (site.root / "site.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (site.root / "site.key").write_bytes(key_pem(key))
    site.write_config(listen={"https_port": 0}, tls={
        "mode": "files", "cert_file": "site.crt", "key_file": "site.key",
        "hsts_max_age_s": 600, "hsts_include_subdomains": True})
    gateway = start_gateway()
    port = https_port(gateway)
    for host, path in ((f"alice.{ZONE}", "/db/table?_sort=id&q=%20x"), (ZONE, "/"),
                       (f"bob.{ZONE}:{gateway.port}", "/a%2Fb")):
        answer = gateway.client.post(path, headers={"host": host}, content=b"kept by 308")
        assert answer.status_code == 308, host
        assert answer.headers["location"] == f"https://{host.partition(':')[0]}:{port}{path}"
    assert gateway.client.get("/", headers={"host": "example.org"}).status_code == 404
    # The access log reaches the test line by line: wait for both entries, not the first one.
    wait_until(lambda: {(e.get("host"), e.get("status")) for e in gateway.access}
               >= {(ZONE, 308), ("example.org", 404)}, message="both redirects logged")
    connection = connect(port, ZONE, client_context(
        ca[0].public_bytes(serialization.Encoding.PEM)))
    connection.request("GET", "/")
    response = connection.getresponse()
    response.read()
    assert response.getheader("strict-transport-security") == "max-age=600; includeSubDomains"
    connection.close()


class StubHandler(http.server.BaseHTTPRequestHandler):
    """A stub server's handler: JSON answers, nothing logged on stderr."""

    def answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class StubServer:
    """Serves `handler` on a free loopback port from a background thread until close()."""

    def __init__(self, handler: type[StubHandler]) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RenewalInfoStub(StubServer):
    """The CA's directory plus a renewalInfo resource (RFC 9773) that pebble 2.4 lacks.

    /dir is pebble's directory with "renewalInfo" added; /renewal-info/<certID> answers the
    window `windows` gives for that certID (the first certificate's window is in the past).
    """

    def __init__(self, pebble: Pebble) -> None:
        self.pebble = pebble
        self.asked: list[str] = []
        self.windows: dict[str, tuple[dt.datetime, dt.datetime]] = {}
        stub = self

        class Handler(StubHandler):
            def do_GET(self) -> None:
                if self.path == "/dir":
                    directory = json.loads(stub.pebble.get(stub.pebble.directory_url))
                    directory["renewalInfo"] = f"{stub.url}/renewal-info"
                    body = directory
                else:
                    cert_id = self.path.rpartition("/")[2]
                    stub.asked.append(cert_id)
                    start, end = stub.window(cert_id)
                    body = {"suggestedWindow": {"start": start.isoformat(),
                                                "end": end.isoformat()}}
                self.answer(200, body, {"content-type": "application/json",
                                        "retry-after": "21600"})

        super().__init__(Handler)

    def window(self, cert_id: str) -> tuple[dt.datetime, dt.datetime]:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        if not self.windows:
            self.windows[cert_id] = (now - dt.timedelta(hours=2), now - dt.timedelta(hours=1))
        return self.windows.setdefault(cert_id, (now + dt.timedelta(days=30),
                                                 now + dt.timedelta(days=31)))



def test_renewal_follows_the_cas_renewal_information(site: Site, start_gateway: Any,
                                                     acme_stack: AcmeStack) -> None:
    """1. The CA's directory offers renewalInfo (a stub in front of pebble).
    2. For the first certificate the window is already open: the gateway renews at once.
    3. For the second, the window is in 30 days: `cert status` plans the renewal inside it.
    """
    stub = RenewalInfoStub(acme_stack.pebble)
    try:
        site.write_config(listen={"https_port": 0}, tls=acme_stack.tls_settings(
            directory_url=f"{stub.url}/dir"))
        gateway = start_gateway()
        first = wait_installed(gateway, 1)
        second = wait_installed(gateway, 2)
        requested = [e for e in gateway.events if e.get("event") == "certificate_requesting"]
        assert [e["reason"] for e in requested] == [
            "no certificate yet", "the CA's renewal window (ARI)"]
        certificate = x509.load_pem_x509_certificate(
            (site.root / "certs" / "certificate.pem").read_bytes())
        assert f"{certificate.serial_number:x}" == second != first
        cert_id = ari_cert_id(certificate)
        wait_until(lambda: cert_id in stub.asked, message="renewalInfo asked for the 2nd cert")
        assert len(stub.asked) == 2
        assert stub.asked[0].endswith("." + b64(serial_bytes(int(first, 16))))
        status = json.loads(gateway.cli("cert", "status", "--json").stdout)
        start, end = stub.windows[cert_id]
        assert start <= dt.datetime.fromisoformat(status["next_renewal"]) <= end
        assert status["renewal_basis"] == "the CA's renewal window (ARI)"
        assert gateway.stop() == 0
    finally:
        stub.close()


def test_certificate_commands_say_when_tls_is_off(site: Site, start_gateway: Any) -> None:
    gateway = start_gateway()
    result = gateway.cli("cert", "status", check=False)
    assert result.returncode == 1
    assert result.stderr == ('Error: tls.mode is "off": the gateway serves plain HTTP and has'
                             " no certificate\n")
    assert json.loads(gateway.cli("cert", "status", "--json").stdout) == {
        "mode": "off", "certificate": None, "next_renewal": None,
        "renewal_basis": 'tls.mode is "off": the gateway serves plain HTTP and has no certificate',
    }



# --- DNS providers -----------------------------------------------------------------------------


def dns_settings(stack: AcmeStack, **overrides: Any) -> DnsSettings:
    settings: dict[str, Any] = {"zone": ZONE, "wait_timeout_s": 5.0,
                                "wait_servers": (f"127.0.0.1:{stack.knot.port}",)}
    return DnsSettings(**{**settings, **overrides})


def rfc2136(stack: AcmeStack, secret_file: Path) -> Rfc2136:
    settings = Rfc2136Settings(server="127.0.0.1", port=stack.knot.port,
                               tsig_key_name=TSIG_KEY_NAME, tsig_secret_file=secret_file)
    return Rfc2136(settings, dns_settings(stack))


async def test_rfc2136_publishes_both_values_and_removes_only_its_own(
        acme_stack: AcmeStack) -> None:
    """1. Another order's value is already there. 2. Both values are published in one update
    and visible on the zone's server inside the block. 3. Afterwards only the other value is
    left, also when the block fails."""
    knot = acme_stack.knot
    knot.set_txt(CHALLENGE_NAME, ["someone-elses"])
    provider = rfc2136(acme_stack, knot.secret_file)
    records = {CHALLENGE_NAME: ["value-apex", "value-wildcard"]}
    async with published(provider, records, dns_settings(acme_stack)):
        assert knot.txt(CHALLENGE_NAME) == {"someone-elses", "value-apex", "value-wildcard"}
    assert knot.txt(CHALLENGE_NAME) == {"someone-elses"}
    with pytest.raises(RuntimeError):
        async with published(provider, records, dns_settings(acme_stack)):
            raise RuntimeError("validation failed")
    assert knot.txt(CHALLENGE_NAME) == {"someone-elses"}
    knot.set_txt(CHALLENGE_NAME, [])


async def test_rfc2136_with_a_wrong_key_is_refused(acme_stack: AcmeStack,
                                                   tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.secret"
    wrong.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
    provider = rfc2136(acme_stack, wrong)
    with pytest.raises(CertificateError) as info:
        async with published(provider, {CHALLENGE_NAME: ["v"]}, dns_settings(acme_stack)):
            pass
    assert str(info.value) == (
        f"127.0.0.1:{acme_stack.knot.port} refused the DNS update (PeerBadSignature): check"
        " tls.rfc2136.tsig_key_name, the secret, and the server's update policy")
    assert acme_stack.knot.txt(CHALLENGE_NAME) == set()


async def test_values_that_never_show_up_time_out(acme_stack: AcmeStack) -> None:
    settings = dns_settings(acme_stack, wait_timeout_s=0.5)
    with pytest.raises(CertificateError) as info:
        await wait_until_visible({CHALLENGE_NAME: ["never-published"]}, settings)
    assert str(info.value) == (
        f"127.0.0.1:{acme_stack.knot.port} still does not answer the TXT values for"
        f" {CHALLENGE_NAME} after 0.5 s (tls.dns.wait_timeout_s)")


class DigitalOceanStub(StubServer):
    """The slice of DigitalOcean's domain records API the provider uses, in memory."""

    def __init__(self) -> None:
        self.records: dict[int, dict[str, Any]] = {1: {
            "id": 1, "type": "TXT", "name": "_acme-challenge", "data": "someone-elses"}}
        self.seen: list[tuple[str, str, str]] = []
        stub = self

        class Handler(StubHandler):
            def do_POST(self) -> None:
                record = json.loads(self.rfile.read(int(self.headers["content-length"])))
                record["id"] = max(stub.records) + 1
                stub.records[record["id"]] = record
                self.answer(201, {"domain_record": record})

            def do_GET(self) -> None:
                listed = [r for r in stub.records.values()
                          if f"name={r['name']}.{ZONE}" in self.path]
                self.answer(200, {"domain_records": listed})

            def do_DELETE(self) -> None:
                stub.records.pop(int(self.path.rpartition("/")[2]))
                self.answer(204, None)

            def answer(self, status: int, body: Any,
                       headers: dict[str, str] | None = None) -> None:
                stub.seen.append((self.command, self.path, self.headers["authorization"]))
                super().answer(status, body, headers)

        super().__init__(Handler)
        self.url += "/v2"


async def test_digitalocean_adds_and_removes_records_by_value(tmp_path: Path) -> None:
    stub = DigitalOceanStub()
    try:
        (tmp_path / "token").write_text("do-token\n")
        provider = DigitalOcean(
            DigitalOceanSettings(token_file=tmp_path / "token", api_url=stub.url),
            DnsSettings(zone=ZONE, ttl_s=10))
        await provider.add(CHALLENGE_NAME, ["a", "b"])
        assert sorted((r["name"], r["data"], r.get("ttl")) for r in stub.records.values()) == [
            ("_acme-challenge", "a", 30), ("_acme-challenge", "b", 30),
            ("_acme-challenge", "someone-elses", None)]
        await provider.remove(CHALLENGE_NAME, ["a", "b"])
        assert [r["data"] for r in stub.records.values()] == ["someone-elses"]
        assert {auth for _, _, auth in stub.seen} == {"Bearer do-token"}
        assert [(method, path.partition("?")[0]) for method, path, _ in stub.seen] == [
            ("POST", "/v2/domains/gw.test/records"), ("POST", "/v2/domains/gw.test/records"),
            ("GET", "/v2/domains/gw.test/records"), ("DELETE", "/v2/domains/gw.test/records/2"),
            ("DELETE", "/v2/domains/gw.test/records/3")]
    finally:
        stub.close()
