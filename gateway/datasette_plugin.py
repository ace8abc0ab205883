"""The gateway's own Datasette plugin, registered in every tenant's Datasette by tenant_process.py
(not through a plugins folder: that one is the operator's, and Datasette 0.65 takes only one).

It protects every SQLite connection of every tenant from anonymous SQL (prepare_connection),
gives a tenant forked from the zygote the templates compiled there (prepare_jinja2_environment),
and puts the gateway's menu (tenant_menu.py) in Datasette's: all sites, sign in or the
account page, upload for members, the team for owners. A tenant with no database yet gets a
welcome page with an upload button at `/` instead of Datasette's "_memory, 0 tables".
"""

from __future__ import annotations

import sqlite3
from typing import Any

from datasette import hookimpl

from . import compiled_templates, tenant_menu


def _scheme(datasette: Any, request: Any) -> str:
    """The public scheme: the gateway terminates TLS and starts tenants with force_https_urls
    when it does."""
    return "https" if datasette.setting("force_https_urls") else str(request.scheme)


# Functions no query may call. Debian builds SQLite with SQLITE_ENABLE_FTS3_TOKENIZER: the
# two-argument fts3_tokenizer() installs a tokenizer from a pointer the caller chooses (the next
# MATCH on an FTS3/FTS4 table jumps to it: a segfault, or worse), and the one-argument form
# returns a pointer into the process (an ASLR leak). See https://www.sqlite.org/fts3.html#f3tknzr
DENIED_FUNCTIONS = frozenset({"fts3_tokenizer"})

# SQLite's own limits, lowered (https://www.sqlite.org/limits.html). Datasette's
# sql_time_limit_ms is checked between virtual-machine steps, so one step that builds a huge
# value (randomblob, printf('%.*c', n, ...), replace, hex) runs to its end whatever the limit:
# at the default 1 GB, `select length(randomblob(400000000))` ran seconds past it. 16 MB bounds
# one step to a fraction of a second and is far above any value the uploader writes (a CSV
# field is at most 128 KiB); a stored value larger than this cannot be read through Datasette.
SQLITE_LIMITS = {
    sqlite3.SQLITE_LIMIT_LENGTH: 16 * 1024 * 1024,
}


def _authorize(action: int, arg1: str | None, arg2: str | None, database: str | None,
               source: str | None) -> int:
    """SQLite's authorizer: called while a statement is compiled, views' bodies included."""
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY  # "not authorized to use function: fts3_tokenizer"
    return sqlite3.SQLITE_OK


@hookimpl  # type: ignore[untyped-decorator]
def prepare_connection(conn: sqlite3.Connection) -> None:
    conn.set_authorizer(_authorize)
    for limit, value in SQLITE_LIMITS.items():
        conn.setlimit(limit, value)


@hookimpl  # type: ignore[untyped-decorator]
def prepare_jinja2_environment(env: Any, datasette: Any) -> None:
    # Forked from the zygote: Datasette's templates compiled there (compiled_templates.py).
    if len(compiled_templates.COMPILED):
        env.bytecode_cache = compiled_templates.COMPILED


# Tables Litestream (gateway/backup/) keeps in every database it replicates: its bookkeeping,
# not the newsroom's data, so Datasette lists them with the hidden tables.
REPLICATION_TABLES = ("_litestream_seq", "_litestream_lock")


@hookimpl  # type: ignore[untyped-decorator]
def get_metadata(datasette: Any, key: str, database: str | None, table: str | None
                 ) -> dict[str, Any]:
    hidden = {name: {"hidden": True} for name in REPLICATION_TABLES}
    return {"databases": {name: {"tables": hidden} for name in datasette.databases}}


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
        "sign_in_url": tenant_menu.sign_in_url("/"),
    }, request=request)
    return Response.html(html)
