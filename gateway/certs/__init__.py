"""Certificates for the HTTPS listener: where they come from, and keeping them current.

    files.py        tls.mode = "files": the operator's files, re-read on reload
    renewal.py      tls.mode = "acme": issue, schedule renewals, install (the background task)
    acme.py         the ACME conversation (the `acme` library, in worker threads)
    dns.py          DNS-01 records: rfc2136, digitalocean, exec; waiting; cleanup
    store.py        the certs/ folder
    certificate.py  what a certificate says (pure)

In a cluster, tls.mode = "acme" is cluster/certs.py: the leader renews, every node loads.

Both modes install into the same `tls.LiveContext`, and answer `gateway cert status|renew`.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..config import Config
from ..tls import LiveContext


class Certificates(Protocol):
    live: LiveContext

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def apply(self, config: Config) -> None: ...

    def status(self) -> dict[str, Any]: ...

    async def renew(self, force: bool) -> dict[str, Any]: ...


def certificates_for(config: Config) -> Certificates | None:
    """The certificate source for tls.mode, with a fresh live context; None when TLS is off."""
    tls = config.gateway.tls
    if tls.mode == "off":
        return None
    live = LiveContext(tls.min_version)
    # Each mode's modules are imported only when it is on: the ACME stack (acme, josepy,
    # pyOpenSSL, dnspython) and cryptography's x509 are ~20 MB of the worker's RSS (bench/proxy).
    if tls.mode == "files":
        from .files import FileCertificates

        return FileCertificates(config, live)
    if config.gateway.cluster.etcd_endpoints:  # the leader obtains it, every node loads it
        from ..cluster.certs import ClusterCertificates

        return ClusterCertificates(config, live)
    from .renewal import AcmeCertificates

    return AcmeCertificates(config, live)
