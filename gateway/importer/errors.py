"""Why a file cannot be imported, said for the person who uploaded it, and what to do."""

from __future__ import annotations

import sqlite3


class ImportFailed(Exception):
    """The file cannot be imported; the message says why and what to do, `line` where."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def at_line(line: int, message: str) -> ImportFailed:
    return ImportFailed(f"Line {line}: {message}", line=line)


def explain_sqlite_error(exc: sqlite3.Error) -> ImportFailed:
    """SQLite's errors, said for the person who uploaded (nothing was changed by then)."""
    text = str(exc)
    if "disk is full" in text or "database or disk is full" in text:
        return ImportFailed("The disk is full, so nothing was imported. Free some space, or ask"
                            " the site's operator for more, and try again.")
    if "locked" in text or "busy" in text:
        return ImportFailed("The database stayed busy with another change for a minute, so"
                            " nothing was imported. Try again.")
    if "not a database" in text or "malformed" in text:
        return ImportFailed("The target database file is damaged or not an SQLite database.")
    return ImportFailed(f"SQLite refused the import: {text}.")
