"""TLS termination: the HTTPS listener's SSLContext, whose certificate changes without a restart.

The listener keeps one SSLContext for its whole life. During each handshake its SNI callback
points the connection at the context that holds the current certificate (`SSLObject.context`,
OpenSSL's SSL_set_SSL_CTX), so installing a renewed certificate only swaps that reference:
connections already open keep the certificate they shook hands with, new handshakes get the new
one. Until a certificate is installed the callback aborts the handshake, so HTTPS answers
nothing rather than an invalid certificate.

Protocols and ciphers follow Mozilla's "intermediate" profile, minus the DHE suites (the gateway
loads no DH parameters): TLS 1.2 with ECDHE + AEAD only, TLS 1.3 with OpenSSL's suites (all
AEAD). Compression and renegotiation are off.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from .errors import CertificateError

TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
])

MinVersion = Literal["1.2", "1.3"]
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(min_version: MinVersion) -> ssl.SSLContext:
    """A server-side context with the gateway's protocol and cipher policy, and no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[min_version]
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    )
    context.set_alpn_protocols(["http/1.1"])
    return context


def load_certificate(chain_file: Path, key_file: Path | None,
                     min_version: MinVersion) -> ssl.SSLContext:
    """A context serving this certificate chain (leaf first) and key. Blocking: reads files.

    `key_file` None means the key is in `chain_file` too. Raises CertificateError naming the
    problem (missing file, not PEM, key does not match the certificate).
    """
    for path in (chain_file, key_file):
        if path is None:
            continue
        try:
            path.open("rb").close()  # load_cert_chain's own errors do not name the file
        except OSError as exc:
            raise CertificateError(f"{path}: {exc.strerror}") from None
    context = server_context(min_version)
    try:
        context.load_cert_chain(chain_file, key_file)
    except ssl.SSLError as exc:
        files = f"{chain_file}, {key_file}" if key_file else str(chain_file)
        raise CertificateError(f"{files}: not a usable certificate and key"
                               f" ({exc.reason or 'not PEM'})") from None
    return context


class LiveContext:
    """The HTTPS listener's context; each new handshake gets the certificate installed last."""

    def __init__(self, min_version: MinVersion) -> None:
        self.listener = server_context(min_version)
        self.listener.sni_callback = self._choose
        self._current: ssl.SSLContext | None = None

    @property
    def has_certificate(self) -> bool:
        return self._current is not None

    def install(self, context: ssl.SSLContext) -> None:
        """Serve `context`'s certificate from the next handshake on (call on the event loop)."""
        self.listener.minimum_version = context.minimum_version
        self._current = context

    def _choose(self, connection: ssl.SSLObject, server_name: str | None,
                listener: ssl.SSLContext) -> int | None:
        if self._current is None:
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        connection.context = self._current
        return None
