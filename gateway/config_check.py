"""`gateway check-config`: what load_config checks, and what only starting a tenant would show.

For each tenant: its metadata file parses and has Datasette's shape (checked here, purely), and
its plugins import without error: `datasette plugins --plugins-dir` runs in the tenant's own
sandbox, as its own user, exactly as its Datasette would import them. Every problem is
reported, not only the first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml  # Datasette's own YAML parser; no stubs installed

from . import sandbox
from .config import Config, TenantConfig, load_config
from .errors import ConfigError, GatewayError
from .tenant_files import tenant_uid

# Datasette 0.65's metadata: https://docs.datasette.io/en/0.65/metadata.html
_TEXT_KEYS = ("title", "description", "description_html", "license", "license_url", "source",
              "source_url", "about", "about_url")
_TABLE_TEXT_KEYS = (*_TEXT_KEYS, "sort", "sort_desc", "label_column", "fts_table", "fts_pk",
                    "searchmode")
_TABLE_LIST_KEYS = ("sortable_columns", "facets")


def check_config(path: Path) -> tuple[Config | None, list[str]]:
    """The config (None if unreadable) and every problem found in it, one line each."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        return None, str(exc).splitlines()
    problems: list[str] = []
    for tenant in config.tenants.values():
        problems += metadata_file_problems(tenant)
    with_plugins = [t for t in config.tenants.values() if t.has_plugins]
    if with_plugins:
        isolation = sandbox.probe_isolation(config.gateway.sandbox.isolation,
                                            config.gateway.sandbox.uid_min)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for found in pool.map(lambda t: plugin_problems(config, isolation, t), with_plugins):
                problems += found
    return config, problems


def _label(tenant: TenantConfig, name: str) -> str:
    return f"{tenant.directory.parent.name}/{tenant.name}/{name}"


def metadata_file_problems(tenant: TenantConfig) -> list[str]:
    if tenant.metadata_file is None:
        return []
    label = _label(tenant, tenant.metadata_file)
    text = (tenant.directory / tenant.metadata_file).read_text(errors="replace")
    try:
        parse = json.loads if tenant.metadata_file.endswith(".json") else yaml.safe_load
        data = parse(text)
    except json.JSONDecodeError as exc:
        return [f"{label}: not valid JSON: {exc}"]
    except yaml.YAMLError as exc:
        return [f"{label}: not valid YAML: {' '.join(str(exc).split())}"]
    return [f"{label}: {problem}" for problem in metadata_problems(data)]


def metadata_problems(data: Any) -> list[str]:
    """What Datasette would choke on in parsed metadata: wrong types where it expects some."""
    if not isinstance(data, dict):
        return [f"expected an object at the top, got {_kind(data)}"]
    problems = _block_problems(data, "", _TEXT_KEYS)
    for name, database in _objects(data, "databases", "", problems):
        where = f"databases.{name}."
        problems += _block_problems(database, where, _TEXT_KEYS)
        for table_name, table in _objects(database, "tables", where, problems):
            table_where = f"{where}tables.{table_name}."
            problems += _block_problems(table, table_where, _TABLE_TEXT_KEYS)
            problems += [f"{table_where}{key}: expected a list, got {_kind(table[key])}"
                         for key in _TABLE_LIST_KEYS
                         if key in table and not isinstance(table[key], list)]
        queries = database.get("queries", {})
        if not isinstance(queries, dict):
            problems.append(f"{where}queries: expected an object, got {_kind(queries)}")
            continue
        for query_name, query in queries.items():
            sql = query.get("sql") if isinstance(query, dict) else query
            if not isinstance(sql, str):
                problems.append(f"{where}queries.{query_name}: expected SQL text or an object"
                                ' with "sql"')
    return problems


def _objects(block: dict[str, Any], key: str, where: str,
             problems: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """The objects in block[key] (itself an object); wrong types are added to `problems`."""
    value = block.get(key, {})
    if not isinstance(value, dict):
        problems.append(f"{where}{key}: expected an object, got {_kind(value)}")
        return []
    found = []
    for name, item in value.items():
        if isinstance(item, dict):
            found.append((name, item))
        else:
            problems.append(f"{where}{key}.{name}: expected an object, got {_kind(item)}")
    return found


def _block_problems(block: dict[str, Any], where: str, text_keys: tuple[str, ...]) -> list[str]:
    problems = [f"{where}{key}: expected text, got {_kind(block[key])}"
                for key in text_keys if key in block and not isinstance(block[key], str)]
    if "plugins" in block and not isinstance(block["plugins"], dict):
        problems.append(f"{where}plugins: expected an object, got {_kind(block['plugins'])}")
    for key in ("extra_css_urls", "extra_js_urls"):
        urls = block.get(key, [])
        if not isinstance(urls, list) or not all(
            isinstance(u, str) or (isinstance(u, dict) and isinstance(u.get("url"), str))
            for u in urls
        ):
            problems.append(f'{where}{key}: expected a list of URLs or of objects with "url"')
    return problems


def _kind(value: Any) -> str:
    names: dict[type, str] = {dict: "an object", list: "a list", str: "text", bool: "true/false",
                              int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def plugin_problems(config: Config, isolation: sandbox.Isolation,
                    tenant: TenantConfig) -> list[str]:
    """Import the tenant's plugins as its Datasette would: its user, its sandbox, its limits."""
    label = _label(tenant, "plugins")
    with _scratch() as scratch, _pipe() as (lifeline, _), open(os.devnull, "wb") as status:
        try:
            argv, env = _plugins_command(config, isolation, tenant, scratch,
                                         (lifeline, status.fileno()))
        except GatewayError as exc:
            return [f"{label}: cannot be checked: {exc}"]
        try:
            result = subprocess.run(
                argv, env=env, pass_fds=(lifeline, status.fileno()), stdin=subprocess.DEVNULL,
                capture_output=True, text=True, errors="replace",
                timeout=tenant.settings.start_timeout_s,
            )
        except subprocess.TimeoutExpired:
            return [f"{label}: importing took longer than start_timeout_s"
                    f" ({tenant.settings.start_timeout_s:g} s)"]
    if result.returncode == 0:
        return []
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return [f"{label}: does not import: {lines[-1] if lines else f'exit {result.returncode}'}"]


def _plugins_command(config: Config, isolation: sandbox.Isolation, tenant: TenantConfig,
                     scratch: Path, fds: tuple[int, int]) -> tuple[list[str], dict[str, str]]:
    """`datasette plugins` as the tenant's process would run it; `fds`: lifeline, status."""
    uid = None
    if isolation.switches_user:
        uid = tenant_uid(tenant.directory, config.gateway.paths.tenants_dir,
                         config.gateway.sandbox)
    data_dir, run_dir = scratch / "data", scratch / "run"
    for folder in (data_dir, run_dir):
        folder.mkdir(mode=0o700)
        if uid is not None:
            os.chown(folder, uid, uid)
    paths = sandbox.TenantPaths(
        venv=sandbox.venv_prefix(),
        package_parent=sandbox.gateway_package_parent(),
        data_dir=data_dir,
        run_dir=run_dir,
        metadata_file=None,
        plugins_dir=tenant.directory / "plugins",
    )
    view = sandbox.sandbox_view(isolation, paths)
    launch = sandbox.launch(
        isolation, uid=uid if uid is not None else os.getuid(), settings=tenant.settings,
        paths=paths, lifeline_fd=fds[0], status_fd=fds[1], secret="", databases=[],
        datasette_args=["plugins", "--plugins-dir", str(view.plugins_dir)],
    )
    return launch.argv, launch.env


@contextlib.contextmanager
def _scratch() -> Any:
    folder = Path(tempfile.mkdtemp(prefix="gateway-check-"))
    os.chmod(folder, 0o711)  # the tenant's user passes through to its own folders
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _pipe() -> Any:
    read, write = os.pipe()
    try:
        yield read, write
    finally:
        os.close(read)
        os.close(write)
