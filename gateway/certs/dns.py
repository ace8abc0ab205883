"""DNS-01 records: publish TXT values, wait until the zone's servers answer them, remove them.

Three providers behind one narrow seam (`add`/`remove` of TXT values on one name):

    rfc2136       a dynamic update (RFC 2136), TSIG-signed (RFC 8945): BIND, Knot, PowerDNS, ...
    digitalocean  DigitalOcean's DNS API, with a token
    exec          the operator's program, run as COMMAND... add|remove NAME VALUE

The apex and the wildcard name share one record name (_acme-challenge.<domain>) and need both
values at once: rfc2136 sends them in one update, and values are removed one by one (never the
whole RRset) so that a concurrent order's values survive. `published()` removes what it added
on every way out, failures included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update
import httpx

from ..config import (
    DigitalOceanSettings,
    DnsSettings,
    ExecSettings,
    Rfc2136Settings,
    TlsSettings,
    parse_server,
)
from ..errors import CertificateError
from .store import read_secret

log = logging.getLogger(__name__)

Records = Mapping[str, Sequence[str]]  # record name -> TXT values
_QUERY_TIMEOUT_S = 3.0
_POLL_INTERVAL_S = 0.5


class DnsProvider(Protocol):
    async def add(self, name: str, values: Sequence[str]) -> None: ...

    async def remove(self, name: str, values: Sequence[str]) -> None: ...


def dns_provider(tls: TlsSettings) -> DnsProvider:
    provider = tls.dns.provider
    if provider == "rfc2136":
        return Rfc2136(tls.rfc2136, tls.dns)
    if provider == "digitalocean":
        return DigitalOcean(tls.digitalocean, tls.dns)
    return ExecHook(tls.exec)


@contextlib.asynccontextmanager
async def published(provider: DnsProvider, records: Records,
                    settings: DnsSettings) -> AsyncIterator[None]:
    """Publish `records`, wait until the zone's servers answer them; remove them on the way out."""
    try:
        for name, values in records.items():
            await provider.add(name, values)
        await wait_until_visible(records, settings)
        yield
    finally:
        for name, values in records.items():
            try:
                await provider.remove(name, values)
            except CertificateError as exc:
                log.error("dns_cleanup_failed", extra={"record": name, "error": str(exc)})


T = TypeVar("T")


async def _for_each(items: Sequence[T], action: Callable[[T], Awaitable[object]]) -> None:
    """Do `action` for every item even if some fail (a removal must not stop at the first
    error and leave the rest behind); then raise the first error."""
    failures: list[CertificateError] = []
    for item in items:
        try:
            await action(item)
        except CertificateError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


async def wait_until_visible(records: Records, settings: DnsSettings) -> None:
    """Poll every server that answers for the zone until each has every value."""
    servers = await _wait_servers(settings)
    deadline = time.monotonic() + settings.wait_timeout_s
    started = time.monotonic()
    while True:
        missing = [
            (server, name) for server in servers for name, values in records.items()
            if not set(values) <= await _txt_values(server, name)
        ]
        if not missing:
            log.info("dns_records_visible", extra={
                "records": sorted(records), "servers": [_show(s) for s in servers],
                "seconds": round(time.monotonic() - started, 3)})
            return
        if time.monotonic() > deadline:
            server, name = missing[0]
            raise CertificateError(
                f"{_show(server)} still does not answer the TXT values for {name} after"
                f" {settings.wait_timeout_s:g} s (tls.dns.wait_timeout_s)")
        await asyncio.sleep(_POLL_INTERVAL_S)


async def _wait_servers(settings: DnsSettings) -> list[tuple[str, int]]:
    if settings.wait_servers:
        named = [parse_server(s) for s in settings.wait_servers]
        return [a for host_port in named if host_port for a in await _addresses(*host_port)]
    try:
        answer = await dns.asyncresolver.resolve(settings.zone, "NS")
    except dns.exception.DNSException as exc:
        raise CertificateError(f"cannot find the name servers of {settings.zone}: {exc}"
                               " (set tls.dns.zone, or tls.dns.wait_servers)") from None
    names = sorted(str(ns.target).rstrip(".") for ns in answer)
    return [address for name in names for address in await _addresses(name, 53)]


async def _addresses(host: str, port: int) -> list[tuple[str, int]]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise CertificateError(f"cannot resolve the name server {host}: {exc}") from None
    return sorted({(str(info[4][0]), port) for info in infos})


async def _txt_values(server: tuple[str, int], name: str) -> set[str]:
    query = dns.message.make_query(name, dns.rdatatype.TXT)
    query.flags &= ~dns.flags.RD  # ask the authoritative server itself, not its cache
    try:
        response, _ = await dns.asyncquery.udp_with_fallback(
            query, server[0], port=server[1], timeout=_QUERY_TIMEOUT_S)
    except (dns.exception.DNSException, OSError):
        return set()
    return {
        b"".join(rdata.strings).decode(errors="replace")
        for rrset in response.answer if rrset.rdtype == dns.rdatatype.TXT for rdata in rrset
    }


def _show(server: tuple[str, int]) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Rfc2136:
    """Dynamic updates over TCP, signed with a TSIG key when one is configured."""

    def __init__(self, settings: Rfc2136Settings, dns_settings: DnsSettings) -> None:
        self.settings = settings
        self.zone = dns_settings.zone
        self.ttl = dns_settings.ttl_s

    async def add(self, name: str, values: Sequence[str]) -> None:
        await self._update(name, values, add=True)

    async def remove(self, name: str, values: Sequence[str]) -> None:
        await self._update(name, values, add=False)

    async def _update(self, name: str, values: Sequence[str], *, add: bool) -> None:
        update = dns.update.UpdateMessage(self.zone, keyring=self._tsig_key())
        owner = dns.name.from_text(name)
        for value in values:
            text = f'"{value}"'  # DNS-01 values are base64url: nothing to escape
            if add:
                update.add(owner, self.ttl, dns.rdatatype.TXT, text)
            else:
                update.delete(owner, dns.rdatatype.TXT, text)
        settings = self.settings
        where = f"{settings.server}:{settings.port}"
        [(address, port), *_] = await _addresses(settings.server, settings.port)
        try:
            response = await dns.asyncquery.tcp(update, address, port=port, timeout=10)
        except dns.tsig.PeerError as exc:
            # Knot answers a signed update its ACL forbids with BADKEY, even when the key is
            # right: check both the key and the server's update policy.
            raise CertificateError(
                f"{where} refused the DNS update ({type(exc).__name__}): check"
                " tls.rfc2136.tsig_key_name, the secret, and the server's update policy") from None
        except (OSError, dns.exception.DNSException) as exc:
            raise CertificateError(f"cannot send the DNS update to {where}: {exc}") from None
        if response.rcode() != dns.rcode.NOERROR:
            raise CertificateError(
                f"{where} refused the DNS update for {name}: {dns.rcode.to_text(response.rcode())}"
                " (check the zone, tls.dns.zone, and the server's update policy)")

    def _tsig_key(self) -> dns.tsig.Key | None:
        settings = self.settings
        if settings.tsig_secret_file is None:
            return None
        secret = read_secret(settings.tsig_secret_file, "tls.rfc2136.tsig_secret_file")
        try:
            key = dns.tsig.Key(settings.tsig_key_name, secret, settings.tsig_algorithm)
        except (ValueError, dns.exception.DNSException) as exc:
            raise CertificateError(f"{settings.tsig_secret_file}: not a TSIG secret ({exc})"
                                   ) from None
        return key


class DigitalOcean:
    """https://docs.digitalocean.com/reference/api/api-reference/#tag/Domain-Records"""

    def __init__(self, settings: DigitalOceanSettings, dns_settings: DnsSettings) -> None:
        self.settings = settings
        self.zone = dns_settings.zone
        self.ttl = max(30, dns_settings.ttl_s)  # the API's smallest TTL

    async def add(self, name: str, values: Sequence[str]) -> None:
        async with self._client() as client:
            for value in values:
                record = {"type": "TXT", "name": self._relative(name), "data": value,
                          "ttl": self.ttl}
                await self._call(client, "POST", f"/domains/{self.zone}/records", json=record)

    async def remove(self, name: str, values: Sequence[str]) -> None:
        async with self._client() as client:
            answer = await self._call(client, "GET", f"/domains/{self.zone}/records",
                                      params={"type": "TXT", "name": name, "per_page": 200})
            ours = [r for r in answer.json().get("domain_records", []) if r.get("data") in values]
            await _for_each(ours, lambda record: self._call(
                client, "DELETE", f"/domains/{self.zone}/records/{record['id']}"))

    def _relative(self, name: str) -> str:
        return "@" if name == self.zone else name.removesuffix("." + self.zone)

    def _client(self) -> httpx.AsyncClient:
        token = read_secret(self.settings.token_file, "tls.digitalocean.token_file")
        return httpx.AsyncClient(base_url=self.settings.api_url, timeout=30,
                                 headers={"authorization": f"Bearer {token}"})

    async def _call(self, client: httpx.AsyncClient, method: str, path: str,
                    **kwargs: object) -> httpx.Response:
        try:
            response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise CertificateError(f"cannot reach DigitalOcean's API: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("message", "")
            except ValueError:
                message = response.text[:200]
            raise CertificateError(f"DigitalOcean's API answered {response.status_code} to"
                                   f" {method} {path}: {message}")
        return response


class ExecHook:
    """The operator's program: COMMAND... add|remove NAME VALUE, once per value; exit 0 = done."""

    def __init__(self, settings: ExecSettings) -> None:
        self.settings = settings

    async def add(self, name: str, values: Sequence[str]) -> None:
        for value in values:
            await self._run("add", name, value)

    async def remove(self, name: str, values: Sequence[str]) -> None:
        await _for_each(values, lambda value: self._run("remove", name, value))

    async def _run(self, action: str, name: str, value: str) -> None:
        command = [*self.settings.command, action, name, value]
        shown = f"{self.settings.command[0]} {action} {name}"
        try:
            process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            raise CertificateError(f"cannot run {shown}: {exc.strerror}"
                                   " (tls.exec.command)") from None
        try:
            output, _ = await asyncio.wait_for(process.communicate(), self.settings.timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise CertificateError(f"{shown} did not finish within"
                                   f" {self.settings.timeout_s:g} s (tls.exec.timeout_s)") from None
        if process.returncode != 0:
            lines = output.decode(errors="replace").strip().splitlines()
            said = f": {lines[-1]}" if lines else ""
            raise CertificateError(f"{shown} failed (exit status {process.returncode}){said}")
