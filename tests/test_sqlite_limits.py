"""Anonymous SQL cannot take a tenant down: fts3_tokenizer() is refused on every connection and
one step of a query cannot build a huge value (datasette_plugin.py's prepare_connection)."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from .conftest import RunningGateway, Site


def _tenant_with_fts(site: Site, settings: str = "") -> None:
    directory = site.add_tenant("alice", settings=settings)
    _add_fts_table(directory / "data" / "data.db", "docs")


def _add_fts_table(path: Path, table: str) -> None:
    db = sqlite_utils.Database(path)
    db[table].insert_all([{"id": i, "body": f"hello world {i}"} for i in range(10)], pk="id")
    db[table].enable_fts(["body"], fts_version="FTS4")
    db.close()


def _sql(gateway: RunningGateway, sql: str) -> tuple[int, dict[str, object]]:
    response = gateway.get("alice", "/data.json", params={"sql": sql})
    return response.status_code, response.json()


def test_fts3_tokenizer_is_refused_and_the_tenant_keeps_running(site: Site, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """1. A new FTS4 table appears while the tenant runs (as an upload makes one): no connection
    has opened it yet. 2. Install a tokenizer pointing at 0x4141414141414141, a few times over
    (Datasette has a connection per thread). 3. MATCH on the new table, which would load that
    tokenizer and jump there (without the protection: exit 139, a restart). Each attempt gets a
    clear error; the tenant keeps its pid; search works."""
    _tenant_with_fts(site)
    gateway = start_gateway()
    gateway.wait_running("alice")
    pid = gateway.tenant("alice")["pid"]
    _add_fts_table(site.tenants_dir / "alice" / "data" / "data.db", "news")
    for _ in range(6):
        status, body = _sql(gateway, "select fts3_tokenizer('simple', x'4141414141414141')")
        assert (status, body["error"]) == (400, "not authorized to use function: fts3_tokenizer")
        status, body = _sql(gateway, "select hex(FTS3_Tokenizer('simple'))")  # a pointer leak
        assert (status, body["error"]) == (400, "not authorized to use function: FTS3_Tokenizer")
    for table in ("news_fts", "docs_fts") * 3:
        status, body = _sql(gateway, f"select rowid from {table} where {table} match 'hello 3'")
        assert (status, body["rows"]) == (200, [[3]])
    alice = gateway.tenant("alice")
    assert (alice["state"], alice["pid"], alice["restarts"]) == ("running", pid, 0)


def test_one_step_cannot_build_a_huge_value(site: Site, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """With a generous time limit, a 400 MB blob is refused by SQLite's length limit (at once,
    before any work), not cut by the time limit; values up to 16 MiB still work."""
    _tenant_with_fts(site, settings="[datasette]\nsql_time_limit_ms = 60000\n")
    gateway = start_gateway()
    gateway.wait_running("alice")
    status, body = _sql(gateway, "select length(randomblob(400000000))")
    assert (status, body["error"]) == (400, "string or blob too big")
    status, body = _sql(gateway, "select length(hex(zeroblob(200000000)))")
    assert (status, body["error"]) == (400, "string or blob too big")
    status, body = _sql(gateway, "select length(randomblob(16777216))")
    assert (status, body["rows"]) == (200, [[16777216]])
    assert gateway.tenant("alice")["restarts"] == 0


def test_replication_tables_are_hidden(site: Site, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """Litestream's bookkeeping tables (in every replicated database) are listed as hidden, as
    Datasette lists FTS shadow tables; the newsroom's own tables are not."""
    directory = site.add_tenant("alice")
    db = sqlite_utils.Database(directory / "data" / "data.db")
    db.execute("CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)")
    db.execute("CREATE TABLE _litestream_lock (id INTEGER)")
    db.close()
    gateway = start_gateway()
    gateway.wait_running("alice")
    tables = {t["name"]: t["hidden"] for t in gateway.get("alice", "/data.json").json()["tables"]}
    assert tables == {"items": False, "_litestream_seq": True, "_litestream_lock": True}
