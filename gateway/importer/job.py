"""One file's import: its private scratch space, staged then committed (I/O)."""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from .commit import Imported, Target, commit
from .staging import ByteCounter, Progress, Staged, stage


class Import:
    """One file's import: staged, then committed. Owns a private scratch space on the tenant's
    disk (the sandbox's /tmp lives in RAM), gone whatever happens to this process: a staging
    database, unlinked as soon as opened, and an anonymous file holding the upload's bytes.

    Rows are staged with the column types their first batch suggests, so that a commit to
    those types is a raw copy of SQLite records (its transfer optimisation; a third of the
    cost of converting every value). When the file later proves a guess wrong for the target
    (a column staged as numbers ends as text, or an append into a text column), the bytes are
    staged again as text and converted on the way in: the result is the same either way.
    So are they when a column of numbers written for people ("1,5") turns out to start with
    numbers that are not plain integers (numbers.py): they are staged again, that column
    watched from its first row.
    """

    def __init__(self, data_dir: Path, *, filename: str = "", encoding: str | None = None,
                 delimiter: str | None = None) -> None:
        self.data_dir = data_dir
        self.options: dict[str, Any] = {"filename": filename, "encoding": encoding,
                                        "delimiter": delimiter}
        self.connection = _open_staging(data_dir)
        self.copy = tempfile.TemporaryFile(dir=data_dir)  # noqa: SIM115 - closed in close()
        self.staged: Staged | None = None

    def __enter__(self) -> Import:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.connection.close()
        self.copy.close()

    def stage(self, stream: IO[bytes], progress: Progress | None = None) -> Staged:
        """Read the whole upload into table `staging`, tracking the column types."""
        self.staged = stage(ByteCounter(stream, copy=self.copy), self.connection,
                            progress=progress, **self.options)
        if self.staged.unresolved:
            self.options["from_start"] = self.staged.unresolved
            return self._restage(guess_types=True)
        return self.staged

    def commit(self, target: Target) -> Imported:
        """Create, replace or append to the target table, in one transaction."""
        assert self.staged is not None, "stage() first"
        return commit(self.connection, self.staged, self.data_dir, target, self._restage)

    def _restage(self, guess_types: bool = False) -> Staged:
        self.connection.execute("DROP TABLE staging")
        self.copy.flush()
        self.copy.seek(0)
        self.staged = stage(ByteCounter(self.copy), self.connection, guess_types=guess_types,
                            **self.options)
        self.copy.seek(0, os.SEEK_END)
        return self.staged


def _open_staging(data_dir: Path) -> sqlite3.Connection:
    path = data_dir / f".upload-{os.getpid()}-{time.monotonic_ns():x}.staging"
    connection = sqlite3.connect(path, isolation_level=None, timeout=60,
                                 check_same_thread=False)  # see inserter.py
    try:
        connection.execute("PRAGMA page_size=65536")  # a sixteenth of the system calls
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA wal_autocheckpoint=0")  # the target's: see __main__.checkpoint()
    finally:
        path.unlink()
    return connection
