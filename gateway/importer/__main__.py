"""The importer's process: the upload on stdin, events on stdout, the commit instruction on fd 3.

Started by the gateway as `python -m gateway.importer` (sandbox.importer_command); the package's
docstring describes the events.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __doc__ as overview
from .commit import Target
from .dialect import DELIMITER_NAMES
from .errors import ImportFailed, explain_sqlite_error
from .job import Import


def checkpoint(path: Path) -> None:
    """Copy the committed rows from the write-ahead log into the database file, once the answer
    is out (the commit is durable in the log already). Datasette's connections are read-only and
    never do it."""
    connection = sqlite3.connect(path, timeout=60)
    try:
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        connection.close()


def read_instruction(fd: int) -> Target | None:
    """The gateway's commit instruction; None if it closed fd 3 without one (cancelled)."""
    with os.fdopen(fd, "rb") as stream:
        raw = stream.read()
    return Target.from_json(raw) if raw.strip() else None


def run(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> None:
    with Import(args.data_dir, filename=args.filename, encoding=args.encoding,
                delimiter=args.delimiter) as job:
        staged = job.stage(sys.stdin.buffer, progress=lambda rows, read: emit(
            {"event": "progress", "rows": rows, "bytes": read}))
        emit({"event": "staged", "rows": staged.rows, "bytes": job.copy.tell(),
              "encoding": staged.encoding, "delimiter": DELIMITER_NAMES[staged.delimiter],
              "columns": [{"name": n, "type": t}
                          for n, t in zip(staged.columns, staged.types, strict=True)],
              "notes": staged.notes})
        target = read_instruction(args.commit_fd)
        if target is None:
            return
        imported = job.commit(target)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        emit({"event": "done", **imported.as_json(), "notes": staged.notes,
              "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
              "max_rss_mb": round(usage.ru_maxrss / 1024, 1)})
    checkpoint(args.data_dir / target.database)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway.importer", description=overview.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--filename", default="")
    parser.add_argument("--encoding")
    parser.add_argument("--delimiter")
    parser.add_argument("--commit-fd", type=int, default=3)
    args = parser.parse_args(argv)
    # Batches hold many small lists and strings, all acyclic: the cyclic collector would only
    # rescan them (it doubled the time of reading 1M rows), so it is off for this short process.
    gc.disable()

    def emit(event: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    try:
        run(args, emit)
    except ImportFailed as exc:
        emit({"event": "error", "message": str(exc), "line": exc.line})
    except sqlite3.Error as exc:
        error = explain_sqlite_error(exc)
        emit({"event": "error", "message": str(error), "line": None})
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            error = explain_sqlite_error(sqlite3.OperationalError("database or disk is full"))
            emit({"event": "error", "message": str(error), "line": None})
        else:
            raise


if __name__ == "__main__":
    main()
