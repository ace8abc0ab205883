"""Who may see the dashboard: a table of its own in the accounts database.

Kept apart from the accounts' own tables (auth/store.py), created when first needed, so that
schema changes there and here never meet. An admin who loses their account loses nothing
else: the dashboard checks the signed-in account's email against this table.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

_SCHEMA = "CREATE TABLE IF NOT EXISTS admins (email TEXT PRIMARY KEY, added REAL NOT NULL)"


class Admins:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        try:
            db.execute(_SCHEMA)
            yield db
        finally:
            db.close()

    def add(self, email: str) -> None:
        with self._connect() as db:
            db.execute("INSERT OR IGNORE INTO admins VALUES (?, ?)", (email, time.time()))

    def remove(self, email: str) -> bool:
        with self._connect() as db:
            return db.execute("DELETE FROM admins WHERE email = ?", (email,)).rowcount > 0

    def emails(self) -> list[str]:
        with self._connect() as db:
            return [row[0] for row in db.execute("SELECT email FROM admins ORDER BY email")]

    def is_admin(self, email: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT 1 FROM admins WHERE email = ?", (email,)).fetchone()
            return row is not None
