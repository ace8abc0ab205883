"""One ACME certificate for the whole cluster: the leader obtains and renews it, every node
loads it from etcd and swaps it live (issue 17, point 6).

    /gateway/certificate  {"chain": PEM, "key": base64(nonce + AES-GCM(key PEM)),
                           "directory_url": ...}, written by the leader only (fenced)

The leader runs the ACME renewal of tls.mode = "acme" (certs/renewal.py) unchanged, and
publishes what it installs. The private key is encrypted at rest in etcd (and in etcd's
snapshots) with AES-256-GCM under a key derived (HKDF-SHA256) from the cluster's secret.key in
cluster.tls_dir, which `gateway cluster init` makes and `gateway cluster cert NODE` copies to
each node; the certificate chain is the associated data, so a key cannot be paired with
another chain. Every node installs a published certificate into its listener (new handshakes
get it, open connections keep theirs) and keeps a copy in certs/ (a restart without etcd serves
it). A follower never talks to the CA: one account, one order, no rate limits multiplied.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..certs.renewal import AcmeCertificates
from ..certs.store import StoredCertificate
from ..config import Config
from ..errors import CertificateError, ConfigError
from ..tls import LiveContext
from . import operate, tls
from .etcd import Etcd, EtcdUnavailable, follow
from .keys import LEADER, ROOT

log = logging.getLogger(__name__)

CERTIFICATE = ROOT + "certificate"
_END = b"-----END CERTIFICATE-----"


def certificate_cipher(secret: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=b"gateway cluster: ACME certificate key").derive(secret)
    return AESGCM(key)


def seal(cipher: AESGCM, chain_pem: bytes, key_pem: bytes, directory_url: str) -> str:
    """The etcd value for a certificate: its chain in clear, its key encrypted."""
    nonce = os.urandom(12)
    sealed = nonce + cipher.encrypt(nonce, key_pem, chain_pem)
    return json.dumps({"chain": chain_pem.decode(), "key": base64.b64encode(sealed).decode(),
                       "directory_url": directory_url})


def unseal(cipher: AESGCM, value: str) -> tuple[bytes, bytes, str]:
    """(chain, key, directory_url) from an etcd value; CertificateError if it is not ours."""
    try:
        published = json.loads(value)
        chain_pem = str(published["chain"]).encode()
        sealed = base64.b64decode(published["key"])
        key_pem = cipher.decrypt(sealed[:12], sealed[12:], chain_pem)
        return chain_pem, key_pem, str(published["directory_url"])
    except (ValueError, KeyError, TypeError, InvalidTag) as exc:  # JSON, base64, AES-GCM
        raise CertificateError("the certificate in etcd cannot be read with this node's"
                               f" {tls.SECRET} ({exc.__class__.__name__}): is it the same as"
                               " the other nodes'?") from None


def key_part(pem: bytes) -> bytes:
    """The private key after the chain in certs/certificate.pem (store.py)."""
    return pem[pem.rfind(_END) + len(_END):].lstrip(b"\n")


class ClusterCertificates(AcmeCertificates):
    """tls.mode = "acme" in a cluster: renewal runs only while this node leads."""

    def __init__(self, config: Config, live: LiveContext) -> None:
        super().__init__(config, live)
        cluster = config.gateway.cluster
        if cluster.tls_dir is None:  # config.load_config always resolves it
            raise ConfigError("cluster.tls_dir: not set")
        self.node = cluster.node
        self.cipher = certificate_cipher(tls.read_secret(cluster.tls_dir))
        self.etcd = Etcd(cluster.etcd_endpoints)
        self.leader = ""  # the leader key's value: "<node> <lease>"
        self._synced = asyncio.Event()  # the published certificate has been read once
        self._leadership = asyncio.Event()  # set on every change of leader

    @property
    def leading(self) -> bool:
        return self.leader.split(" ")[0] == self.node

    async def stop(self) -> None:
        await super().stop()
        await self.etcd.close()

    async def _run(self) -> None:
        await asyncio.gather(follow(self.etcd, CERTIFICATE, self._published),
                             follow(self.etcd, LEADER, self._leader_changed),
                             self._renew_while_leading())

    async def _leader_changed(self, found: dict[str, str]) -> None:
        self.leader = found.get("", "")
        self._leadership.set()

    async def _renew_while_leading(self) -> None:
        """The ACME renewal task of one machine, while this node leads, after the published
        certificate has been read (a new leader must not order one the cluster has)."""
        await self._synced.wait()
        while True:
            while not self.leading:
                self._leadership.clear()
                await self._leadership.wait()
            await self._publish_if_unpublished()
            renewing = asyncio.ensure_future(super()._run())
            try:
                while self.leading:
                    self._leadership.clear()
                    await self._leadership.wait()
            finally:  # leadership lost, or this node stopping
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
            log.info("certificate_renewal_handed_over", extra={"leader": self.leader})

    async def _published(self, found: dict[str, str]) -> None:
        value = found.get("")
        try:
            if value is not None:
                await self._load_published(value)
        except CertificateError as exc:
            log.error("certificate_unusable", extra={"error": str(exc)})
        self._synced.set()

    async def _load_published(self, value: str) -> None:
        chain_pem, key_pem, directory_url = unseal(self.cipher, value)
        if self.current is not None and self.current.chain_pem == chain_pem:
            return  # ours (we published it) or already installed
        stored = await asyncio.to_thread(self.store.save, chain_pem, key_pem, directory_url)
        await self._install(stored, "cluster")

    async def _publish_if_unpublished(self) -> None:
        """A new leader whose certificate the cluster lacks (the first, or one machine that
        became a cluster) publishes it rather than ordering another."""
        with contextlib.suppress(EtcdUnavailable):
            if self.current is not None and await self.etcd.get(CERTIFICATE) is None:
                await self._publish(self.current)

    async def _renew(self, forced: str | None) -> bool:
        renewed = await super()._renew(forced)
        if renewed and self.current is not None:
            await self._publish(self.current)
        return renewed

    async def _publish(self, stored: StoredCertificate) -> None:
        pem = await asyncio.to_thread(stored.path.read_bytes)
        value = seal(self.cipher, stored.chain_pem, key_part(pem), stored.directory_url)
        try:
            published = await self.etcd.put_if_owner(LEADER, self.leader, CERTIFICATE, value)
        except EtcdUnavailable as exc:  # the next renewal publishes; this node serves it now
            log.error("certificate_unpublished", extra={"error": str(exc)})
            return
        if not published:
            log.warning("certificate_unpublished", extra={"error": "no longer the leader"})
            return
        log.info("certificate_published", extra=stored.info.describe())

    async def renew(self, force: bool) -> dict[str, Any]:
        """On the leader, renew; elsewhere ask the leader to (operate.py's requests) and answer
        what it says: its certificate reaches this node through etcd right after."""
        if self.leading:
            return await super().renew(force)
        leader = self.leader.split(" ")[0]
        if not leader:
            raise CertificateError("the cluster has no leader yet to obtain the certificate:"
                                   " try again in a few seconds")
        timeout_s = int(self.tls.acme.timeout_s + self.tls.dns.wait_timeout_s) + 30
        answer = await operate.ask(self.etcd, leader, operate.RENEW_CERTIFICATE, timeout_s,
                                   force="1" if force else "")
        if not answer["ok"]:
            raise CertificateError(f"{leader}: {answer['error']}")
        return {**answer["result"], "renewed_by": leader}

    def status(self) -> dict[str, Any]:
        status = super().status()
        if not self.leading:
            leader = self.leader.split(" ")[0] or "no node yet"
            status.update(next_renewal=None, renewing=False,
                          renewal_basis=f"the cluster's leader ({leader}) renews it; this node"
                          " loads what the leader publishes")
        return status
