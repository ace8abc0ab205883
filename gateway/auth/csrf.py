"""CSRF defence for the gateway's own forms (sign in, sign out, accept an invitation).

Signed double-submit (OWASP): the browser holds a random cookie, each form carries
HMAC(key, cookie) in a hidden field, and a POST is accepted only when the two agree. A site
that can make the browser POST cannot read either. On top of that, a POST whose Origin header
is present must come from the apex's own origin: a tenant host (same-site, another origin)
cannot submit the apex's forms either. Pure.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


class Csrf:
    def __init__(self, master_key: bytes) -> None:
        self._key = hmac.new(master_key, b"gateway-csrf", hashlib.sha256).digest()

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(24)

    def form_token(self, cookie: str) -> str:
        return hmac.new(self._key, cookie.encode(), hashlib.sha256).hexdigest()

    def accepts(self, cookie: str | None, form_token: str, origin: str | None,
                own_origin: str) -> bool:
        if origin is not None and origin.lower() != own_origin.lower():
            return False
        if not cookie or not form_token:
            return False
        return hmac.compare_digest(self.form_token(cookie), form_token)
