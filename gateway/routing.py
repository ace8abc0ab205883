"""Host header -> which site answers: the apex (the gateway's own pages), a tenant, or nobody.

Pure functions; the hot path calls `route_host` once per request, so results are cached by the
raw header value (bounded, so hostile hosts cannot grow it).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

# RFC 3986 reg-name characters we accept in a DNS host: letters, digits, '-', '.', and '_' (seen
# in the wild). Anything else (spaces, '@', '/', '\\', controls) makes the Host malformed.
_HOST_NAME = re.compile(r"[a-z0-9_.-]{1,253}")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class Route:
    kind: Literal["apex", "tenant", "unknown"]
    tenant: str = ""
    host: str = ""


def parse_host(raw: bytes) -> str | None:
    """The host name in a Host header, lower-case ASCII without port or trailing dot.

    None when the header is malformed. IP literals come back as they are, and never match a
    tenant. Non-ASCII names (sent as UTF-8) are converted to their IDNA form.
    """
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):  # an IPv6 literal, RFC 3986 3.2.2
        end = text.find("]")
        if end < 0 or (text[end + 1:] and not _valid_port(text[end + 1:])):
            return None
        return text[: end + 1].lower()
    name, colon, port = text.rpartition(":")
    if not colon:
        name = port
    elif not _PORT.fullmatch(port):
        return None
    name = name.rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if not _HOST_NAME.fullmatch(name) or ".." in name or name.startswith("."):
        return None
    return name


def _valid_port(suffix: str) -> bool:
    return suffix.startswith(":") and _PORT.fullmatch(suffix[1:]) is not None


@functools.lru_cache(maxsize=4096)
def route_host(raw: bytes | None, domain: str) -> Route:
    """Route a raw Host header for the apex `domain` (normalised, see config.normalise_domain).

    `alice.<domain>` -> tenant "alice" (whether or not it exists: the caller knows the tenants);
    `<domain>` -> apex; anything else, malformed or missing -> unknown.
    """
    host = parse_host(raw) if raw is not None else None
    if host is None:
        return Route("unknown")
    if host == domain:
        return Route("apex", host=host)
    label, dot, rest = host.partition(".")
    if dot and rest == domain and label:
        return Route("tenant", tenant=label, host=host)
    return Route("unknown", host=host)
