"""Rows into the staging table, while the next batch is read (I/O).

SQLite does its part of an insert (sqlite3_step) without Python's GIL, so a thread inserting
one batch runs beside the main thread reading and typing the next: on two cores the import
takes the longer of the two, not their sum. Many rows go in per INSERT statement, sharing
SQLite's per-statement work and the sqlite3 module's per-row calls.
"""

from __future__ import annotations

import itertools
import queue
import sqlite3
import threading
from types import TracebackType

from .column_types import NUMERIC_TYPES

_ROWS_PER_INSERT = 500
_BATCHES_AHEAD = 2  # what the thread may hold besides the one it inserts (memory)


class Inserter:
    """insert(rows) hands a batch to the thread; errors (a full disk) come back on the next
    call or on leaving the `with`, which waits for every batch to be in. Where no thread can
    start (the tenant's RLIMIT_NPROC is reached), batches are inserted as they come."""

    def __init__(self, connection: sqlite3.Connection, declared: list[str]) -> None:
        self.connection = connection
        self.width = len(declared)
        row = "(" + ", ".join("NULLIF(?, '')" if kind in NUMERIC_TYPES else "?"
                              for kind in declared) + ")"
        limit = connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self.per_statement = max(1, min(_ROWS_PER_INSERT, limit // self.width))
        self.one = f"INSERT INTO staging VALUES {row}"
        self.many = f"INSERT INTO staging VALUES {', '.join([row] * self.per_statement)}"
        self._batches: queue.Queue[list[list[str]] | None] = queue.Queue(_BATCHES_AHEAD)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Inserter:
        thread = threading.Thread(target=self._run, name="inserter", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # "can't start new thread"
            return self
        self._thread = thread
        return self

    def __call__(self, rows: list[list[str]]) -> None:
        if self._thread is None:
            self._insert(rows)
            return
        self._raise_error()
        self._batches.put(rows)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._thread is None:
            return
        self._batches.put(None)
        self._thread.join()
        if error is None:
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (rows := self._batches.get()) is not None:
            if self._error is None:
                try:
                    self._insert(rows)
                except BaseException as exc:  # re-raised in the main thread
                    self._error = exc

    def _insert(self, rows: list[list[str]]) -> None:
        size = self.per_statement * self.width
        whole = len(rows) - len(rows) % self.per_statement
        if whole and self.per_statement > 1:
            values = list(itertools.chain.from_iterable(rows))
            self.connection.executemany(self.many, [
                values[start:start + size] for start in range(0, whole * self.width, size)])
            rows = rows[whole:]
        self.connection.executemany(self.one, rows)
