"""URLs the sign-in pages build and accept. Pure.

`safe_next` is the open-redirect defence: after signing in or out, the gateway only sends a
browser to a path, or to an http(s) URL on its own domain or one of its tenants' hosts.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from ..config import Config
from ..routing import parse_host, route_host


def origin(scheme: str, host: str, port: str) -> str:
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def host_port(host_header: bytes | None) -> str:
    """The port in a Host header ('' when there is none): redirects keep it (the demo's :8000)."""
    if not host_header or host_header.endswith(b"]"):
        return ""
    _, colon, port = host_header.rpartition(b":")
    return port.decode("ascii", "replace") if colon and port.isdigit() else ""


def public_origin(config: Config, host: str | None = None,
                  bound: Mapping[str, int] | None = None) -> str:
    """The gateway's own origin for `host` (default: the apex), from the configuration alone:
    https when TLS is on, else http; on listen.public_port, else the HTTPS (with TLS) or HTTP
    port. A port left to the system (0) is the one its listener got (`bound`, by listener
    name), if known."""
    listen = config.gateway.listen
    if config.tls_enabled:
        scheme, name, port, default = "https", "https", listen.https_port, 443
    else:
        scheme, name, port, default = "http", "http", listen.http_port, 80
    port = listen.public_port or port or (bound or {}).get(name, 0)
    return origin(scheme, host or config.domain, "" if port in (default, 0) else str(port))


def safe_next(url: str, domain: str) -> str | None:
    """`url` if it is safe to redirect to after sign-in, else None.

    Safe: a path on the same host ("/x", not "//x" or "/\\x", which browsers read as another
    host), or an http(s) URL whose host is the domain or one of its subdomains, with no user
    name or password in it. Backslashes and control characters are refused anywhere, since
    browsers and servers disagree about them.
    """
    if not url or len(url) > 4096 or "\\" in url or any(ord(c) < 0x21 or c == "\x7f" for c in url):
        return None
    if url.startswith("/"):
        return None if url.startswith("//") else url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or "@" in parts.netloc or parts.hostname is None:
        return None
    host = parse_host(parts.hostname.encode())
    if host is None or port == 0:
        return None
    route = route_host(host.encode(), domain)
    return url if route.kind in ("apex", "tenant") else None


def tenant_of(url: str, domain: str) -> str | None:
    """The tenant whose host `url` (already safe) points at, if any."""
    if url.startswith("/"):
        return None
    hostname = urlsplit(url).hostname or ""
    route = route_host(hostname.encode(), domain)
    return route.tenant if route.kind == "tenant" else None


def path_of(url: str) -> str:
    """Path and query of a URL: where a tenant host sends the browser after a hand-off."""
    parts = urlsplit(url)
    path = "/" + parts.path.lstrip("/")  # never "//host": that would leave the host
    return path + (f"?{parts.query}" if parts.query else "")
