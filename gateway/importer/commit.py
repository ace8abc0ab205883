"""Commit: the staged rows -> the target table, in one transaction (I/O)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .column_types import NUMERIC_TYPES
from .errors import ImportFailed
from .names import check_database_file, check_table_name, quote
from .numbers import NumberFormat, plain_sql
from .staging import Staged

Mode = Literal["create", "replace", "append"]
MODES: tuple[Mode, ...] = ("create", "replace", "append")


@dataclass(frozen=True, slots=True)
class Target:
    """Where the staged rows go: the gateway's instruction, read from fd 3."""

    database: str  # a file name in the data folder, e.g. "data.db"
    table: str
    mode: Mode
    create_database: bool = False

    @classmethod
    def from_json(cls, raw: bytes) -> Target:
        try:
            fields = json.loads(raw)
            target = cls(database=str(fields["database"]), table=str(fields["table"]),
                         mode=fields["mode"], create_database=bool(fields.get("create_database")))
        except (ValueError, KeyError, TypeError):
            raise ImportFailed("The gateway sent an unreadable instruction.") from None
        if target.mode not in MODES:
            raise ImportFailed(f"Unknown mode {target.mode!r}; use create, replace or append.")
        return target


@dataclass(frozen=True, slots=True)
class Imported:
    database: str
    table: str
    rows: int
    columns: list[tuple[str, str]]  # (name, declared type)

    def as_json(self) -> dict[str, Any]:
        return {
            "database": self.database, "table": self.table, "rows": self.rows,
            "columns": [{"name": name, "type": kind} for name, kind in self.columns],
        }


def commit(connection: sqlite3.Connection, staged: Staged, data_dir: Path, target: Target,
           restage: Callable[[], Staged]) -> Imported:
    """Create, replace or append to the target table from `staging`, in one transaction.
    `restage` stages the upload again as text, for when the staged types cannot give the
    result (see job.Import)."""
    file_name = check_database_file(target.database)
    table = check_table_name(target.table)
    path = data_dir / file_name
    database = file_name.rsplit(".", 1)[0]
    with _commit_lock(data_dir):
        is_new = not path.exists()
        if is_new and not target.create_database:
            raise ImportFailed(f"There is no database {database!r}.")
        try:
            staged, columns = _commit_into(connection, staged, path, table, target.mode,
                                           database, is_new=is_new, restage=restage)
        except BaseException:
            if is_new:  # no one else can have opened it: see _commit_lock
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
            raise
    return Imported(database, table, staged.rows, columns)


@contextlib.contextmanager
def _commit_lock(data_dir: Path) -> Iterator[None]:
    """One commit at a time per data folder (an flock on the folder, held by importers only),
    so that a new database file that fails its first commit can be removed safely. Commits to
    one database wait for each other anyway (SQLite's write lock); staging runs in parallel."""
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _StagedAsNumbers(Exception):
    """A column was staged as numbers but must go into a text column: stage again as text."""


def _commit_into(connection: sqlite3.Connection, staged: Staged, path: Path, table: str,
                 mode: Mode, database: str, *, is_new: bool, restage: Callable[[], Staged]
                 ) -> tuple[Staged, list[tuple[str, str]]]:
    connection.execute("ATTACH DATABASE ? AS target", (str(path),))
    try:
        if is_new:
            connection.execute("PRAGMA target.journal_mode=WAL")
        while True:
            connection.execute("BEGIN IMMEDIATE")
            try:
                columns = _write_table(connection, staged, table, mode, database)
                connection.execute("COMMIT")
                return staged, columns
            except _StagedAsNumbers:
                connection.execute("ROLLBACK")  # nothing was written
                staged = restage()
            except BaseException:
                if connection.in_transaction:  # SQLite has already rolled back on a full disk
                    connection.execute("ROLLBACK")
                raise
    finally:
        connection.execute("DETACH DATABASE target")


def _write_table(connection: sqlite3.Connection, staged: Staged, table: str, mode: Mode,
                 database: str) -> list[tuple[str, str]]:
    existing = connection.execute(
        "SELECT type, name FROM target.sqlite_master WHERE name = ? COLLATE NOCASE", (table,)
    ).fetchone()
    if existing is not None and existing[0] != "table":
        raise ImportFailed(f"{database!r} already has a {existing[0]} named {existing[1]!r};"
                           " choose another table name.")
    if mode == "append":
        if existing is None:
            raise ImportFailed(f"There is no table {table!r} in {database!r} to append to;"
                               " choose create.")
        return _append(connection, staged, existing[1], database)
    if existing is not None and mode == "create":
        raise ImportFailed(
            f"A table named {existing[1]!r} already exists in {database!r}. Choose replace"
            " to overwrite it, or append to add these rows to it."
        )
    values = copy_values(staged.declared, [kind in NUMERIC_TYPES for kind in staged.types],
                         staged.formats)
    if existing is not None:
        connection.execute(f"DROP TABLE target.{quote(existing[1])}")
    definition = ", ".join(f"{quote(name)} {kind}"
                           for name, kind in zip(staged.columns, staged.types, strict=True))
    connection.execute(f"CREATE TABLE target.{quote(table)} ({definition})")
    # Staged with the final types, "SELECT *" lets SQLite copy records as they are.
    select = "*" if staged.declared == staged.types else ", ".join(values)
    connection.execute(f"INSERT INTO target.{quote(table)} SELECT {select} FROM main.staging")
    return list(zip(staged.columns, staged.types, strict=True))


def _append(connection: sqlite3.Connection, staged: Staged, table: str,
            database: str) -> list[tuple[str, str]]:
    """Rows go into the existing columns of the same names (in any case); types stay."""
    info = connection.execute(f"PRAGMA target.table_info({quote(table)})").fetchall()
    existing = {row[1].casefold(): (row[1], row[2]) for row in info}
    missing = [name for name in staged.columns if name.casefold() not in existing]
    if missing:
        shown = ", ".join(repr(name) for name in missing)
        noun = "column" if len(missing) == 1 else "columns"
        raise ImportFailed(f"Table {table!r} in {database!r} has no {noun} {shown}. Append needs"
                           " the same column names; choose replace or create instead.")
    targets = [existing[name.casefold()] for name in staged.columns]
    values = copy_values(staged.declared, [_is_numeric(kind) for _, kind in targets],
                         staged.formats)
    connection.execute(
        f"INSERT INTO target.{quote(table)} ({', '.join(quote(n) for n, _ in targets)})"
        f" SELECT {', '.join(values)} FROM main.staging"
    )
    return targets


def copy_values(declared: list[str], numeric: list[bool],
                formats: list[NumberFormat | None]) -> list[str]:
    """What to select from each staged column for a target column that is `numeric` or not.

    Text staged raw: empty cells become NULL in numeric columns (sqlite-utils' transform:
    NULLIF(col, '')), the rest is converted by the target's type as it goes in; numbers written
    for people (`formats`) are written plainly first ("1.234,5" -> "1234.5"). Staged as a
    number (already converted, empty already NULL): as it is, into any numeric column (REAL
    and INTEGER affinity agree on every value either gives); into a text column it cannot go,
    because "007" or "1.50" were not kept, nor can numbers written for people ("1.230" staged
    as 1.23): raises _StagedAsNumbers.
    """
    values = []
    for index, (kind, to_number, number_format) in enumerate(
            zip(declared, numeric, formats, strict=True)):
        column = f"c{index}"
        if kind in NUMERIC_TYPES and (not to_number or number_format is not None):
            raise _StagedAsNumbers
        if to_number and number_format is not None:
            column = plain_sql(column, number_format)
        values.append(f"NULLIF({column}, '')" if to_number and kind not in NUMERIC_TYPES
                      else column)
    return values


def _is_numeric(declared: str) -> bool:
    """Does a declared type have INTEGER, REAL or NUMERIC affinity? (sqlite.org/datatype3)"""
    upper = declared.upper()
    if "INT" in upper:
        return True
    return bool(upper) and not any(word in upper for word in ("CHAR", "CLOB", "TEXT", "BLOB"))
