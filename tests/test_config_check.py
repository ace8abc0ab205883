"""`gateway check-config` on tenants: metadata files and plugins, checked as the tenant runs."""

from __future__ import annotations

import subprocess

import pytest

from gateway.config_check import metadata_problems

from .conftest import BIN, Site


def check_config(site: Site) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "gateway"), "--config", str(site.config_path),
                           "check-config"], capture_output=True, text=True, timeout=120)


def test_every_tenant_problem_is_reported(site: Site) -> None:
    """Steps: five tenants, three broken in different ways (metadata JSON, metadata shape,
    a plugin that does not import); check-config names all three and exits 1; once fixed, OK."""
    for name in ("alice", "bob", "carol", "dave", "erin"):
        site.add_tenant(name, tables={})
    (site.tenants_dir / "alice" / "metadata.json").write_text("{not json")
    (site.tenants_dir / "bob" / "metadata.yaml").write_text("title: Bob\ndatabases: [1]\n")
    (site.tenants_dir / "carol" / "plugins").mkdir()
    (site.tenants_dir / "carol" / "plugins" / "broken.py").write_text("import no_such_module\n")
    (site.tenants_dir / "dave" / "plugins").mkdir()
    (site.tenants_dir / "dave" / "plugins" / "fine.py").write_text("import json\n")
    (site.tenants_dir / "erin" / "metadata.yml").write_text("title: Erin\n")
    result = check_config(site)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "Error: tenants/alice/metadata.json: not valid JSON: Expecting property name enclosed"
        " in double quotes: line 1 column 2 (char 1)",
        "Error: tenants/bob/metadata.yaml: databases: expected an object, got a list",
        "Error: tenants/carol/plugins: does not import: ModuleNotFoundError: No module named"
        " 'no_such_module'",
    ]
    (site.tenants_dir / "alice" / "metadata.json").write_text('{"title": "Alice"}')
    (site.tenants_dir / "bob" / "metadata.yaml").write_text("title: Bob\n")
    (site.tenants_dir / "carol" / "plugins" / "broken.py").unlink()
    result = check_config(site)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"OK: {site.config_path} (domain gw.test, 5 tenants)\n"


def test_every_tenant_toml_problem_is_reported(site: Site) -> None:
    site.add_tenant("alice", tables={}, settings="memory_mb = 'lots'\nstart_timeout = 3\n")
    site.add_tenant("bob", tables={}, settings="[datasette]\nsql_time_limit = 5\n")
    result = check_config(site)
    assert result.returncode == 1
    first, second, third = result.stderr.splitlines()
    assert first == (
        "Error: tenants/alice/tenant.toml: start_timeout: unknown key (known keys: datasette,"
        " idle_stop_s, memory_mb, open_files, processes, public, start_timeout_s,"
        " stop_timeout_s, title);"
        " did you mean start_timeout_s?"
    )
    assert second == 'Error: tenants/alice/tenant.toml: memory_mb: expected an integer, got "lots"'
    assert third.startswith(
        "Error: tenants/bob/tenant.toml: datasette: sql_time_limit: not a Datasette setting"
    )


@pytest.mark.parametrize(("metadata", "problems"), [
    ({"title": "x", "databases": {"data": {"tables": {"t": {"sort": "id"}}}}}, []),
    ([], ["expected an object at the top, got a list"]),
    ({"title": 3, "plugins": []}, ["title: expected text, got a number",
                                   "plugins: expected an object, got a list"]),
    ({"databases": {"data": {"tables": {"t": {"facets": "a", "hidden": True}, "u": 1}}}},
     ["databases.data.tables.u: expected an object, got a number",
      "databases.data.tables.t.facets: expected a list, got text"]),
    ({"databases": {"data": {"queries": {"q": "select 1", "r": {"sql": 1}}}}},
     ['databases.data.queries.r: expected SQL text or an object with "sql"']),
    ({"extra_css_urls": ["/a.css", {"url": "/b.css"}], "extra_js_urls": [{"src": "x"}]},
     ['extra_js_urls: expected a list of URLs or of objects with "url"']),
])
def test_metadata_shape(metadata: object, problems: list[str]) -> None:
    assert metadata_problems(metadata) == problems
