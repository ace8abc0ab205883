"""The cookies the gateway owns: their names, reading them, and setting them.

    gateway_session   the sign-in session: set on the apex for the whole domain, or, on a
                      tenant host whose browser did not send it, a host-only session for that
                      tenant (see service.py, "tickets")
    gateway_state     on a tenant host, while a sign-in hand-off is under way
    gateway_checked   on a public tenant's host of a single-label domain: looked lately for a
                      sign-in on the apex, found none (see service.py)
    gateway_csrf      on the apex, the CSRF cookie (`__Host-gateway_csrf` with TLS: a subdomain
                      cannot overwrite a __Host- cookie, RFC 6265bis 4.1.3.2)
    ds_actor          Datasette's actor cookie: only the gateway mints it, per request

None of them reaches a tenant as the client sent it, and a tenant cannot set them.
"""

from __future__ import annotations

from ..identity import (  # the contract with the proxy; names re-exported for auth's use
    ACTOR_COOKIE,
    CHECKED_COOKIE,
    GATEWAY_COOKIES,
    OWNED_COOKIES,
    SESSION_COOKIE,
    STATE_COOKIE,
    csrf_cookie_name,
)

__all__ = ["ACTOR_COOKIE", "CHECKED_COOKIE", "GATEWAY_COOKIES", "OWNED_COOKIES", "SESSION_COOKIE",
           "STATE_COOKIE", "cookie_values", "csrf_cookie_name", "set_cookie"]


def cookie_values(header: bytes, name: bytes) -> list[str]:
    """Every value of cookie `name` in a Cookie header (a browser may send two of one name)."""
    values = []
    for pair in header.split(b";"):
        key, _, value = pair.partition(b"=")
        if key.strip() == name:
            values.append(value.strip().decode("latin-1"))
    return values


def set_cookie(
    name: str,
    value: str,
    *,
    max_age_s: int,
    secure: bool,
    domain: str | None = None,
) -> tuple[bytes, bytes]:
    """A Set-Cookie header: HttpOnly, SameSite=Lax, Path=/ always; max_age_s 0 deletes it."""
    parts = [f"{name}={value}", "Path=/", f"Max-Age={max_age_s}", "HttpOnly", "SameSite=Lax"]
    if domain:
        parts.append(f"Domain={domain}")
    if secure:
        parts.append("Secure")
    return b"set-cookie", "; ".join(parts).encode("latin-1")
