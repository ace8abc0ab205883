"""The gateway's menu and welcome page inside a tenant's Datasette. Pure; runs in the tenant.

A tenant lives at <tenant>.<domain>, so the apex is its Host without the first label: the
plugin needs no configuration and no network to link back to the gateway's pages. The actor
(minted by the gateway, auth/service.py) says who is signed in and their role here:

    anonymous        All sites, Sign in (through this host's /-/gateway-signin, back here)
    signed in        All sites, Your account            (+ Datasette's own "Log out")
    member, owner    ... and Upload CSV files
    owner            ... and Team

The links are only ways there: the gateway's pages decide who may use them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

UPLOAD_PATH = "/-/upload"
# auth/web.py's TENANT_SIGNIN_PATH (not imported: this runs in every tenant, and stays light).
# It signs the browser in on this host too, where a browser keeps no apex cookie (localhost).
SIGN_IN_PATH = "/-/gateway-signin"

WELCOME_TEMPLATE = """\
{% extends "base.html" %}
{% block title %}{{ title }}{% endblock %}
{% block content %}
<h1>{{ title }}</h1>
<p>Welcome! This site has no data yet.</p>
{% if can_upload %}
<p>Upload the CSV files your spreadsheet saved: each one becomes a table you can explore, facet,
query with SQL and export.</p>
<p><a class="button" href="/-/upload" style="display: inline-block; padding: 0.5em 1em;
 background: #276890; color: #fff; border-radius: 3px; text-decoration: none">Upload CSV
 files</a></p>
{% elif actor %}
<p>Its members can upload data to it. Ask one of its owners to add you.</p>
{% else %}
<p>Its members can upload data to it. <a href="{{ sign_in_url }}">Sign in</a> if you are one.</p>
{% endif %}
{% endblock %}
"""


def apex_and_tenant(host: str) -> tuple[str, str]:
    """('example.com:8000', 'bob') from 'bob.example.com:8000'."""
    tenant, _, apex = host.partition(".")
    return apex, tenant


def role_of(actor: dict[str, Any] | None) -> str | None:
    role = actor.get("role") if actor else None
    return role if role in ("member", "owner") else None


def sign_in_url(path: str) -> str:
    return f"{SIGN_IN_PATH}?" + urlencode({"next": path})


def menu(scheme: str, host: str, path: str, actor: dict[str, Any] | None
         ) -> list[dict[str, str]]:
    """The gateway's links in Datasette's menu, for a page at scheme://host/path."""
    apex, tenant = apex_and_tenant(host)
    if not apex:
        return []
    home = f"{scheme}://{apex}"
    links = [{"href": f"{home}/", "label": "All sites"}]
    if not actor:
        return [*links, {"href": sign_in_url(path), "label": "Sign in"}]
    links.append({"href": f"{home}/-/account", "label": "Your account"})
    role = role_of(actor)
    if role is not None:
        links.append({"href": UPLOAD_PATH, "label": "Upload CSV files"})
    if role == "owner":
        links.append({"href": f"{home}/-/team/{tenant}", "label": "Team"})
    return links
