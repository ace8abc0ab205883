"""The upload form's fields -> where the file goes and how the importer reads it (pure)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..importer.commit import MODES
from ..importer.dialect import DELIMITER_NAMES
from ..importer.errors import ImportFailed
from ..importer.names import check_table_name, table_name_for
from .errors import BadUpload

_NEW_DATABASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_DELIMITERS = {name: char for char, name in DELIMITER_NAMES.items()}


@dataclass(frozen=True, slots=True)
class Target:
    """Where one uploaded file goes, decided from the form and the tenant's databases."""

    database: str  # Datasette's name for it: the file name without its suffix
    file_name: str
    create_database: bool
    table: str
    mode: str

    def instruction(self) -> bytes:
        """What the importer reads on fd 3 (importer.commit.Target)."""
        return json.dumps({"database": self.file_name, "table": self.table, "mode": self.mode,
                           "create_database": self.create_database}).encode()


def choose_target(fields: Mapping[str, str], filename: str,
                  databases: tuple[str, ...]) -> Target:
    """The form's `database`, `table` and `mode`, checked. Defaults: the tenant's first database
    (or a new one named "data"), a table named after the file, create."""
    mode = fields.get("mode", "").strip() or "create"
    if mode not in MODES:
        raise BadUpload(f"Unknown mode {mode!r}: use create, replace or append.")
    try:
        table = check_table_name(fields.get("table", "").strip() or table_name_for(filename))
    except ImportFailed as exc:
        raise BadUpload(str(exc)) from None
    check_datasette_name(table)
    existing = {file_name.rsplit(".", 1)[0]: file_name for file_name in databases}
    database = fields.get("database", "").strip() or min(existing, default="data")
    if database in existing:
        return Target(database, existing[database], False, table, mode)
    if not _NEW_DATABASE.fullmatch(database):
        raise BadUpload(f"{database!r} cannot name a new database: use up to 64 letters, digits,"
                        " '_' and '-', starting with a letter or digit.")
    return Target(database, f"{database}.db", True, table, mode)


def check_datasette_name(table: str) -> None:
    """Datasette 0.65 quotes table names in [brackets] in some of its queries (the table
    counts of the index and database pages, foreign keys, indexes), where SQLite has no way to
    escape "]": one such table breaks those pages for everybody (issue 12). Every other
    character works. New database names are plainer still (letters, digits, '_' and '-')."""
    if "]" in table:
        raise BadUpload(f"{table!r} cannot name a table: Datasette cannot show a table whose"
                        " name contains ']'. Choose another name.")


def importer_options(fields: Mapping[str, str], filename: str) -> list[str]:
    """Command-line options for the importer from the form's optional encoding and delimiter."""
    options = ["--filename", filename]
    encoding = fields.get("encoding", "").strip()
    if encoding and encoding != "auto":
        options += ["--encoding", encoding]
    delimiter = fields.get("delimiter", "").strip()
    if delimiter and delimiter != "auto":
        if delimiter not in _DELIMITERS:
            raise BadUpload("The delimiter must be auto, comma, semicolon, tab or pipe.")
        options += ["--delimiter", _DELIMITERS[delimiter]]
    return options


def table_path(database: str, table: str) -> str:
    """Datasette's URL of a table (its tilde-encoding, datasette.utils.tilde_encode, which the
    gateway does not import: loading Datasette takes most of a second)."""
    return f"/{_tilde_encode(database)}/{_tilde_encode(table)}"


_TILDE_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _tilde_encode(text: str) -> str:
    return "".join(chr(b) if b in _TILDE_SAFE else "+" if b == 0x20 else f"~{b:02X}"
                   for b in text.encode())
