"""The Datasette settings a tenant may set, and how they go on Datasette's command line.

Datasette exits at start on an unknown setting, which would put the tenant into a crash loop, so
names and types are checked when the config is read. The table mirrors Datasette 0.65's SETTINGS
(tests/test_config.py checks it against the installed Datasette); importing Datasette here would
cost 0.8 s on every config read.
"""

from __future__ import annotations

from collections.abc import Mapping

KNOWN_SETTINGS: Mapping[str, type] = {
    "default_page_size": int,
    "max_returned_rows": int,
    "num_sql_threads": int,
    "sql_time_limit_ms": int,
    "default_facet_size": int,
    "facet_time_limit_ms": int,
    "facet_suggest_time_limit_ms": int,
    "allow_facet": bool,
    "default_allow_sql": bool,
    "allow_download": bool,
    "suggest_facets": bool,
    "default_cache_ttl": int,
    "cache_size_kb": int,
    "allow_csv_stream": bool,
    "max_csv_mb": int,
    "truncate_cells_html": int,
    "force_https_urls": bool,
    "template_debug": bool,
    "trace_debug": bool,
    "base_url": str,
}

# Set by the gateway from its own config: a tenant choosing them would break its public URLs.
GATEWAY_OWNED = frozenset({"force_https_urls", "base_url"})


def unknown_setting_error(settings: Mapping[str, object]) -> str | None:
    """Say what is wrong with a tenant's Datasette settings, or None when they are fine."""
    for name, value in settings.items():
        kind = KNOWN_SETTINGS.get(name)
        if kind is None:
            return f"{name}: not a Datasette setting (known: {', '.join(sorted(KNOWN_SETTINGS))})"
        if name in GATEWAY_OWNED:
            return f"{name}: set by the gateway, not per tenant"
        if kind is bool and not isinstance(value, bool):
            return f"{name}: expected true or false, got {value!r}"
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            return f"{name}: expected an integer, got {value!r}"
    return None


def setting_args(settings: Mapping[str, object]) -> list[str]:
    """--setting NAME VALUE pairs, booleans as on/off."""
    args: list[str] = []
    for name, value in settings.items():
        if isinstance(value, bool):
            value = "on" if value else "off"
        args += ["--setting", name, str(value)]
    return args
