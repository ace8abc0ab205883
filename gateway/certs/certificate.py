"""What a certificate says, read once from its PEM: names, issuer, serial, validity. Pure."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from ..errors import CertificateError


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    names: tuple[str, ...]
    issuer: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime

    @property
    def lifetime(self) -> dt.timedelta:
        return self.not_after - self.not_before

    def covers(self, names: Iterable[str]) -> bool:
        return set(names) <= set(self.names)

    def describe(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "issuer": self.issuer,
            "serial": f"{self.serial:x}",
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
        }


def read_certificate(chain_pem: bytes, source: str) -> CertificateInfo:
    """The leaf (first certificate) of a PEM chain. Raises CertificateError naming `source`."""
    try:
        leaf = x509.load_pem_x509_certificate(chain_pem)
    except ValueError:
        raise CertificateError(f"{source}: no PEM certificate found") from None
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = tuple(names.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns_names = ()
    issuer = leaf.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return CertificateInfo(
        names=dns_names,
        issuer=str(issuer[0].value) if issuer else leaf.issuer.rfc4514_string(),
        serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
    )


def renewal_certificate_id(chain_pem: bytes) -> str:
    """RFC 9773 4.1: base64url(authority key id) "." base64url(DER serial), unpadded.

    Names the certificate to the CA's renewalInfo resource and in a new order's `replaces`.
    """
    leaf = x509.load_pem_x509_certificate(chain_pem)
    key_id = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    serial = leaf.serial_number
    serial_der = serial.to_bytes(serial.bit_length() // 8 + 1, "big")  # room for the sign bit
    return f"{_b64url(key_id.key_identifier or b'')}.{_b64url(serial_der)}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
