"""The gateway's own Datasette plugin, registered in every tenant's Datasette by tenant_process.py
(not through a plugins folder: that one is the operator's, and Datasette 0.65 takes only one).

The gateway's menu (tenant_menu.py) in Datasette's: all sites, sign in or the account page,
upload for members, the team for owners. A tenant with no database yet gets a welcome page
with an upload button at `/` instead of Datasette's "_memory, 0 tables".
"""

from __future__ import annotations

from typing import Any

from datasette import hookimpl

from . import tenant_menu


def _scheme(datasette: Any, request: Any) -> str:
    """The public scheme: the gateway terminates TLS and starts tenants with force_https_urls
    when it does."""
    return "https" if datasette.setting("force_https_urls") else str(request.scheme)


@hookimpl  # type: ignore[untyped-decorator]
def menu_links(datasette: Any, actor: dict[str, Any] | None, request: Any
               ) -> list[dict[str, str]]:
    if request is None:
        return []
    return tenant_menu.menu(_scheme(datasette, request), request.host, request.full_path, actor)


@hookimpl  # type: ignore[untyped-decorator]
def register_routes(datasette: Any) -> list[tuple[str, Any]]:
    # Databases are attached before the routes are made, and a new one needs a restart.
    if any(not database.is_memory for database in datasette.databases.values()):
        return []
    return [(r"^/$", _welcome)]


async def _welcome(datasette: Any, request: Any) -> Any:
    from datasette.utils.asgi import Response

    template = datasette.jinja_env.from_string(tenant_menu.WELCOME_TEMPLATE)
    _, tenant = tenant_menu.apex_and_tenant(request.host)
    html = await datasette.render_template(template, {
        "title": datasette.metadata("title") or tenant,
        "can_upload": tenant_menu.role_of(request.actor) is not None,
        "sign_in_url": tenant_menu.sign_in_url(_scheme(datasette, request), request.host, "/"),
    }, request=request)
    return Response.html(html)
