"""Passes: the apex's word, carried through a tenant host, that a hand-off belongs to one
sign-in session (the whole hand-off and its threat model: service.py). Pure.

A pass is `<issued, hex>.<HMAC(key, session root | tenant | issued)>`: it names nothing secret,
it is worth something only to a browser that holds that session on the apex, and only for
PASS_TTL_S seconds (the redirects it travels take milliseconds).
"""

from __future__ import annotations

import hashlib
import hmac

PASS_TTL_S = 120
_MAX_LENGTH = 100


class Passes:
    def __init__(self, master_key: bytes) -> None:
        self._key = hmac.new(master_key, b"gateway-hand-off-pass", hashlib.sha256).digest()

    def make(self, session_root: str, tenant: str, now: float) -> str:
        issued = int(now)
        return f"{issued:x}.{self._mac(session_root, tenant, issued)}"

    def accepts(self, value: str, session_root: str, tenant: str, now: float) -> bool:
        """Whether `value` is a pass made for this session and tenant, less than PASS_TTL_S ago."""
        issued_hex, dot, mac = value.partition(".")
        if not dot or len(value) > _MAX_LENGTH or not 0 < len(issued_hex) <= 12 or any(
                c not in "0123456789abcdef" for c in issued_hex):
            return False
        issued = int(issued_hex, 16)
        if not now - PASS_TTL_S <= issued <= now + 1:
            return False
        return hmac.compare_digest(mac, self._mac(session_root, tenant, issued))

    def _mac(self, session_root: str, tenant: str, issued: int) -> str:
        message = f"{session_root}|{tenant}|{issued}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]
