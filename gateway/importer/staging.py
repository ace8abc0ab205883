"""Staging: the file -> raw rows in a scratch database, column types tracked (I/O)."""

from __future__ import annotations

import csv
import itertools
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from .column_types import ColumnType, TypeTracker
from .dialect import DELIMITERS, Dialect, sniff_dialect
from .errors import ImportFailed, at_line
from .inserter import Inserter
from .names import clean_headers
from .notes import delimiter_note, encoding_note, header_notes, number_notes
from .numbers import NumberFormat, Reading, read_columns
from .text import Decoder, Lines, decoded_chunks, detect_encoding, refuse_non_csv, resolve_encoding

MAX_COLUMNS = 2000  # SQLite's default SQLITE_MAX_COLUMN
FIELD_SIZE_LIMIT = csv.field_size_limit()

_HEAD_BYTES = 64 * 1024  # what encoding and dialect detection look at (bytes, characters)
_CHUNK_BYTES = 1024 * 1024
_BATCH_ROWS = 5000
_PROGRESS_EVERY_S = 0.2


@dataclass(frozen=True, slots=True)
class Staged:
    columns: list[str]
    types: list[ColumnType]  # from every row: the table's types
    declared: list[str]  # the staging table's, guessed from the first rows ("": none, raw text)
    rows: int
    encoding: str
    delimiter: str
    formats: list[NumberFormat | None]  # text columns of numbers written for people
    notes: list[str]  # what was changed or guessed, for the person who uploaded (notes.py)
    unresolved: frozenset[int]  # columns to watch from the first row (a second pass)


Progress = Callable[[int, int], None]  # (rows so far, bytes read so far)


class ByteCounter:
    """Chunks of a binary stream, counting the bytes read, copied to `copy` if given."""

    def __init__(self, stream: IO[bytes], copy: IO[bytes] | None = None,
                 chunk_bytes: int = _CHUNK_BYTES) -> None:
        self.stream = stream
        self.copy = copy
        self.chunk_bytes = chunk_bytes
        self.total = 0

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.stream.read(self.chunk_bytes):
            self.total += len(chunk)
            if self.copy is not None:
                self.copy.write(chunk)
            yield chunk



def stage(
    source: ByteCounter,
    connection: sqlite3.Connection,
    *,
    filename: str = "",
    encoding: str | None = None,
    delimiter: str | None = None,
    progress: Progress | None = None,
    guess_types: bool = True,
    from_start: frozenset[int] = frozenset(),
) -> Staged:
    """Read the whole upload into table `staging` and track its column types. With
    `guess_types`, columns are declared with the types of the first batch (see job.Import);
    `from_start` columns are watched as numbers written for people from the first row."""
    chunks = iter(source)
    head = _read_head(chunks)
    refuse_non_csv(head)
    if encoding is None:
        decoder = Decoder(detect_encoding(head), detected=True)
    else:
        decoder = Decoder(resolve_encoding(encoding, head), detected=False)
    sample, error = decoder.decode(head)
    complete = error is None and len(head) < _HEAD_BYTES
    if complete:
        tail, error = decoder.decode(b"", final=True)
        sample += tail
        text_chunks: Iterable[tuple[str, ImportFailed | None]] = [(sample, error)]
    else:
        text_chunks = _chain([(sample, error)], decoded_chunks(chunks, decoder))
    if delimiter is None:
        dialect = sniff_dialect(sample[:_HEAD_BYTES], filename=filename,
                                complete=complete and len(sample) <= _HEAD_BYTES)
    elif delimiter in DELIMITERS:
        dialect = Dialect(delimiter)
    else:
        raise ImportFailed("The delimiter must be a comma, semicolon, tab or pipe.")
    lines = iter(Lines(text_chunks))
    if dialect.skip_first_line:
        next(lines, None)
    reader = csv.reader(lines, delimiter=dialect.delimiter, quotechar='"',
                        doublequote=True, strict=True)
    records = _Records(reader, 1 if dialect.skip_first_line else 0)
    cells = records.header()
    columns = clean_headers(cells)
    width = len(columns)
    if width > MAX_COLUMNS:
        raise at_line(records.start_line, f"the header has {width:,} columns; SQLite allows"
                                          f" at most {MAX_COLUMNS:,}.")
    tracker = TypeTracker(width, from_start)
    batches = records.batches(width)
    first = next(batches, [])
    tracker.observe(first)
    declared = guess_declared_types(tracker, first) if guess_types else [""] * width
    connection.execute("CREATE TABLE staging ("
                       + ", ".join(f"c{i} {kind}".rstrip() for i, kind in enumerate(declared))
                       + ")")
    last_report = time.monotonic()
    connection.execute("BEGIN")
    with Inserter(connection, declared) as insert:
        insert(first)
        for batch in batches:
            tracker.observe(batch)
            insert(batch)
            if progress is not None and time.monotonic() - last_report >= _PROGRESS_EVERY_S:
                last_report = time.monotonic()
                progress(tracker.rows, source.total)
    connection.execute("COMMIT")
    if progress is not None:
        progress(tracker.rows, source.total)
    types, formats, readings = _numbers_for_people(tracker)
    unresolved = frozenset(index for index in tracker.unsure
                           if (reading := readings[index]) is not None
                           and (reading.format is not None or reading.ambiguous))
    encoding_name = _ENCODING_NAMES[decoder.encoding]
    notes = [*(encoding_note(encoding_name) if encoding is None else []),
             *(delimiter_note(dialect.delimiter, from_sep_line=dialect.skip_first_line)
               if delimiter is None else []),
             *header_notes(cells, columns), *number_notes(columns, readings)]
    return Staged(columns, types, declared, tracker.rows, encoding_name, dialect.delimiter,
                  formats, notes, unresolved)


def _numbers_for_people(tracker: TypeTracker) -> tuple[
        list[ColumnType], list[NumberFormat | None], list[Reading | None]]:
    """sqlite-utils' types, but numbers for the text columns of numbers written for people."""
    types = tracker.result()
    readings = read_columns([watcher if kind == "TEXT" else None
                             for watcher, kind in zip(tracker.numbers, types, strict=True)])
    formats: list[NumberFormat | None] = []
    for index, (reading, watcher) in enumerate(zip(readings, tracker.numbers, strict=True)):
        number_format = None if reading is None else reading.format
        formats.append(number_format)
        if number_format is not None and watcher is not None:
            types[index] = "INTEGER" if watcher.is_integer(number_format) else "REAL"
    return types, formats, readings


_ENCODING_NAMES = {"utf-8": "utf-8", "utf-16-le": "utf-16", "utf-16-be": "utf-16",
                   "windows-1252": "windows-1252", "latin-1": "latin-1"}


def guess_declared_types(tracker: TypeTracker, first: list[list[str]]) -> list[str]:
    """Staging types from the first batch: its types where it had a value, else none."""
    if not first:
        return [""] * len(tracker.types)
    return [kind if any(column) else ""
            for kind, column in zip(tracker.types, zip(*first, strict=True), strict=True)]


def _read_head(chunks: Iterator[bytes]) -> bytes:
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= _HEAD_BYTES:
            break
    if not head:
        raise ImportFailed("The file is empty.", line=1)
    return head


def _chain(first: list[tuple[str, ImportFailed | None]],
           rest: Iterator[tuple[str, ImportFailed | None]]
           ) -> Iterator[tuple[str, ImportFailed | None]]:
    yield from first
    if first[-1][1] is None:
        yield from rest


def _lines_of(rows: list[list[str]]) -> int:
    """How many lines these records took: one each, plus the line breaks in their fields (kept
    as they were in the file; Lines counts "\r\n", "\n" and "\r" as one break each)."""
    text = "\x00".join(itertools.chain.from_iterable(rows))
    return len(rows) + text.count("\n") + text.count("\r") - text.count("\r\n")


class _Records:
    """csv.reader's rows with the line each starts on, fitted to the header's width."""

    def __init__(self, reader: Any, offset: int) -> None:
        self.reader = reader
        self.offset = offset
        self.start_line = offset + 1

    def _next(self) -> list[str] | None:
        try:
            row: list[str] = next(self.reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            raise self._csv_error(exc) from None
        return row

    def header(self) -> list[str]:
        while (row := self._next()) is not None:
            if row:
                return row
            self.start_line = self.offset + self.reader.line_num + 1
        raise ImportFailed("The file has no header row (it holds only blank lines).", line=1)

    def batches(self, width: int) -> Iterator[list[list[str]]]:
        """Batches of rows, read by csv.reader in C: no Python runs per row. A row's line is
        only worked out when it is needed (an error): the lines before it, plus the line
        breaks inside its batch's earlier fields."""
        reader, offset = self.reader, self.offset
        while True:
            before = reader.line_num
            batch: list[list[str]] = []
            try:
                batch.extend(itertools.islice(reader, _BATCH_ROWS))  # keeps rows read on error
            except csv.Error as exc:
                self.start_line = offset + before + _lines_of(batch) + 1
                raise self._csv_error(exc) from None
            if not batch:
                return
            if list(map(len, batch)).count(width) != len(batch):
                batch = self._fit(batch, width, offset + before)
            if batch:
                yield batch

    def _fit(self, batch: list[list[str]], width: int, before: int) -> list[list[str]]:
        """Blank lines ([]) are skipped; short rows are padded with empty cells; extra cells
        are allowed only when empty (spreadsheets add trailing delimiters)."""
        fitted = []
        for index, row in enumerate(batch):
            if len(row) == width:
                fitted.append(row)
            elif len(row) < width:
                if row:
                    fitted.append(row + [""] * (width - len(row)))
            elif any(row[width:]):
                raise at_line(
                    before + _lines_of(batch[:index]) + 1,
                    f"this row has {len(row)} fields, but the header has {width}. A field that"
                    " contains the delimiter must be quoted.",
                )
            else:
                fitted.append(row[:width])
        return fitted

    def _csv_error(self, exc: csv.Error) -> ImportFailed:
        text = str(exc)
        line = self.offset + self.reader.line_num
        start = self.start_line
        if "unexpected end of data" in text:
            return at_line(start, 'a quoted field starts here, but its closing quote (") is'
                                  " missing.")
        if "field larger than field limit" in text:
            return at_line(start, f"a field is longer than {FIELD_SIZE_LIMIT:,} characters"
                                  f" (up to line {line}). Most likely a quoted field starts"
                                  ' here without its closing quote (").')
        if "expected after" in text:
            return at_line(line, 'a closing quote (") is followed by more text. Quote the whole'
                                 ' field, and double the quotes inside it ("").')
        return at_line(line, f"this line cannot be read as CSV ({text}).")
