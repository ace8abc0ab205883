"""Datasette's actor cookie (`ds_actor`), minted by the gateway for one tenant. Pure.

Datasette's built-in actor_from_request accepts `URLSafeSerializer(secret, "actor")` over
{"a": actor, "e": expiry}, "e" being a Unix time in Datasette's base62 alphabet (see
shared/notes/datasette.md). Each tenant has its own secret (keys.tenant_secret), so a cookie
minted for one tenant is worthless on another. The cookie never reaches a browser: it is added
to the request on its way to the tenant, so a short expiry only bounds what a leaked copy (a
tenant's logs) is worth.
"""

from __future__ import annotations

from typing import Any

from itsdangerous import URLSafeSerializer

# Datasette's base62 alphabet (datasette.utils.baseconv): upper case first.
_BASE62 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyz"
ACTOR_TTL_S = 300


def base62(number: int) -> str:
    digits = ""
    while True:
        number, remainder = divmod(number, 62)
        digits = _BASE62[remainder] + digits
        if number == 0:
            return digits


class ActorMinter:
    def __init__(self, tenant_secret: str) -> None:
        self._serializer = URLSafeSerializer(tenant_secret, "actor")

    def mint(self, actor: dict[str, Any], now: float) -> bytes:
        """The value of a ds_actor cookie for `actor`, valid for ACTOR_TTL_S seconds."""
        value: str = self._serializer.dumps({"a": actor, "e": base62(int(now) + ACTOR_TTL_S)})
        return value.encode()
