"""Names: columns from a header row, tables from a file name or a form, database files (pure)."""

from __future__ import annotations

import re
import unicodedata

from ..database_files import DATABASE_SUFFIXES
from .errors import ImportFailed

MAX_TABLE_NAME = 64

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean_headers(cells: list[str]) -> list[str]:
    """Column names from a header row: whitespace trimmed and collapsed, empty ones named
    column_N (N its position), repeats made unique with _2, _3... SQLite compares column names
    without regard to case, so "Name" repeats "name"."""
    names: list[str] = []
    taken: set[str] = set()
    for position, cell in enumerate(cells, 1):
        name = " ".join(_CONTROL.sub(" ", cell).split()) or f"column_{position}"
        candidate, suffix = name, 1
        while candidate.casefold() in taken:
            suffix += 1
            candidate = f"{name}_{suffix}"
        taken.add(candidate.casefold())
        names.append(candidate)
    return names


_NOT_WORD = re.compile(r"\W+")
_TEXT_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")


def table_name_for(filename: str) -> str:
    """A table name from an uploaded file's name: "Budget 2024 (final).csv" -> budget_2024_final.

    Only letters, digits and _ survive (no path, quote or dot); never empty; never sqlite_*.
    """
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if name.lower().endswith(_TEXT_SUFFIXES):
        name = name[: name.rindex(".")]
    name = _NOT_WORD.sub("_", unicodedata.normalize("NFC", name)).strip("_").lower()
    name = name[:MAX_TABLE_NAME].rstrip("_") or "upload"
    return f"t_{name}" if name.startswith("sqlite_") else name


def check_table_name(name: str) -> str:
    """A table name someone typed: any text SQLite and Datasette can show, within reason."""
    name = name.strip()
    if not name:
        raise ImportFailed("The table name is empty.")
    if len(name) > 128:
        raise ImportFailed("The table name is longer than 128 characters.")
    if _CONTROL.search(name):
        raise ImportFailed("The table name contains control characters.")
    if name.lower().startswith("sqlite_"):
        raise ImportFailed("Table names starting with sqlite_ are reserved by SQLite.")
    return name


def check_database_file(name: str) -> str:
    """A database file name inside the data folder (no folders, not hidden)."""
    if (not name.endswith(DATABASE_SUFFIXES) or "/" in name or "\x00" in name
            or name.startswith(".")):
        raise ImportFailed(f"{name!r} is not a database file name.")
    return name


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
