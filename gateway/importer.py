"""CSV -> a typed SQLite table: the import a tenant's upload runs, as the tenant, in its sandbox.

    python -m gateway.importer --data-dir /data --filename "Budget 2024.csv" <upload 3<commit

The gateway (upload.py) streams the uploaded file into stdin and reads JSON lines from stdout:

    {"event": "progress", "rows": 120000, "bytes": 10485760}     every ~0.2 s while reading
    {"event": "staged", "rows": 1000000, "columns": [...]}        stdin reached its end
    {"event": "done", "database": "data", "table": "budget_2024", "rows": ..., "columns": [...],
     "cpu_s": 3.1, "max_rss_mb": 41.0}                            committed
    {"event": "error", "message": "Line 12: ...", "line": 12}     nothing was changed

Two phases, so that a broken file, a cancelled upload or a dead gateway never leave anything
half-done behind:

1. Staging: bytes -> text (encoding detected) -> records (delimiter sniffed) -> rows in a
   private scratch database on the tenant's disk (not the sandbox's RAM-backed /tmp), while
   column types are tracked. See Import for the scratch space and how rows are staged.
2. Commit: only once the gateway writes its instruction on fd 3 (`{"database": "data.db",
   "table": "t", "mode": "create"}`), one transaction on the target database creates (or
   replaces, or appends to) the typed table from the staged rows. If fd 3 closes without an
   instruction (the upload failed or was abandoned), nothing is written.

Column types are sqlite-utils' (`sqlite-utils insert --csv`, whose TypeTracker decides, and whose
transform() copies with NULLIF): a column is INTEGER if every non-empty value passes Python's
int(), else REAL if every one passes float(), else TEXT. Values are stored the way that copy
stores them: the raw text, converted by the column's affinity, with empty cells NULL in numeric
columns. Tracking is one streaming pass, a batch of rows at a time, column by column.

The pure parts (encoding, dialect, headers, names, types) are functions and small classes at
the top; the I/O (stdin, SQLite, fd 3) is at the bottom. This module imports only the standard
library: it starts inside the sandbox on every upload.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import contextlib
import csv
import fcntl
import gc
import io
import itertools
import json
import os
import re
import resource
import sqlite3
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

Mode = Literal["create", "replace", "append"]
MODES: tuple[Mode, ...] = ("create", "replace", "append")
ColumnType = Literal["INTEGER", "REAL", "TEXT"]

DELIMITERS = (",", ";", "\t", "|")
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
# Names accepted for an explicit encoding, and the decoder each one means.
ENCODINGS = {
    "utf-8": "utf-8", "utf8": "utf-8", "utf-8-sig": "utf-8",
    "utf-16": "utf-16", "utf16": "utf-16",
    "windows-1252": "windows-1252", "cp1252": "windows-1252",
    "latin-1": "latin-1", "latin1": "latin-1", "iso-8859-1": "latin-1",
}
MAX_COLUMNS = 2000  # SQLite's default SQLITE_MAX_COLUMN
MAX_LINE_CHARS = 16 * 1024 * 1024  # a longer line is not CSV text (and would fill memory)
FIELD_SIZE_LIMIT = csv.field_size_limit()
DATABASE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
MAX_TABLE_NAME = 64

_HEAD_BYTES = 64 * 1024  # what encoding and dialect detection look at (bytes, characters)
_CHUNK_BYTES = 1024 * 1024
_BATCH_ROWS = 5000
_PROGRESS_EVERY_S = 0.2


class ImportFailed(Exception):
    """The file cannot be imported; the message says why and what to do, `line` where."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def at_line(line: int, message: str) -> ImportFailed:
    return ImportFailed(f"Line {line}: {message}", line=line)


# --- what kind of file, and which encoding ----------------------------------------------------

_NOT_CSV = [
    (b"\x1f\x8b", "This is a gzip-compressed file, not a CSV file. Decompress it and upload the"
                  " .csv file inside."),
    (b"PK\x03\x04", "This looks like an Excel workbook (.xlsx) or a ZIP archive, not a CSV file."
                    " In your spreadsheet, save or download the sheet as CSV, then upload that."),
    (b"\xd0\xcf\x11\xe0", "This looks like an old Excel workbook (.xls), not a CSV file. In your"
                          " spreadsheet, save the sheet as CSV, then upload that."),
    (b"%PDF", "This is a PDF document, not a CSV file."),
    (b"SQLite format 3\x00", "This is an SQLite database, not a CSV file."),
    (b"\x00\x00\xfe\xff", "This file is UTF-32, which is not supported: save it as CSV UTF-8."),
    (b"\xff\xfe\x00\x00", "This file is UTF-32, which is not supported: save it as CSV UTF-8."),
]


def refuse_non_csv(head: bytes) -> None:
    """Raise ImportFailed for files that are recognisably something else than CSV text."""
    for magic, message in _NOT_CSV:
        if head.startswith(magic):
            raise ImportFailed(message, line=1)


def detect_encoding(head: bytes) -> str:
    """One of "utf-8", "utf-16-le", "utf-16-be", "windows-1252" (see Decoder), from the start.

    A byte-order mark decides. Without one, NUL bytes in every other position mean UTF-16.
    Otherwise it is UTF-8 unless the first non-ASCII bytes are not UTF-8, then Windows-1252. When
    the start is all ASCII, Decoder applies the same rule where the first non-ASCII byte comes.
    """
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8"
    if head.startswith(codecs.BOM_UTF16_LE):
        return "utf-16-le"
    if head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16-be"
    sample = head[:4096]
    even, odd = sample[0::2], sample[1::2]
    if len(sample) >= 4:
        if odd.count(0) > len(odd) * 0.3 and even.count(0) < len(even) * 0.05:
            return "utf-16-le"
        if even.count(0) > len(even) * 0.3 and odd.count(0) < len(odd) * 0.05:
            return "utf-16-be"
    return "utf-8" if _first_non_ascii_is_utf8(head) else "windows-1252"


def _first_non_ascii_is_utf8(data: bytes) -> bool:
    """The rule Decoder follows too: a file is UTF-8 unless its first non-ASCII bytes are not
    (later invalid bytes are then an error, not a reason to guess again)."""
    try:
        data[: len(data) - _incomplete_utf8_tail(data)].decode("utf-8")
    except UnicodeDecodeError as exc:
        return not data[: exc.start].isascii()
    return True


def _incomplete_utf8_tail(data: bytes) -> int:
    """How many bytes at the end start a UTF-8 sequence that the next chunk completes."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: keep looking for the lead byte
            continue
        if byte >= 0xC0:
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return back if needed > back else 0
        return 0
    return 0


# Windows-1252 as browsers decode it (WHATWG): its five unassigned bytes map to the C1
# controls, as in Latin-1, so any byte sequence decodes and nothing is lost.
_WINDOWS_1252 = "".join(
    bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in range(256)
)



class Decoder:
    """Bytes -> text, chunk by chunk, in one of the encodings detect_encoding names (or latin-1).

    `decode` returns the text it could decode and, when the rest cannot be, the error to raise
    once that text has been used (so the error can name its line). Detected UTF-8 switches to
    Windows-1252 when the first non-ASCII bytes are not UTF-8: everything before was ASCII,
    which reads the same in both. UTF-8 that turns invalid after valid non-ASCII text, and
    broken UTF-16, are errors.
    """

    def __init__(self, encoding: str, *, detected: bool) -> None:
        self.encoding = encoding
        self._may_switch = detected and encoding == "utf-8"
        self._pending = b""
        self._at_start = True

    def decode(self, data: bytes, final: bool = False) -> tuple[str, ImportFailed | None]:
        data = self._pending + data
        self._pending = b""
        if self._at_start:
            if len(data) < 3 and not final:
                self._pending = data
                return "", None
            self._at_start = False
            data = _strip_bom(data, self.encoding)
        if self.encoding == "utf-8":
            return self._decode_utf8(data, final)
        if self.encoding in ("utf-16-le", "utf-16-be"):
            return self._decode_utf16(data, final)
        if self.encoding == "windows-1252":
            return codecs.charmap_decode(data, "strict", _WINDOWS_1252)[0], None
        return data.decode("latin-1"), None

    def _decode_utf8(self, data: bytes, final: bool) -> tuple[str, ImportFailed | None]:
        if self._may_switch and data.isascii():
            return data.decode("ascii"), None
        keep = 0 if final else _incomplete_utf8_tail(data)
        try:
            text = data[: len(data) - keep].decode("utf-8")
        except UnicodeDecodeError as exc:
            if self._may_switch and data[: exc.start].isascii():
                self.encoding = "windows-1252"
                return codecs.charmap_decode(data, "strict", _WINDOWS_1252)[0], None
            good = data[: exc.start].decode("utf-8")
            if exc.reason == "unexpected end of data":
                problem = "the file ends in the middle of a UTF-8 character."
            else:
                problem = f"byte 0x{data[exc.start]:02X} is not valid UTF-8."
            return good, ImportFailed(
                f"{problem} The file mixes text encodings: save it again as CSV UTF-8 and"
                " upload that, or choose its encoding."
            )
        self._pending = data[len(data) - keep:]
        self._may_switch = self._may_switch and text.isascii()
        return text, None

    def _decode_utf16(self, data: bytes, final: bool) -> tuple[str, ImportFailed | None]:
        codec = self.encoding
        end = len(data) - len(data) % 2
        if not final and end >= 2:
            unit = data[end - 2:end]
            high = unit[1] if codec == "utf-16-le" else unit[0]
            if 0xD8 <= high <= 0xDB:  # a high surrogate: its pair comes with the next chunk
                end -= 2
        self._pending = b"" if final else data[end:]
        try:
            text = data[:end].decode(codec)
        except UnicodeDecodeError as exc:
            good = data[: exc.start - exc.start % 2].decode(codec)
            return good, ImportFailed(
                "the text is not valid UTF-16 (a broken surrogate pair). Save the file again as"
                " CSV UTF-8 and upload that."
            )
        if final and end < len(data):
            return text, ImportFailed("the file ends in the middle of a UTF-16 character.")
        return text, None


def _strip_bom(data: bytes, encoding: str) -> bytes:
    bom = {"utf-8": codecs.BOM_UTF8, "utf-16-le": codecs.BOM_UTF16_LE,
           "utf-16-be": codecs.BOM_UTF16_BE}.get(encoding)
    return data[len(bom):] if bom and data.startswith(bom) else data


def resolve_encoding(name: str, head: bytes) -> str:
    """An encoding the user chose, as a Decoder encoding ("utf-16" follows the byte order)."""
    kind = ENCODINGS.get(name.strip().lower())
    if kind is None:
        known = ", ".join(sorted({"utf-8", "utf-16", "windows-1252", "latin-1"}))
        raise ImportFailed(f"Unknown encoding {name!r}; choose one of {known}.")
    if kind == "utf-16":
        return "utf-16-be" if head.startswith(codecs.BOM_UTF16_BE) else "utf-16-le"
    return kind


class Lines:
    """Text chunks -> lines with their endings, as a file opened with newline="" yields them
    (what csv.reader expects: it keeps line breaks inside quoted fields). Each chunk's complete
    lines become one StringIO, chained, so csv.reader pulls lines without Python in between.

    A decoding error is raised where it happened: after the lines before it, naming its line.
    """

    def __init__(self, chunks: Iterable[tuple[str, ImportFailed | None]]) -> None:
        self._chunks = chunks
        self.count = 0  # lines handed out so far

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self._buffers())

    def _buffers(self) -> Iterator[io.StringIO]:
        carry = ""
        for text, error in self._chunks:
            if "\x00" in text:
                text, error = _cut_at_nul(text)
            data = carry + text
            # Cut after the last line break, keeping a final "\r" back: a "\n" may follow it.
            end = max(data.rfind("\n"), data.rfind("\r", 0, len(data) - 1)) + 1
            if error is not None and data.endswith("\r"):
                end = len(data)
            complete, carry = data[:end], data[end:]
            if len(carry) > MAX_LINE_CHARS:
                error = ImportFailed(f"this line is longer than {MAX_LINE_CHARS:,} characters,"
                                     " so the file does not look like CSV text.")
            self.count += complete.count("\n") + complete.count("\r") - complete.count("\r\n")
            yield io.StringIO(complete, newline="")
            if error is not None:
                line = self.count + 1
                raise ImportFailed(f"Line {line}: {error}", line=line)
        if carry:
            self.count += 1
            yield io.StringIO(carry, newline="")


def _cut_at_nul(text: str) -> tuple[str, ImportFailed]:
    return text[: text.index("\x00")], ImportFailed(
        "this line contains binary data (a NUL byte), so the file does not look like CSV text."
    )


def decoded_chunks(
    chunks: Iterator[bytes], decoder: Decoder
) -> Iterator[tuple[str, ImportFailed | None]]:
    for chunk in chunks:
        text, error = decoder.decode(chunk)
        yield text, error
        if error is not None:
            return
    yield decoder.decode(b"", final=True)


# --- dialect, headers and names (pure) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dialect:
    delimiter: str
    skip_first_line: bool = False  # Excel's "sep=;" line, which names the delimiter


def sniff_dialect(sample: str, *, filename: str = "", complete: bool = False) -> Dialect:
    """Pick the delimiter (comma, semicolon, tab or pipe) that splits the start of the file
    into rows as wide as its header: the one with the most rows of the header's width.

    `complete` says the sample is the whole file (else its last, maybe cut, row is ignored).
    Ties go to tab for .tsv/.tab files, else in the order comma, semicolon, tab, pipe.
    """
    first = sample.split("\n", 1)[0].rstrip("\r")
    if len(first) == 5 and first.startswith("sep=") and first[4] in DELIMITERS:
        return Dialect(first[4], skip_first_line=True)
    order = list(DELIMITERS)
    if filename.lower().endswith((".tsv", ".tab")):
        order.remove("\t")
        order.insert(0, "\t")

    def score(delimiter: str) -> tuple[bool, float, int]:
        widths = _record_widths(sample, delimiter, complete)
        if not widths:
            return False, 0.0, -order.index(delimiter)
        header = widths[0]
        share = sum(1 for width in widths if width == header) / len(widths)
        return header > 1, share, -order.index(delimiter)

    return Dialect(max(order, key=score))


def _record_widths(sample: str, delimiter: str, complete: bool) -> list[int]:
    reader = csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter)
    widths: list[int] = []
    with contextlib.suppress(csv.Error):  # a sample cut inside a quoted field, or no CSV at all
        for row in reader:
            if row:
                widths.append(len(row))
    if not complete and len(widths) > 1:
        widths.pop()
    return widths


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


# --- column types (pure) ----------------------------------------------------------------------


class TypeTracker:
    """sqlite-utils' TypeTracker, a batch of rows at a time: each column is INTEGER while every
    non-empty value passes int(), then REAL while every one passes float(), then TEXT.

    Same answers as sqlite-utils because the same int()/float() decide (int-valid strings are
    float-valid too, tests/test_importer.py checks, so a column leaving INTEGER only needs its
    current batch checked for float). The loops over values run in C (map, filter).
    """

    def __init__(self, width: int) -> None:
        self.types: list[ColumnType] = ["INTEGER"] * width
        self.rows = 0

    def observe(self, rows: list[list[str]]) -> None:
        self.rows += len(rows)
        if all(kind == "TEXT" for kind in self.types):
            return
        for index, column in enumerate(zip(*rows, strict=True)):
            kind = self.types[index]
            if kind == "INTEGER" and not (_plain_integers(column) or _all_convert(int, column)):
                kind = "REAL"
            if kind == "REAL" and not _all_convert(float, column):
                kind = "TEXT"
            self.types[index] = kind

    def result(self) -> list[ColumnType]:
        """The types; a file with no rows at all gets TEXT columns (nothing says otherwise)."""
        return list(self.types) if self.rows else ["TEXT"] * len(self.types)


def _plain_integers(values: tuple[str, ...]) -> bool:
    """True if every value is empty or an optional "-" and decimal digits, all of which int()
    accepts: a few passes of C over the joined column instead of an int() call per value.
    False means "ask int()" (signs, spaces, underscores, more digits than int() allows)."""
    joined = "\x00".join(values)
    if joined.count("\x00") != len(values) - 1:  # a NUL inside a value (Lines refuses them)
        return False
    if "-" in joined:
        minus_led = joined.count("\x00-") + joined.startswith("-")
        if joined.count("-") != minus_led or "-\x00" in joined or joined.endswith("-"):
            return False
        joined = joined.replace("-", "")
    digits = joined.replace("\x00", "")
    return (not digits or digits.isdecimal()) and max(map(len, values)) <= _INT_MAX_DIGITS


# int() refuses longer digit strings (sys.get_int_max_str_digits(), CVE-2020-10735).
_INT_MAX_DIGITS = sys.get_int_max_str_digits() or 1 << 62


def _all_convert(convert: Callable[[str], object], values: Iterable[str]) -> bool:
    try:
        _consume(map(convert, filter(None, values)))
    except ValueError:
        return False
    return True


# Runs an iterator to its end in C (a Python for loop would double the cost of tracking).
_consume = collections.deque[object](maxlen=0).extend


# --- staging: the file -> raw rows in a scratch database (I/O) ---------------------------------


@dataclass(frozen=True, slots=True)
class Staged:
    columns: list[str]
    types: list[ColumnType]  # from every row: the table's types
    declared: list[str]  # the staging table's, guessed from the first rows ("": none, raw text)
    rows: int
    encoding: str
    delimiter: str


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


class Import:
    """One file's import: staged, then committed. Owns a private scratch space on the tenant's
    disk (the sandbox's /tmp lives in RAM), gone whatever happens to this process: a staging
    database, unlinked as soon as opened, and an anonymous file holding the upload's bytes.

    Rows are staged with the column types their first batch suggests, so that a commit to
    those types is a raw copy of SQLite records (its transfer optimisation; a third of the
    cost of converting every value). When the file later proves a guess wrong for the target
    (a column staged as numbers ends as text, or an append into a text column), the bytes are
    staged again as text and converted on the way in: the result is the same either way.
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
        return self.staged

    def commit(self, target: Target) -> Imported:
        """Create, replace or append to the target table, in one transaction."""
        assert self.staged is not None, "stage() first"
        return commit(self.connection, self.staged, self.data_dir, target, self._restage)

    def _restage(self) -> Staged:
        self.connection.execute("DROP TABLE staging")
        self.copy.flush()
        self.copy.seek(0)
        self.staged = stage(ByteCounter(self.copy), self.connection, guess_types=False,
                            **self.options)
        return self.staged


def _open_staging(data_dir: Path) -> sqlite3.Connection:
    path = data_dir / f".upload-{os.getpid()}-{time.monotonic_ns():x}.staging"
    connection = sqlite3.connect(path, isolation_level=None, timeout=60)
    try:
        connection.execute("PRAGMA page_size=65536")  # a sixteenth of the system calls
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA wal_autocheckpoint=0")  # the target's: see checkpoint()
    finally:
        path.unlink()
    return connection


def stage(
    source: ByteCounter,
    connection: sqlite3.Connection,
    *,
    filename: str = "",
    encoding: str | None = None,
    delimiter: str | None = None,
    progress: Progress | None = None,
    guess_types: bool = True,
) -> Staged:
    """Read the whole upload into table `staging` and track its column types. With
    `guess_types`, columns are declared with the types of the first batch (see Import)."""
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
    columns = clean_headers(records.header())
    width = len(columns)
    if width > MAX_COLUMNS:
        raise at_line(records.start_line, f"the header has {width:,} columns; SQLite allows"
                                          f" at most {MAX_COLUMNS:,}.")
    tracker = TypeTracker(width)
    batches = records.batches(width)
    first = next(batches, [])
    tracker.observe(first)
    declared = guess_declared_types(tracker, first) if guess_types else [""] * width
    connection.execute("CREATE TABLE staging ("
                       + ", ".join(f"c{i} {kind}".rstrip() for i, kind in enumerate(declared))
                       + ")")
    values = ", ".join("NULLIF(?, '')" if kind in _NUMERIC else "?" for kind in declared)
    insert = f"INSERT INTO staging VALUES ({values})"
    last_report = time.monotonic()
    connection.execute("BEGIN")
    connection.executemany(insert, first)
    for batch in batches:
        tracker.observe(batch)
        connection.executemany(insert, batch)
        if progress is not None and time.monotonic() - last_report >= _PROGRESS_EVERY_S:
            last_report = time.monotonic()
            progress(tracker.rows, source.total)
    connection.execute("COMMIT")
    if progress is not None:
        progress(tracker.rows, source.total)
    return Staged(columns, tracker.result(), declared, tracker.rows,
                  _ENCODING_NAMES[decoder.encoding], dialect.delimiter)


_NUMERIC = ("INTEGER", "REAL")
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
        reader, offset = self.reader, self.offset
        last_end = reader.line_num  # the line the previous record ended on
        while True:
            batch: list[list[str]] = []
            append = batch.append
            before = reader.line_num
            try:
                for row in itertools.islice(reader, _BATCH_ROWS):
                    if len(row) == width:
                        append(row)
                    elif row:  # blank lines ([]) are skipped
                        self.start_line = offset + last_end + 1
                        append(self._fit(row, width))
                    last_end = reader.line_num
            except csv.Error as exc:
                self.start_line = offset + last_end + 1
                raise self._csv_error(exc) from None
            if reader.line_num == before:
                return
            if batch:
                yield batch

    def _fit(self, row: list[str], width: int) -> list[str]:
        """Short rows are padded with empty cells; extra cells are allowed only when empty
        (spreadsheets add trailing delimiters)."""
        if len(row) < width:
            return row + [""] * (width - len(row))
        if any(row[width:]):
            raise at_line(
                self.start_line,
                f"this row has {len(row)} fields, but the header has {width}. A field that"
                " contains the delimiter must be quoted.",
            )
        return row[:width]

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


# --- commit: the staged rows -> the target table, in one transaction (I/O) ---------------------


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
    result (see Import)."""
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
    values = copy_values(staged.declared, [kind in _NUMERIC for kind in staged.types])
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
    values = copy_values(staged.declared, [_is_numeric(kind) for _, kind in targets])
    connection.execute(
        f"INSERT INTO target.{quote(table)} ({', '.join(quote(n) for n, _ in targets)})"
        f" SELECT {', '.join(values)} FROM main.staging"
    )
    return targets


def copy_values(declared: list[str], numeric: list[bool]) -> list[str]:
    """What to select from each staged column for a target column that is `numeric` or not.

    Text staged raw: empty cells become NULL in numeric columns (sqlite-utils' transform:
    NULLIF(col, '')), the rest is converted by the target's type as it goes in. Staged as a
    number (already converted, empty already NULL): as it is, into any numeric column (REAL
    and INTEGER affinity agree on every value either gives); into a text column it cannot go,
    because "007" or "1.50" were not kept: raises _StagedAsNumbers.
    """
    values = []
    for index, (kind, to_number) in enumerate(zip(declared, numeric, strict=True)):
        column = f"c{index}"
        if kind in _NUMERIC and not to_number:
            raise _StagedAsNumbers
        values.append(f"NULLIF({column}, '')" if to_number and kind not in _NUMERIC else column)
    return values


def _is_numeric(declared: str) -> bool:
    """Does a declared type have INTEGER, REAL or NUMERIC affinity? (sqlite.org/datatype3)"""
    upper = declared.upper()
    if "INT" in upper:
        return True
    return bool(upper) and not any(word in upper for word in ("CHAR", "CLOB", "TEXT", "BLOB"))


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


# --- the process: stdin, stdout, fd 3 ----------------------------------------------------------


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
                          for n, t in zip(staged.columns, staged.types, strict=True)]})
        target = read_instruction(args.commit_fd)
        if target is None:
            return
        imported = job.commit(target)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        emit({"event": "done", **imported.as_json(),
              "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
              "max_rss_mb": round(usage.ru_maxrss / 1024, 1)})
    checkpoint(args.data_dir / target.database)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway.importer", description=__doc__.split("\n")[0])
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
