"""`python -m gateway.upload.drop_table --data-dir /data --commit-fd 3`: drop one table, as the
tenant, in its sandbox (started like the importer, gateway/upload/tables.py). The instruction,
`{"database": "data.db", "table": "t"}`, comes on fd 3; without one nothing is done. One JSON
line on stdout: {"event": "done", "table": name} or {"event": "error", "status", "message"}.

Imports only the standard library and gateway.importer.names: it starts on every deletion."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from ..importer.errors import ImportFailed
from ..importer.names import check_database_file, quote


def drop(data_dir: Path, instruction: dict[str, Any]) -> dict[str, Any]:
    file_name = check_database_file(str(instruction["database"]))
    table = str(instruction["table"])
    database = file_name.rsplit(".", 1)[0]
    missing = {"event": "error", "status": 404,
               "message": f"There is no table {table!r} in {database!r}."}
    if not (data_dir / file_name).is_file():
        return missing
    connection = sqlite3.connect(data_dir / file_name, timeout=50, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        found = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND"
                                   " name = ? COLLATE NOCASE", (table,)).fetchone()
        if found is None or found[0].lower().startswith("sqlite_"):
            connection.execute("ROLLBACK")
            return missing
        connection.execute(f"DROP TABLE {quote(found[0])}")
        connection.execute("COMMIT")
        return {"event": "done", "database": database, "table": found[0]}
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway.upload.drop_table")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--commit-fd", type=int, default=3)
    args = parser.parse_args(argv)
    with os.fdopen(args.commit_fd, "rb") as stream:
        raw = stream.read()
    if not raw.strip():
        return
    try:
        event = drop(args.data_dir, json.loads(raw))
    except (ImportFailed, sqlite3.Error, ValueError, KeyError) as exc:
        event = {"event": "error", "status": 400, "message": f"The table was not deleted: {exc}."}
    sys.stdout.write(json.dumps(event) + "\n")


if __name__ == "__main__":
    main()
