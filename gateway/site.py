"""The apex domain's pages: the gateway's own site (a Starlette app; not on the proxy path)."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .admin.dashboard import dashboard_routes
from .auth.account import AccountPages
from .auth.team import TeamPages
from .auth.web import auth_routes
from .config import TenantConfig
from .pages import page, render

if TYPE_CHECKING:
    from .runtime import Gateway


@dataclass(frozen=True, slots=True)
class Listing:
    """What the home page shows of a tenant: from its settings, metadata and data folder."""

    title: str
    description: str
    size_bytes: int


def tenant_url(request: Request, gateway: Gateway, tenant: str) -> str:
    """https://alice.example.com/ (keeping the port the request came in on, as in the demo)."""
    port = request.url.port
    netloc = f"{tenant}.{gateway.domain}" + (f":{port}" if port else "")
    return f"{request.url.scheme}://{netloc}/"


def describe(tenant: TenantConfig) -> Listing:
    """Title (tenant.toml, else the metadata's, else the name), the metadata's plain-text
    description, and the size of its databases. Blocking: call it on a thread."""
    metadata: dict[str, Any] = {}
    if tenant.metadata_file is not None:
        metadata = _read_metadata(tenant.directory / tenant.metadata_file)
    size = 0
    for name in tenant.databases:
        for suffix in ("", "-wal"):
            try:
                size += os.stat(tenant.data_dir / (name + suffix)).st_size
            except OSError:
                continue
    title = tenant.settings.title or _text(metadata.get("title")) or tenant.name
    return Listing(title, _text(metadata.get("description")), size)


def _read_metadata(path: Path) -> dict[str, Any]:
    """The operator's metadata file (Datasette checks it at start); unreadable: nothing."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError):  # UnicodeDecodeError is a ValueError
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def format_size(size: int) -> str:
    """'950 bytes', '3.4 MB', '12 MB': the size a person reads (SI units, as file managers)."""
    if size < 1000:
        return "1 byte" if size == 1 else f"{size} bytes"
    value = float(size)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1000
        if value < 999.5 or unit == "TB":
            break
    return f"{value:.1f} {unit}" if value < 9.95 else f"{value:.0f} {unit}"


def build_site(gateway: Gateway) -> Any:
    async def home(request: Request) -> Response:
        user = await gateway.auth.session_principal(request.headers.get("cookie", "").encode(),
                                                    None)
        member_of = user.tenants if user else frozenset()
        shown = [route.config for _, route in sorted(gateway.routes.items())
                 if route.config.settings.public or route.config.name in member_of]
        listings = await asyncio.to_thread(lambda: [describe(t) for t in shown])
        tenants = [
            {"url": tenant_url(request, gateway, tenant.name), "name": tenant.name,
             "title": listing.title, "description": listing.description,
             "size": format_size(listing.size_bytes) if tenant.databases else "no data yet",
             "public": tenant.settings.public,
             "member": tenant.name in member_of,
             "owner": user is not None and tenant.name in user.owner_of,
             "sleeping": tenant.name in gateway.routes
             and gateway.routes[tenant.name].state == "sleeping"}
            for tenant, listing in zip(shown, listings, strict=True)
        ]
        return page(render("home.html", title=gateway.domain, site_name=gateway.domain,
                           tenants=tenants, user=user.email if user else None))

    async def health(request: Request) -> Response:
        """Anyone may ask, so it names no tenant (a private one's name is private): it counts
        them by state. `gateway status`, on the control socket, has the details."""
        states = Counter(route.state for route in gateway.routes.values())
        return JSONResponse({"ok": not gateway.draining, "tenants": dict(sorted(states.items()))},
                            status_code=503 if gateway.draining else 200)

    return Starlette(routes=[
        Route("/", home),
        Route("/-/health", health),
        *auth_routes(gateway.auth),
        *AccountPages(gateway).routes(),
        *TeamPages(gateway).routes(),
        *dashboard_routes(gateway),
    ])
