"""The certs/ folder: the ACME account key and the current certificate. Blocking file I/O.

    certs/account.key        the ACME account's private key (EC P-256, PEM)
    certs/certificate.pem    the certificate chain (leaf first) followed by its private key
    certs/certificate.json   where it came from: {"directory_url": ..., "issued_at": ...}

The chain and its key share one file so that a renewal replaces both with one rename: two
files could be caught half-replaced (a new key beside the old chain) by a crash. Every file is
0600 and written atomically, in a 0700 folder. A restart reuses them: nothing is issued while the
stored certificate is valid for the configured names and CA.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import CertificateError
from ..keys import write_private_file
from .certificate import CertificateInfo, read_certificate

ACCOUNT_KEY = "account.key"
CERTIFICATE = "certificate.pem"
METADATA = "certificate.json"


@dataclass(frozen=True, slots=True)
class StoredCertificate:
    path: Path  # chain and key, for SSLContext.load_cert_chain(path)
    chain_pem: bytes
    info: CertificateInfo
    directory_url: str


class CertificateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def account_key_pem(self) -> bytes:
        """The account key, created on first use."""
        path = self.directory / ACCOUNT_KEY
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        self._write(ACCOUNT_KEY, pem)
        return pem

    def load(self) -> StoredCertificate | None:
        """The stored certificate, or None if there is none yet."""
        path = self.directory / CERTIFICATE
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            metadata = json.loads((self.directory / METADATA).read_text())
            directory_url = str(metadata["directory_url"])
        except (FileNotFoundError, ValueError, KeyError):
            directory_url = ""  # unknown origin: treated as another CA's, so it gets replaced
        chain_pem = _chain_part(pem)
        return StoredCertificate(path, chain_pem, read_certificate(chain_pem, str(path)),
                                 directory_url)

    def save(self, chain_pem: bytes, key_pem: bytes, directory_url: str) -> StoredCertificate:
        info = read_certificate(chain_pem, "the CA's answer")
        self._write(CERTIFICATE, chain_pem.rstrip(b"\n") + b"\n" + key_pem)
        issued_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        metadata = {"directory_url": directory_url, "issued_at": issued_at}
        self._write(METADATA, json.dumps(metadata, indent=2).encode() + b"\n")
        return StoredCertificate(self.directory / CERTIFICATE, chain_pem, info, directory_url)

    def _write(self, name: str, data: bytes) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
            write_private_file(self.directory / name, data)
        except OSError as exc:
            raise CertificateError(f"cannot write {self.directory / name}: {exc.strerror}"
                                   " (paths.certs_dir must be writable by the gateway)") from None


def read_secret(path: Path | None, key: str) -> str:
    """A secret the operator keeps in a file (TSIG secret, API token, EAB key), read when used."""
    if path is None:
        raise CertificateError(f"{key} is not set")
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise CertificateError(f"cannot read {path} ({key}): {exc.strerror}") from None


def _chain_part(pem: bytes) -> bytes:
    """The CERTIFICATE blocks of a PEM file (the key after them stays out of status output)."""
    end = b"-----END CERTIFICATE-----"
    cut = pem.rfind(end)
    return pem[: cut + len(end)] + b"\n" if cut >= 0 else pem
