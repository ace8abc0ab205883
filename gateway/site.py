"""The apex domain's pages: the gateway's own site (a Starlette app; not on the proxy path)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .admin.dashboard import dashboard_routes
from .auth.web import auth_routes
from .pages import page, render

if TYPE_CHECKING:
    from .runtime import Gateway


def tenant_url(request: Request, gateway: Gateway, tenant: str) -> str:
    """https://alice.example.com/ (keeping the port the request came in on, as in the demo)."""
    port = request.url.port
    netloc = f"{tenant}.{gateway.domain}" + (f":{port}" if port else "")
    return f"{request.url.scheme}://{netloc}/"


def build_site(gateway: Gateway) -> Any:
    async def home(request: Request) -> Response:
        user = await gateway.auth.session_principal(request.headers.get("cookie", "").encode(),
                                                    None)
        member_of = user.tenants if user else frozenset()
        tenants = [
            {"url": tenant_url(request, gateway, name),
             "title": route.config.settings.title or name,
             "public": route.config.settings.public, "member": name in member_of}
            for name, route in sorted(gateway.routes.items())
            if route.config.settings.public or name in member_of
        ]
        return page(render("home.html", title=gateway.domain, site_name=gateway.domain,
                           tenants=tenants, user=user.email if user else None))

    async def health(request: Request) -> Response:
        states = {name: route.state for name, route in gateway.routes.items()}
        return JSONResponse({"ok": not gateway.draining, "tenants": states},
                            status_code=503 if gateway.draining else 200)

    return Starlette(routes=[
        Route("/", home),
        Route("/-/health", health),
        *auth_routes(gateway),
        *dashboard_routes(gateway),
    ])
