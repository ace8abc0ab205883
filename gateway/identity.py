"""The contract between auth and the proxy: who the request is from, as a tenant may see it.

Auth (auth/service.py) decides an `Identity` per request; the proxy (proxy.py) applies it while
it rewrites headers. Neither imports the other: both import this module, which owns

- the cookies the gateway owns (never sent to a tenant as the client sent them, never set by a
  tenant's response),
- which request headers may claim who the client or the user is (only the gateway says that),
- `Identity` itself.
"""

from __future__ import annotations

import http.cookies
from dataclasses import dataclass, field

SESSION_COOKIE = "gateway_session"
STATE_COOKIE = "gateway_state"
CHECKED_COOKIE = "gateway_checked"  # see auth/service.py, public tenants on localhost
ACTOR_COOKIE = "ds_actor"


def csrf_cookie_name(tls: bool) -> str:
    return "__Host-gateway_csrf" if tls else "gateway_csrf"


# Stripped from every request to a tenant; a tenant's Set-Cookie for one of these is dropped.
GATEWAY_COOKIES = frozenset(
    name.encode()
    for name in (SESSION_COOKIE, STATE_COOKIE, CHECKED_COOKIE, csrf_cookie_name(True),
                 csrf_cookie_name(False))
)
OWNED_COOKIES = GATEWAY_COOKIES | {ACTOR_COOKIE.encode()}

# Who the client is, how it reached us, and who the user is, is said by the gateway alone
# (RFC 7239): a tenant plugin might trust such a header. Stripped by rule, not by a list that
# misses the next auth proxy's names: every request header named `forwarded`, `x-request-id`,
# or beginning with one of these prefixes (README, "What a tenant sees").
CLAIM_PREFIXES = (
    b"x-forwarded",  # -for, -proto, -host, -port, -user, -email, -groups, -access-token ...
    b"x-real-", b"x-client-", b"x-original-", b"true-client-", b"cf-",  # addresses, CDNs
    b"remote-", b"x-remote-", b"x-auth", b"x-webauth", b"x-user", b"x-email",  # auth proxies
    b"x-amzn-oidc-", b"x-ms-client-principal", b"x-goog-authenticated-", b"x-pomerium-",
    b"x-gateway-", b"x-actor",  # ours
)
CLAIM_NAMES = frozenset({b"forwarded", b"x-request-id"})


def is_client_claim(name: bytes) -> bool:
    """Whether request header `name` (lower-case) claims who the client or the user is."""
    return name in CLAIM_NAMES or name.startswith(CLAIM_PREFIXES)


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


def tenant_cookie_header(values: list[bytes], identity: Identity) -> bytes:
    """One Cookie header without the cookies the gateway owns, plus the one it adds.

    Datasette reads the last of duplicate cookies, so a client-sent ds_actor must be removed,
    not merely followed by ours. It parses with http.cookies (pairs end at `;` or at
    whitespace: `x=1 ds_actor=...` is two cookies), so the header is cut up with the very same
    pattern, and what it cannot parse is dropped, as Datasette would ignore it.
    """
    if not identity.strip_cookies and not identity.add_cookie:
        return b"; ".join(values)
    text = "; ".join(value.decode("latin-1") for value in values)
    kept = [pair.encode("latin-1") for key, pair in cookie_pairs(text)
            if key.encode("latin-1") not in identity.strip_cookies]
    if identity.add_cookie:
        kept.append(identity.add_cookie)
    return b"; ".join(kept)


def cookie_pairs(header: str) -> list[tuple[str, str]]:
    """(name, `name=value` as sent) for each cookie in a Cookie header, as SimpleCookie.load
    (Datasette's parser) splits it."""
    pairs = []
    position = 0
    while position < len(header):
        match = _COOKIE_PATTERN.match(header, position)
        if match is None:
            break
        position = match.end(0)
        key = match.group("key")
        if key.startswith("$") or key.lower() in _RESERVED:
            continue  # attributes, not cookies
        pairs.append((key, match.group(0).strip().rstrip(";").strip()))
    return pairs


# The pattern and attribute names Datasette's parser (http.cookies.SimpleCookie) uses.
_COOKIE_PATTERN = http.cookies._CookiePattern  # type: ignore[attr-defined]
_RESERVED = frozenset(http.cookies.Morsel._reserved)  # type: ignore[attr-defined]


def sets_owned_cookie(name: bytes, value: bytes) -> bool:
    """A tenant must not set the gateway's cookies: a session planted for the whole domain
    would sign every tenant's visitors in as someone else (cookie tossing)."""
    return name == b"set-cookie" and value.partition(b"=")[0].strip() in OWNED_COOKIES
