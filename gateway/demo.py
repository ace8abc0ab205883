"""`python -m gateway.demo build DIR`: a demo site on *.localhost with two sample tenants.

    alice  public   Los Angeles 1992 riot deaths (Los Angeles Times) and Seattle weather (NOAA),
                    from the vega_datasets package
    bob    private  US airports (FAA), from the same package

and an account that owns bob (a member who also manages its team), with a random password kept
in demo/ACCOUNT.txt.

Idempotent: an existing demo keeps its databases and accounts; missing pieces are added.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import secrets
from pathlib import Path

import sqlite_utils

from .auth.accounts import Accounts
from .config import load_config
from .keys import write_private_file
from .tenant_files import create_tenant

CONFIG = """\
# The demo: plain HTTP on localhost:8000, tenants at http://<name>.localhost:8000/.
# Browsers resolve every *.localhost name to this machine, so no DNS or /etc/hosts is needed.
domain = "localhost"

[listen]
host = "127.0.0.1"
http_port = 8000

[tls]
mode = "off"

[tenant_defaults.datasette]
sql_time_limit_ms = 1000
suggest_facets = false
"""

SOURCES = {
    "alice": [
        ("la_riots", "la-riots.csv", "Los Angeles riots deaths, 1992",
         "Los Angeles Times", "https://www.latimes.com/local/la-me-riots-deaths-map-story.html"),
        ("seattle_weather", "seattle-weather.csv", "Seattle weather, 2012-2015",
         "NOAA National Climatic Data Center", "https://www.ncdc.noaa.gov/"),
    ],
    "bob": [
        ("airports", "airports.csv", "US airports", "Federal Aviation Administration",
         "https://www.faa.gov/"),
    ],
}


def sample_data_dir() -> Path:
    """vega_datasets' bundled CSV files (found without importing it: that would need pandas)."""
    spec = importlib.util.find_spec("vega_datasets")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("vega_datasets is not installed: run `make venv` first")
    return Path(next(iter(spec.submodule_search_locations))) / "_data"


def build(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # tenant users (when run as root) must reach their folders
    config = root / "gateway.toml"
    if not config.exists():
        config.write_text(CONFIG)
    tenants = root / "tenants"
    tenants.mkdir(exist_ok=True)
    data = sample_data_dir()
    for name, tables in SOURCES.items():
        directory = tenants / name
        if not directory.exists():
            create_tenant(tenants, name, public=name == "alice")
        database = directory / "data" / f"{name}.db"
        if database.exists():
            continue
        db = sqlite_utils.Database(database)
        metadata: dict[str, object] = {"title": f"{name.title()}'s newsroom data", "tables": {}}
        for table, csv_name, title, source, source_url in tables:
            with open(data / csv_name, newline="") as f:
                rows = [{k: v or None for k, v in row.items()} for row in csv.DictReader(f)]
            db.table(table).insert_all(rows, columns=_detected_types(rows))
            metadata["tables"][table] = {  # type: ignore[index]
                "title": title, "source": source, "source_url": source_url,
            }
        db.close()
        (directory / "metadata.json").write_text(
            json.dumps({"databases": {name: metadata}}, indent=2) + "\n"
        )
    add_demo_account(root)


DEMO_EMAIL = "demo@example.com"
ACCOUNT_FILE = "ACCOUNT.txt"


def add_demo_account(root: Path) -> None:
    """An owner of bob, whose email and password are in ACCOUNT.txt (0600) for `make demo`."""
    account_file = root / ACCOUNT_FILE
    if account_file.exists():
        return
    password = secrets.token_urlsafe(12)
    accounts = Accounts(load_config(root / "gateway.toml"))
    if accounts.store.credentials(DEMO_EMAIL) is None:
        accounts.add_user(DEMO_EMAIL, password)
    else:  # ACCOUNT.txt was deleted: a new password
        accounts.set_password(DEMO_EMAIL, password)
    accounts.add_member("bob", DEMO_EMAIL, "owner")
    write_private_file(account_file, f"{DEMO_EMAIL} {password}\n".encode())


def account_line(root: Path) -> str:
    email, password = (root / ACCOUNT_FILE).read_text().split()
    return (f"Sign in at http://localhost:8000/-/login as {email}, password {password}"
            " (an owner of bob)")


def _detected_types(rows: list[dict[str, str | None]]) -> dict[str, type]:
    """Column types as sqlite-utils guesses them; SQLite's column affinity converts the text."""
    tracker = sqlite_utils.utils.TypeTracker()
    for _ in tracker.wrap(rows):
        pass
    return {column: _PYTHON_TYPES[kind] for column, kind in tracker.types.items()}


_PYTHON_TYPES = {"text": str, "integer": int, "float": float}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    build(args.directory)
    print(f"Demo site in {args.directory}/ (config {args.directory / 'gateway.toml'})")
    print(account_line(args.directory))


if __name__ == "__main__":
    main()
