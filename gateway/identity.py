"""The contract between auth and the proxy: who the request is from, as a tenant may see it.

Auth (auth/service.py) decides an `Identity` per request; the proxy (proxy.py) applies it while
it rewrites headers. Neither imports the other: both import this module, which owns

- the cookies the gateway owns (never sent to a tenant as the client sent them, never set by a
  tenant's response),
- which request headers may claim who the client or the user is (only the gateway says that),
- `Identity` itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

SESSION_COOKIE = "gateway_session"
STATE_COOKIE = "gateway_state"
ACTOR_COOKIE = "ds_actor"


def csrf_cookie_name(tls: bool) -> str:
    return "__Host-gateway_csrf" if tls else "gateway_csrf"


# Stripped from every request to a tenant; a tenant's Set-Cookie for one of these is dropped.
GATEWAY_COOKIES = frozenset(
    name.encode()
    for name in (SESSION_COOKIE, STATE_COOKIE, csrf_cookie_name(True), csrf_cookie_name(False))
)
OWNED_COOKIES = GATEWAY_COOKIES | {ACTOR_COOKIE.encode()}

# Who the client is, and how it reached us, is said by the gateway alone (RFC 7239), and so is
# who the user is: identity headers that auth proxies set, which a tenant plugin might trust.
CLIENT_CLAIMS = frozenset(
    b"x-forwarded-for x-forwarded-proto x-forwarded-host x-forwarded-port x-real-ip forwarded"
    b" x-request-id remote-user x-remote-user x-forwarded-user x-forwarded-email"
    b" x-forwarded-preferred-username x-auth-request-user x-auth-request-email"
    b" x-auth-request-preferred-username x-gateway-actor x-actor".split()
)


def is_client_claim(name: bytes) -> bool:
    """Whether request header `name` (lower-case) claims who the client or user is."""
    return name in CLIENT_CLAIMS


@dataclass(slots=True)
class Identity:
    """What the auth layer wants the backend to see: cookies to add, and to take away."""

    strip_cookies: frozenset[bytes] = frozenset()
    add_cookie: bytes = b""
    strip_authorization: bool = False
    # Replace the backend's headers of the same names (cache-control, vary).
    extra_response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    user: str = ""  # for the access log


NO_IDENTITY = Identity()


def tenant_cookie_header(values: Iterable[bytes], identity: Identity) -> bytes:
    """One Cookie header without the cookies the gateway owns, plus the one it adds.

    Datasette reads the last of duplicate cookies, so a client-sent ds_actor must be removed,
    not merely followed by ours.
    """
    if not identity.strip_cookies and not identity.add_cookie:
        return b"; ".join(values)
    pairs = [
        pair.strip()
        for value in values
        for pair in value.split(b";")
        if pair.strip() and pair.split(b"=", 1)[0].strip() not in identity.strip_cookies
    ]
    if identity.add_cookie:
        pairs.append(identity.add_cookie)
    return b"; ".join(pairs)


def sets_owned_cookie(name: bytes, value: bytes) -> bool:
    """A tenant must not set the gateway's cookies: a session planted for the whole domain
    would sign every tenant's visitors in as someone else (cookie tossing)."""
    return name == b"set-cookie" and value.partition(b"=")[0].strip() in OWNED_COOKIES
