"""The importer: real-world CSV files into typed tables, exactly like sqlite-utils, or a clear no.

Fixture files are in tests/fixtures/csv (see its README). `python -m gateway.importer` runs as a
real process here; the hypothesis tests use its Import in-process (hundreds of
examples) and compare with sqlite-utils' own `insert --csv` logic as the oracle.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlite_utils.utils import TypeTracker as SqliteUtilsTypeTracker
from sqlite_utils.utils import ValueTracker

from gateway.importer.column_types import TypeTracker, _plain_integers
from gateway.importer.commit import Target, _StagedAsNumbers, copy_values
from gateway.importer.dialect import DELIMITERS, sniff_dialect
from gateway.importer.errors import ImportFailed, at_line
from gateway.importer.job import Import
from gateway.importer.names import clean_headers, quote, table_name_for
from gateway.importer.numbers import (
    DECIMAL_COMMA,
    THOUSANDS_COMMA,
    NumberColumn,
    NumberFormat,
    Reading,
    plain_sql,
    plain_value,
    read_columns,
)
from gateway.importer.text import Decoder, detect_encoding

from .conftest import UID_BASE

FIXTURES = Path(__file__).parent / "fixtures" / "csv"


# --- helpers ----------------------------------------------------------------------------------


def run_importer(
    data_dir: Path, data: bytes, *, filename: str = "upload.csv",
    target: dict[str, Any] | None = None, args: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Run `python -m gateway.importer` with `data` on stdin and `target` on fd 3 (None:
    close fd 3 without an instruction, as the gateway does when an upload is cancelled)."""
    commit_read, commit_write = os.pipe()
    if target is not None:
        os.write(commit_write, json.dumps(target).encode())
    os.close(commit_write)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gateway.importer", "--data-dir", str(data_dir),
             "--filename", filename, "--commit-fd", str(commit_read), *args],
            input=data, capture_output=True, pass_fds=(commit_read,), timeout=60, check=False,
        )
    finally:
        os.close(commit_read)
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.splitlines()]


def import_fixture(tmp_path: Path, name: str, **target: Any) -> dict[str, Any]:
    table = target.pop("table", table_name_for(name))
    instruction = {"database": "data.db", "table": table, "mode": "create",
                   "create_database": True, **target}
    events = run_importer(tmp_path, (FIXTURES / name).read_bytes(), filename=name,
                          target=instruction)
    return events[-1]


def rows(database: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as connection:
        result = connection.execute(f"SELECT * FROM {quote(table)}").fetchall()
    connection.close()
    return result


def typed_rows(database: Path, table: str) -> list[tuple[str, ...]]:
    """Rows with every value rendered by SQLite's quote(): 1, 1.0, 'one' and NULL all differ."""
    with sqlite3.connect(database) as connection:
        names = [r[1] for r in connection.execute(
            f"PRAGMA table_info({quote(table)})")]
        select = ", ".join(f"quote({quote(n)})" for n in names)
        result = connection.execute(
            f"SELECT {select} FROM {quote(table)} ORDER BY rowid").fetchall()
    connection.close()
    return result


def column_types(database: Path, table: str) -> list[tuple[str, str]]:
    with sqlite3.connect(database) as connection:
        result = [(r[1], r[2]) for r in connection.execute(
            f"PRAGMA table_info({quote(table)})")]
    connection.close()
    return result


def snapshot(data_dir: Path) -> tuple[list[str], list[str]]:
    """What a database holds (its SQL dump) and which files the folder has (minus -wal/-shm)."""
    files = sorted(p.name for p in data_dir.iterdir() if not p.name.endswith(("-wal", "-shm")))
    dump: list[str] = []
    for name in files:
        if name.endswith(".db"):
            connection = sqlite3.connect(data_dir / name)
            dump += list(connection.iterdump())
            connection.close()
    return files, dump


def sqlite_utils_oracle(database: Path, table: str, names: list[str],
                        records: list[list[str]]) -> None:
    """What `sqlite-utils insert DB TABLE FILE --csv` does with these rows (its cli.py):
    insert every value as text while its TypeTracker watches, then transform to the types."""
    db = sqlite_utils.Database(database)
    tracker = SqliteUtilsTypeTracker()
    db[table].insert_all(tracker.wrap(dict(zip(names, record, strict=True))
                                      for record in records))
    db[table].transform(types=tracker.types)
    db.close()


# --- fixtures: the real-world cases ----------------------------------------------------------


def test_utf8_with_types_and_non_ascii(tmp_path: Path) -> None:
    done = import_fixture(tmp_path, "utf8.csv")
    assert done.pop("cpu_s") > 0 and done.pop("max_rss_mb") > 0
    assert done == {
        "event": "done", "database": "data", "table": "utf8", "rows": 3,
        "columns": [{"name": "city", "type": "TEXT"}, {"name": "population", "type": "INTEGER"},
                    {"name": "area_km2", "type": "REAL"}, {"name": "note", "type": "TEXT"}],
        "notes": [],
    }
    assert rows(tmp_path / "data.db", "utf8") == [
        ("Zürich", 421878, 87.88, "Ünïcödé"),
        ("東京", 13960000, 2194.07, ""),
        ("São Paulo", 12330000, None, "🙂 emoji"),
    ]


def test_excel_csv_utf8_with_bom_crlf_and_quoted_newlines(tmp_path: Path) -> None:
    done = import_fixture(tmp_path, "excel-utf8-bom.csv")
    assert [c["name"] for c in done["columns"]] == ["id", "name", "quote", "amount"]
    assert rows(tmp_path / "data.db", "excel_utf8_bom") == [
        (1, "Smith, Jane", 'She said "hi"', 12.5),
        (2, "Multi\r\nline", "a\nb", 7.0),
        (3, "Plain", "", None),
    ]


def test_excel_unicode_text_is_utf16_tab_separated(tmp_path: Path) -> None:
    done = import_fixture(tmp_path, "excel-unicode-text.txt")
    assert done["table"] == "excel_unicode_text"
    assert rows(tmp_path / "data.db", "excel_unicode_text") == [
        (1, "Łódź", 10), (2, "Kraków", None)]


def test_utf16_big_endian(tmp_path: Path) -> None:
    import_fixture(tmp_path, "utf16-be.csv")
    assert rows(tmp_path / "data.db", "utf16_be") == [("Ära", 1), ("Öl", 2)]


def test_windows_1252_semicolons_and_decimal_commas(tmp_path: Path) -> None:
    """European Excel: ';' between fields, ',' in numbers. sqlite-utils types "1,50" as text
    (float() refuses it); the importer stores numbers, and says so."""
    done = import_fixture(tmp_path, "windows-1252-semicolon.csv")
    assert done["columns"] == [{"name": "Produit", "type": "TEXT"},
                               {"name": "Prix", "type": "REAL"},
                               {"name": "Quantité", "type": "INTEGER"}]
    assert rows(tmp_path / "data.db", "windows_1252_semicolon") == [
        ("Café", 1.5, 3), ("Thé", 2.0, 12), ("Euro €", 3.25, None),
    ]
    assert done["notes"] == [
        "The text is not UTF-8, so it was read as Windows-1252.",
        "The fields are separated by a semicolon (detected).",
        'Column "Prix" is read as numbers with a decimal comma (1,50 is 1.50).',
    ]


def test_eurostat_export_numbers_are_numbers_and_every_guess_is_said(tmp_path: Path) -> None:
    """1. Import a Eurostat table as German Excel saves it (eurostat.csv). 2. Columns of
    decimal commas and "."-grouped thousands are numbers: avg("1960") is the mean, 5.51 (as
    text it was 5.0). 3. Columns with ":" for missing values stay text. 4. The staged and done
    events say all of it, in the same words."""
    events = run_importer(tmp_path, (FIXTURES / "eurostat.csv").read_bytes(),
                          filename="eurostat.csv",
                          target={"database": "data.db", "table": "eurostat", "mode": "create",
                                  "create_database": True})
    staged, done = events[-2], events[-1]
    assert [(c["name"], c["type"]) for c in done["columns"]] == [
        ("GEO (Labels)", "TEXT"), ("1960", "REAL"), ("1961", "TEXT"), ("1962", "TEXT"),
        ("Population", "INTEGER"), ("Unit", "TEXT")]
    assert staged["notes"] == done["notes"] == [
        "The text is not UTF-8, so it was read as Windows-1252.",
        "The fields are separated by a semicolon (detected).",
        'Column "1960" is read as numbers with a decimal comma (5,1 is 5.1).',
        'Columns "1961" and "1962" are kept as text, as 3 values are not numbers: ":".',
        'Column "Population" is read as numbers with "." between thousands (8.901.064 is'
        " 8901064).",
    ]
    with sqlite3.connect(tmp_path / "data.db") as connection:
        assert connection.execute(
            'SELECT round(avg("1960"), 2), sum(Population) FROM eurostat').fetchone() == (
            5.51, 170910431)
    connection.close()
    assert rows(tmp_path / "data.db", "eurostat")[0] == (
        "Österreich", 5.1, "4,9", ":", 8901064, "Prozent")


def test_latin1_tsv(tmp_path: Path) -> None:
    import_fixture(tmp_path, "latin-1.tsv")
    assert rows(tmp_path / "data.db", "latin_1") == [("José", 1.5), ("François", 2.0)]


def test_pipe_delimited(tmp_path: Path) -> None:
    import_fixture(tmp_path, "pipe.csv")
    assert rows(tmp_path / "data.db", "pipe") == [(1, "x", 2.5), (2, "y", 3.0)]


def test_empty_and_duplicate_headers_get_unique_names(tmp_path: Path) -> None:
    done = import_fixture(tmp_path, "headers.csv")
    assert [c["name"] for c in done["columns"]] == [
        "id", "column_2", "name", "Name_2", "name_3", "column_6", "id_2"]
    assert done["notes"] == [
        'Column 2 has no name in the header, so it is named "column_2".',
        'Column 4 repeats the name "Name", so it is named "Name_2".',
        'Column 5 repeats the name "name", so it is named "name_3".',
        'Column 6 has no name in the header, so it is named "column_6".',
        'Column 7 repeats the name "id", so it is named "id_2".',
    ]


def test_excel_sep_line_is_said(tmp_path: Path) -> None:
    assert import_fixture(tmp_path, "sep-line.csv")["notes"] == [
        "The fields are separated by a semicolon, as the file's first line (sep=;) says."]


def test_chosen_encoding_and_delimiter_are_not_noted(tmp_path: Path) -> None:
    events = run_importer(tmp_path, "a;b\né;1,5\n".encode("cp1252"),
                          args=("--encoding", "windows-1252", "--delimiter", ";"),
                          target={"database": "data.db", "table": "t", "mode": "create",
                                  "create_database": True})
    assert events[-1]["notes"] == ['Column "b" is read as numbers with a decimal comma (1,5 is'
                                   ' 1.5).']


def test_excel_sep_line_names_the_delimiter(tmp_path: Path) -> None:
    import_fixture(tmp_path, "sep-line.csv")
    assert rows(tmp_path / "data.db", "sep_line") == [("a", 1), ("b", 2)]


def test_classic_mac_line_endings(tmp_path: Path) -> None:
    import_fixture(tmp_path, "mac-cr.csv")
    assert rows(tmp_path / "data.db", "mac_cr") == [("x", 1), ("y", 2)]


def test_short_rows_are_padded_blank_lines_skipped_trailing_empty_fields_dropped(
    tmp_path: Path,
) -> None:
    import_fixture(tmp_path, "ragged.csv")
    assert rows(tmp_path / "data.db", "ragged") == [(1, 2, None), (3, 4, 5), (6, 7, 8)]


def test_header_only_file_makes_an_empty_text_table(tmp_path: Path) -> None:
    done = import_fixture(tmp_path, "header-only.csv")
    assert done["rows"] == 0
    assert column_types(tmp_path / "data.db", "header_only") == [("a", "TEXT"), ("b", "TEXT")]


def test_big_file_matches_sqlite_utils_cli(tmp_path: Path) -> None:
    """1. Generate 20,000 rows of every kind of column. 2. Import with the importer and with
    the `sqlite-utils insert --csv` command. 3. Same declared types, same values and types."""
    lines = ["id,count,price,name,code,mixed"]
    for i in range(20_000):
        mixed = "n/a" if i == 15_000 else str(i)  # turns text after many numbers
        count = "" if i % 7 == 0 else str(i * 3 - 500)
        lines.append(f"{i},{count},{i / 7:.3f},\"Name, {i}\",{i % 1000:05d},{mixed}")
    data = ("\n".join(lines) + "\n").encode()
    (tmp_path / "big.csv").write_bytes(data)
    run_importer(tmp_path, data, target={"database": "ours.db", "table": "big",
                                         "mode": "create", "create_database": True})
    subprocess.run([str(Path(sys.executable).parent / "sqlite-utils"), "insert",
                    str(tmp_path / "theirs.db"), "big", str(tmp_path / "big.csv"), "--csv"],
                   check=True, capture_output=True)
    assert column_types(tmp_path / "ours.db", "big") == column_types(tmp_path / "theirs.db", "big")
    assert typed_rows(tmp_path / "ours.db", "big") == typed_rows(tmp_path / "theirs.db", "big")


# --- fixtures: broken files leave everything as it was, and say why and where -----------------


BROKEN = {
    "unterminated-quote.csv":
        'Line 3: a quoted field starts here, but its closing quote (") is missing.',
    "stray-quote.csv":
        'Line 2: a closing quote (") is followed by more text. Quote the whole field, and'
        ' double the quotes inside it ("").',
    "extra-fields.csv":
        "Line 3: this row has 3 fields, but the header has 2. A field that contains the"
        " delimiter must be quoted.",
    "empty.csv": "The file is empty.",
    "data.csv.gz": "This is a gzip-compressed file, not a CSV file. Decompress it and upload the"
                   " .csv file inside.",
    "workbook.xlsx": "This looks like an Excel workbook (.xlsx) or a ZIP archive, not a CSV"
                     " file. In your spreadsheet, save or download the sheet as CSV, then upload"
                     " that.",
    "binary.csv": "Line 5: this line contains binary data (a NUL byte), so the file does not"
                  " look like CSV text.",
    "mixed-encoding.csv": "Line 3: byte 0xE9 is not valid UTF-8. The file mixes text encodings:"
                          " save it again as CSV UTF-8 and upload that, or choose its encoding.",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_file_changes_nothing_and_says_where(tmp_path: Path, name: str) -> None:
    """1. A database with a table. 2. Import a broken file replacing that table. 3. The error
    names the problem and its line. 4. The database and the folder are exactly as before."""
    database = sqlite_utils.Database(tmp_path / "data.db")
    database["keep"].insert_all([{"id": 1, "name": "unchanged"}])
    database.close()
    before = snapshot(tmp_path)
    events = run_importer(tmp_path, (FIXTURES / name).read_bytes(), filename=name,
                          target={"database": "data.db", "table": "keep", "mode": "replace"})
    assert events[-1]["event"] == "error"
    assert events[-1]["message"] == BROKEN[name]
    assert snapshot(tmp_path) == before


def test_unterminated_quote_in_a_big_file_stops_at_the_field_limit(tmp_path: Path) -> None:
    data = b"id,text\n1,ok\n2,\"open\n" + b"3,filler line\n" * 20_000
    events = run_importer(tmp_path, data, target={"database": "data.db", "table": "t",
                                                  "mode": "create", "create_database": True})
    assert events[-1]["message"].startswith(
        "Line 3: a field is longer than 131,072 characters (up to line ")
    assert events[-1]["line"] == 3
    assert list(tmp_path.iterdir()) == []  # the new database was not left behind


def test_cancelled_upload_writes_nothing(tmp_path: Path) -> None:
    """fd 3 closes without an instruction (the upload failed): no database appears."""
    events = run_importer(tmp_path, b"a,b\n1,2\n", target=None)
    assert [e["event"] for e in events] == ["progress", "staged"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.root
@pytest.mark.parametrize(("rows", "phase"), [(35_000, "commit"), (150_000, "staging")])
def test_full_disk_changes_nothing(tmp_path: Path, rows: int, phase: str) -> None:
    """1. A 2 MB filesystem holding a WAL database. 2. Append a CSV that fills it while the
    rows are staged, or only when they are copied into the table. 3. The error says the disk
    is full; the database is as it was."""
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], check=True)
    try:
        database = sqlite_utils.Database(folder / "data.db")
        database.enable_wal()
        database["keep"].insert_all([{"id": 1, "name": "unchanged"}])
        database.close()
        before = snapshot(folder)
        data = b"id,name\n" + b"".join(b"%d,some text here\n" % i for i in range(rows))
        events = run_importer(folder, data, target={"database": "data.db", "table": "keep",
                                                    "mode": "append"})
        assert events[-1]["message"] == (
            "The disk is full, so nothing was imported. Free some space, or ask the site's"
            " operator for more, and try again.")
        assert ("staged" in [e["event"] for e in events]) == (phase == "commit")
        assert snapshot(folder) == before
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# --- modes ------------------------------------------------------------------------------------


def test_create_refuses_an_existing_table_replace_and_append_work(tmp_path: Path) -> None:
    target = {"database": "data.db", "table": "t", "create_database": True}
    assert run_importer(tmp_path, b"a,b\n1,x\n", target={**target, "mode": "create"}
                        )[-1]["rows"] == 1
    refused = run_importer(tmp_path, b"a,b\n2,y\n", target={**target, "mode": "create"})[-1]
    assert refused["message"] == ("A table named 't' already exists in 'data'. Choose replace"
                                  " to overwrite it, or append to add these rows to it.")
    run_importer(tmp_path, b"A,b\n2,\n3,z\n", target={**target, "mode": "append"})
    assert rows(tmp_path / "data.db", "t") == [(1, "x"), (2, ""), (3, "z")]
    run_importer(tmp_path, b"c\n1.5\n", target={**target, "mode": "replace"})
    assert rows(tmp_path / "data.db", "t") == [(1.5,)]
    assert column_types(tmp_path / "data.db", "t") == [("c", "REAL")]


def test_append_needs_existing_columns(tmp_path: Path) -> None:
    target = {"database": "data.db", "table": "t", "create_database": True}
    run_importer(tmp_path, b"a\n1\n", target={**target, "mode": "create"})
    refused = run_importer(tmp_path, b"a,b\n1,2\n", target={**target, "mode": "append"})[-1]
    assert refused["message"] == ("Table 't' in 'data' has no column 'b'. Append needs the same"
                                  " column names; choose replace or create instead.")
    missing = run_importer(tmp_path, b"a\n1\n", target={**target, "table": "u",
                                                        "mode": "append"})[-1]
    assert missing["message"] == "There is no table 'u' in 'data' to append to; choose create."


def test_missing_database_is_created_only_when_asked(tmp_path: Path) -> None:
    events = run_importer(tmp_path, b"a\n1\n", target={"database": "new.db", "table": "t",
                                                       "mode": "create"})
    assert events[-1]["message"] == "There is no database 'new'."
    assert list(tmp_path.iterdir()) == []
    run_importer(tmp_path, b"a\n1\n", target={"database": "new.db", "table": "t",
                                              "mode": "create", "create_database": True})
    connection = sqlite3.connect(tmp_path / "new.db")
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    connection.close()


def test_explicit_encoding_and_delimiter(tmp_path: Path) -> None:
    data = "a;b\nÃ©;1\n".encode("cp1252")  # valid UTF-8 too: detection says UTF-8 ("é")
    run_importer(tmp_path, data, args=("--encoding", "windows-1252", "--delimiter", ","),
                 target={"database": "data.db", "table": "t", "mode": "create",
                         "create_database": True})
    assert rows(tmp_path / "data.db", "t") == [("Ã©;1",)]


# --- pure parts -------------------------------------------------------------------------------


@pytest.mark.parametrize(("head", "encoding"), [
    (b"a,b\n1,2\n", "utf-8"),
    ("é,ü\n".encode(), "utf-8"),
    (b"\xef\xbb\xbfa,b\n", "utf-8"),
    ("\ufeffa,b\n".encode("utf-16-le"), "utf-16-le"),
    ("\ufeffa,b\n".encode("utf-16-be"), "utf-16-be"),
    ("a,b\n1,2\n".encode("utf-16-le"), "utf-16-le"),  # no BOM: NULs every other byte
    ("a,b\n1,2\n".encode("utf-16-be"), "utf-16-be"),
    ("Renée,Zoë\n".encode("cp1252"), "windows-1252"),
])
def test_detect_encoding(head: bytes, encoding: str) -> None:
    assert detect_encoding(head) == encoding


def test_utf8_switches_to_windows_1252_when_the_first_non_ascii_byte_is_not_utf8() -> None:
    """Detection saw only ASCII in the first 64 KB; the é comes later, in Windows-1252."""
    decoder = Decoder("utf-8", detected=True)
    assert decoder.decode(b"a,b\n" * 3) == ("a,b\n" * 3, None)
    assert decoder.decode("Renée,1\n".encode("cp1252")) == ("Renée,1\n", None)
    assert decoder.encoding == "windows-1252"
    assert decoder.decode(b"\x80\x81\n", final=True) == ("€\x81\n", None)


def test_utf8_split_across_chunks() -> None:
    decoder = Decoder("utf-8", detected=True)
    data = "€uro".encode()
    assert decoder.decode(data[:1]) == ("", None)
    assert decoder.decode(data[1:2]) == ("", None)
    assert decoder.decode(data[2:]) == ("€uro", None)


@pytest.mark.parametrize(("sample", "filename", "delimiter"), [
    ("a,b,c\n1,2,3\n", "x.csv", ","),
    ("name;price\nA;1,5\nB;2,25\n", "x.csv", ";"),
    ("a\tb\n1\t2\n", "x.txt", "\t"),
    ("a|b\n1|2\n", "x.csv", "|"),
    ('"x, y";z\n"1, 2";3\n', "x.csv", ";"),
    ("a,b;c\n1,2;3\n", "x.tsv", ","),  # ambiguous: comma first; tab would win for a .tsv
    ("a\tb,c\n1\t2,3\n", "x.tsv", "\t"),
    ("single\nvalue\n", "x.csv", ","),
])
def test_sniff_dialect(sample: str, filename: str, delimiter: str) -> None:
    assert sniff_dialect(sample, filename=filename, complete=True).delimiter == delimiter


def test_sniff_ignores_a_row_cut_by_the_sample_end() -> None:
    sample = "a;b\n1;2\n3;4\n" + "5;6" * 1 + "\n7"
    assert sniff_dialect(sample, complete=False).delimiter == ";"


@pytest.mark.parametrize(("cells", "names"), [
    (["a", "b"], ["a", "b"]),
    (["", " ", "\t"], ["column_1", "column_2", "column_3"]),
    (["x", "x", "X", "x_2"], ["x", "x_2", "X_3", "x_2_2"]),
    ([" Total\namount  "], ["Total amount"]),
    (["column_2", ""], ["column_2", "column_2_2"]),
])
def test_clean_headers(cells: list[str], names: list[str]) -> None:
    assert clean_headers(cells) == names


@pytest.mark.parametrize(("filename", "table"), [
    ("Budget 2024 (final).csv", "budget_2024_final"),
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\me\\Données.CSV", "données"),
    ("data.tsv", "data"),
    ("report.xlsx.csv", "report_xlsx"),
    ("'; DROP TABLE x; --.csv", "drop_table_x"),
    ("....csv", "upload"),
    ("", "upload"),
    ("sqlite_master.csv", "t_sqlite_master"),
    ("a" * 100 + ".csv", "a" * 64),
])
def test_table_name_for(filename: str, table: str) -> None:
    assert table_name_for(filename) == table


@given(st.text())
def test_table_name_for_is_always_safe(filename: str) -> None:
    name = table_name_for(filename)
    assert name and len(name) <= 64 and not name.lower().startswith("sqlite_")
    assert all(c.isalnum() or c == "_" for c in name)


@given(st.text())
def test_int_valid_strings_are_float_valid(value: str) -> None:
    """TypeTracker relies on it: a column leaving INTEGER needs only its current batch
    checked for float, because everything before passed int()."""
    try:
        int(value)
    except ValueError:
        return
    float(value)


@given(st.lists(st.text("0123456789-+ _\u0663\u00b2", max_size=6), min_size=1, max_size=8))
def test_plain_integers_only_when_int_agrees(values: list[str]) -> None:
    """The fast path may say "ask int()" too often, never "fine" wrongly."""
    if _plain_integers(tuple(values)):
        for value in filter(None, values):
            int(value)


NUMBERISH = st.sampled_from([
    "", "0", "-0", "007", "+5", " 12 ", "1_000", "1e5", "1E-3", ".5", "5.", "nan", "inf",
    "-Infinity", "0x10", "1,5", "١٢", "12\n", "9" * 30, "1.0", "abc", "-", "1-2", "½",
])


@given(st.lists(st.lists(st.one_of(NUMBERISH, st.text(max_size=4)), min_size=3, max_size=3),
                min_size=1, max_size=30),
       st.integers(min_value=1, max_value=7))
def test_type_tracker_agrees_with_sqlite_utils(records: list[list[str]], batch: int) -> None:
    ours = TypeTracker(3)
    for start in range(0, len(records), batch):
        ours.observe(records[start:start + batch])
    trackers = [ValueTracker() for _ in range(3)]
    for record in records:
        for tracker, value in zip(trackers, record, strict=True):
            tracker.evaluate(value)
    names = {"integer": "INTEGER", "float": "REAL", "text": "TEXT"}
    assert ours.result() == [names[t.guessed_type] for t in trackers]


# --- property: any table, written as CSV in any dialect and encoding, comes back exactly -------


CELL = st.one_of(
    NUMBERISH,
    st.integers().map(str),
    st.floats(allow_nan=False).map(repr),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
            max_size=12),
)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    width = draw(st.integers(min_value=1, max_value=5))
    header = draw(st.lists(
        st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8),
        min_size=width, max_size=width))
    kinds = draw(st.lists(st.sampled_from(["int", "float", "any"]), min_size=width,
                          max_size=width))
    column = {"int": st.one_of(st.integers().map(str), st.just("")),
              "float": st.one_of(st.floats(allow_nan=False).map(repr), st.just("")),
              "any": CELL}
    records = draw(st.lists(st.tuples(*(column[k] for k in kinds)).map(list),
                            min_size=1, max_size=12))
    return header, records


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    table=tables(),
    delimiter=st.sampled_from(DELIMITERS),
    terminator=st.sampled_from(["\r\n", "\n"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "windows-1252"]),
)
def test_any_table_round_trips_like_sqlite_utils(
    tmp_path_factory: pytest.TempPathFactory, table: tuple[list[str], list[list[str]]],
    delimiter: str, terminator: str, quoting: int, encoding: str,
) -> None:
    """1. Write the table as CSV in the dialect and encoding. 2. Import it: the encoding is
    detected; so is the delimiter when the header alone can tell (two or more names, none
    holding a delimiter), else it is given. 3. Same columns, types and values as sqlite-utils
    inserting the same rows."""
    header, records = table
    assume(not any(looks_like_numbers(list(column)) for column in zip(*records, strict=True)))
    if terminator == "\n":  # Python's csv writer does not quote a lone \r then (a CPython quirk)
        records = [[cell.replace("\r", "") for cell in record] for record in records]
    text = io.StringIO()
    writer = csv.writer(text, delimiter=delimiter, lineterminator=terminator, quoting=quoting)
    writer.writerow(header)
    writer.writerows(records)
    try:
        data = text.getvalue().encode(encoding)
    except UnicodeEncodeError:
        assume(False)
    if encoding == "windows-1252":  # unless its first non-ASCII bytes happen to be UTF-8 too
        assume(data.isascii() or detect_encoding(data) == "windows-1252")
    if encoding == "utf-16-be":
        data = "\ufeff".encode("utf-16-be") + data
    folder = tmp_path_factory.mktemp("roundtrip")
    sniffable = len(header) > 1 and not any(c in name for name in header for c in "\t,;|")
    with Import(folder, delimiter=None if sniffable else delimiter) as job:
        assert job.stage(io.BytesIO(data)).delimiter == delimiter
        job.commit(Target("ours.db", "t", "create", True))
    assert_same_as_sqlite_utils(folder, clean_headers(header), records)


def assert_same_as_sqlite_utils(folder: Path, names: list[str], records: list[list[str]]
                                ) -> None:
    sqlite_utils_oracle(folder / "theirs.db", "t", names, records)
    assert column_types(folder / "ours.db", "t") == column_types(folder / "theirs.db", "t")
    assert typed_rows(folder / "ours.db", "t") == typed_rows(folder / "theirs.db", "t")


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(first=st.lists(st.tuples(NUMBERISH, NUMBERISH).map(list), min_size=1, max_size=4),
       later=st.lists(st.tuples(CELL, CELL).map(list), min_size=1, max_size=4),
       mode=st.sampled_from(["create", "append"]))
def test_types_that_change_after_the_first_batch(
    tmp_path_factory: pytest.TempPathFactory, first: list[list[str]], later: list[list[str]],
    mode: str,
) -> None:
    """Staging guesses types from the first batch of rows (5,000). 1. Rows that look numeric
    fill the first batch, any rows follow. 2. Import them (into a new table, or appended to
    a table of text columns). 3. Same as sqlite-utils (for append: the text kept as it was)."""
    records = first * (5000 // len(first) + 1) + later
    assume(not any(looks_like_numbers(list(column)) for column in zip(*records, strict=True)))
    data = ("a,b\n" + "".join(f"{_csv(a)},{_csv(b)}\n" for a, b in records)).encode()
    folder = tmp_path_factory.mktemp("later")
    if mode == "append":
        db = sqlite_utils.Database(folder / "ours.db")
        db.execute("CREATE TABLE t (a TEXT, b TEXT)")
        db.close()
    with Import(folder, delimiter=",") as job:
        job.stage(io.BytesIO(data))
        job.commit(Target("ours.db", "t", mode, True))
    if mode == "create":
        assert_same_as_sqlite_utils(folder, ["a", "b"], records)
    else:
        assert rows(folder / "ours.db", "t") == [tuple(record) for record in records]


def _csv(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@pytest.mark.parametrize(("declared", "numeric", "formats", "values"), [
    (["INTEGER", "REAL", "TEXT", ""], [True, True, False, True], [None] * 4,
     ["c0", "c1", "c2", "NULLIF(c3, '')"]),  # staged converted, as they are; raw to a number
    (["INTEGER"], [True], [None], ["c0"]),  # INTEGER staged, REAL target: the target converts
    (["TEXT", ""], [True, False], [None, None], ["NULLIF(c0, '')", "c1"]),  # text to a number
    (["TEXT", "TEXT"], [True, False], [THOUSANDS_COMMA, DECIMAL_COMMA],
     ["NULLIF(REPLACE(c0, ',', ''), '')", "c1"]),  # into a text column: as written
])
def test_copy_values(declared: list[str], numeric: list[bool],
                     formats: list[NumberFormat | None], values: list[str]) -> None:
    assert copy_values(declared, numeric, formats) == values


@pytest.mark.parametrize(("declared", "numeric", "formats"), [
    (["INTEGER"], [False], [None]), (["REAL"], [False], [None]),
    (["REAL"], [True], [DECIMAL_COMMA]),  # "1.230" was staged as 1.23: stage again as text
])
def test_numbers_cannot_be_copied_into_text(declared: list[str], numeric: list[bool],
                                            formats: list[NumberFormat | None]) -> None:
    with pytest.raises(_StagedAsNumbers):
        copy_values(declared, numeric, formats)


@pytest.mark.root
def test_without_a_thread_to_spare_batches_are_inserted_as_they_come(tmp_path: Path) -> None:
    """1. Run the importer as a tenant user whose RLIMIT_NPROC (1) leaves no room for its
    inserting thread. 2. Import 12,000 rows. 3. All are there, typed."""
    uid = UID_BASE + 998  # no test site uses it: its process count is this importer alone
    folder = Path(tempfile.mkdtemp(prefix="importer-nproc-", dir="/tmp"))
    try:
        os.chown(folder, uid, uid)
        commit_read, commit_write = os.pipe()
        os.write(commit_write, json.dumps({"database": "data.db", "table": "t", "mode": "create",
                                           "create_database": True}).encode())
        os.close(commit_write)
        data = b"n,x\n" + b"".join(b"%d,%d.5\n" % (i, i) for i in range(12_000))
        result = subprocess.run(
            ["prlimit", "--nproc=1:1", "setpriv", f"--reuid={uid}", f"--regid={uid}",
             "--clear-groups", "--", sys.executable, "-m", "gateway.importer", "--data-dir",
             str(folder), "--commit-fd", str(commit_read)],
            input=data, capture_output=True, pass_fds=(commit_read,), timeout=60, check=False)
        os.close(commit_read)
        assert result.returncode == 0, result.stderr.decode()
        done = json.loads(result.stdout.splitlines()[-1])
        assert (done["event"], done["rows"]) == ("done", 12_000)
        with sqlite3.connect(folder / "data.db") as connection:
            assert connection.execute("SELECT count(*), sum(n), typeof(x) FROM t").fetchone() == (
                12_000, 71_994_000, "real")
        connection.close()
    finally:
        shutil.rmtree(folder)


def test_import_failed_carries_the_line() -> None:
    error = at_line(7, "broken.")
    assert (str(error), error.line) == ("Line 7: broken.", 7)
    assert isinstance(error, ImportFailed)


# --- numbers written for people: decimal commas, thousands separators --------------------------


def reading_of(*values: str) -> Reading | None:
    column = NumberColumn()
    column.observe(values)
    return read_columns([column])[0]


@pytest.mark.parametrize(("values", "reading"), [
    (("1,5", "-2", "", "1.234,5", "+0,25"), Reading(format=DECIMAL_COMMA, example="1,5")),
    (("1 234,5", "12 345 678", "7"), Reading(format=DECIMAL_COMMA, example="1 234,5")),
    (("1\u00a0234", "5"), Reading(format=DECIMAL_COMMA, example="1\u00a0234")),
    (("1.234.567", "12"), Reading(format=DECIMAL_COMMA, example="1.234.567")),
    (("1,234.5", "-0.5", "999"), Reading(format=THOUSANDS_COMMA, example="1,234.5")),
    (("1,234,567", "1,000"), Reading(format=THOUSANDS_COMMA, example="1,234,567")),
    (("1,234", "12"), Reading(ambiguous=True, example="1,234")),
    (("1,5", "1.5"), Reading(mixed=True, example="1,5")),
    (("1,5", "1e5"), Reading(mixed=True, example="1,5")),  # float() reads 1e5: a number
    (("1,5", ":", "2,5", ":", "n/a", "3"), Reading(odd=((":", 2), ("n/a", 1)))),
    (("1,5", "x", "y"), None),  # more words than numbers: a text column
    (("1.234,5", "1.23,4"), Reading(odd=(("1.23,4", 1),))),  # groups of three digits only
    (("12,", ",5"), None),
    (("Zürich", "Basel"), None),
])
def test_number_column_readings(values: tuple[str, ...], reading: Reading | None) -> None:
    assert reading_of(*values) == reading


def test_batches_and_values_agree() -> None:
    """The batch regex and the value by value pass decide alike (a failed batch falls back)."""
    batched, one_by_one = NumberColumn(), NumberColumn()
    values = ["1", "1,234", "", "2.5", "1,234.5"]
    batched.observe(values)
    for value in values:
        one_by_one.observe([value])
    assert batched.formats == one_by_one.formats == {THOUSANDS_COMMA}
    assert (batched.numbers, batched.fractions) == (one_by_one.numbers, one_by_one.fractions)


def test_the_file_settles_columns_either_format_reads() -> None:
    settled, either = NumberColumn(), NumberColumn()
    settled.observe(["0,5"])
    either.observe(["1,234", "5,678"])
    assert read_columns([settled, either, None])[1] == Reading(
        format=DECIMAL_COMMA, by_file=True, example="1,234")


@pytest.mark.parametrize(("value", "fmt", "plain"), [
    ("1.234.567,25", DECIMAL_COMMA, "1234567.25"), ("-1 234,5", DECIMAL_COMMA, "-1234.5"),
    ("1\u202f234", DECIMAL_COMMA, "1234"), ("+1,234,567.5", THOUSANDS_COMMA, "+1234567.5"),
])
def test_plain_value_and_plain_sql_agree(value: str, fmt: NumberFormat, plain: str) -> None:
    assert plain_value(value, fmt) == plain
    connection = sqlite3.connect(":memory:")
    assert connection.execute(f"SELECT {plain_sql('?', fmt)}", (value,)).fetchone() == (plain,)
    connection.close()


@pytest.mark.parametrize(("first", "later", "kind", "values", "notes"), [
    ("1.5", "1,234.5", "REAL", [1.5, 1234.5],
     ['Column "n" is read as numbers with "," between thousands (1,234.5 is 1234.5).']),
    ("1.234", "1.234,5", "REAL", [1234.0, 1234.5],
     ['Column "n" is read as numbers with a decimal comma (1.234,5 is 1234.5).']),
    ("1_000", "1,5", "TEXT", ["1_000", "1,5"],
     ['Column "n" is kept as text: its numbers are not all written the same way.']),
    ("7", "1,5", "REAL", [7.0, 1.5],
     ['Column "n" is read as numbers with a decimal comma (1,5 is 1.5).']),
])
def test_a_column_that_turns_out_written_for_people_late(
    tmp_path: Path, first: str, later: str, kind: str, values: list[Any], notes: list[str],
) -> None:
    """1. 6,000 rows that sqlite-utils reads as numbers (staged as numbers), then one it does
    not. 2. Import. 3. The whole column is read one way (a second pass when the first rows were
    not plain integers), or kept as text."""
    data = ("n\n" + f'"{first}"\n' * 6000 + f'"{later}"\n').encode()
    events = run_importer(tmp_path, data, target={"database": "data.db", "table": "t",
                                                  "mode": "create", "create_database": True})
    assert events[-1]["columns"] == [{"name": "n", "type": kind}]
    assert events[-1]["notes"] == events[-2]["notes"] == notes
    assert [row[0] for row in rows(tmp_path / "data.db", "t")][-2:] == values


@st.composite
def written_numbers(draw: st.DrawFn, fmt: NumberFormat, grouping: str
                    ) -> tuple[list[str], list[str]]:
    """A column of numbers as people write them in `fmt` (grouping thousands by `grouping`),
    and the same numbers written plainly. One of them settles the format (a short fraction, or
    a grouped number of millions): others, like 1,234, could be read either way."""
    def number(settles: bool) -> tuple[str, str]:
        sign = draw(st.sampled_from(["", "-"]))
        if settles and grouping and draw(st.booleans()):
            whole, fraction = draw(st.integers(10**6, 10**12)), ""
        else:
            whole = draw(st.integers(0, 10**12))
            fraction = draw(st.text("0123456789", min_size=1 if settles else 0,
                                    max_size=2 if settles else 4))
        digits = f"{whole:,}".replace(",", grouping) if grouping else str(whole)
        point = "," if fmt == DECIMAL_COMMA else "."
        written = sign + digits + (point + fraction if fraction else "")
        return written, sign + str(whole) + ("." + fraction if fraction else "")

    cells = [number(False) if draw(st.booleans()) else ("", "")
             for _ in range(draw(st.integers(0, 8)))]
    cells.insert(draw(st.integers(0, len(cells))), number(True))
    return [w for w, _ in cells], [p for _, p in cells]


def looks_like_numbers(values: list[str]) -> bool:
    """Cells only of digits, signs and separators, one with a comma: a column the importer may
    read as numbers written for people, where sqlite-utils keeps text."""
    return any("," in v for v in values) and all(
        not v.strip("0123456789+-., \u00a0\u202f") for v in values)


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), width=st.integers(1, 4),
       fmt=st.sampled_from([DECIMAL_COMMA, THOUSANDS_COMMA]),
       delimiter=st.sampled_from(DELIMITERS))
def test_numbers_written_for_people_round_trip_like_sqlite_utils_plain_numbers(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, width: int,
    fmt: NumberFormat, delimiter: str,
) -> None:
    """1. A table of numbers written with decimal commas (1.234,5, 1 234,5) or with thousands
    commas (1,234.5), and columns of anything. 2. Write it as CSV in any delimiter; import it.
    3. Same types and values as sqlite-utils importing the numbers written plainly."""
    grouping = data.draw(st.sampled_from(["", ".", " ", "\u00a0"] if fmt == DECIMAL_COMMA
                                         else ["", ","]))
    written_columns, plain_columns = [], []
    for _ in range(width):
        if data.draw(st.booleans()):
            written, plain = data.draw(written_numbers(fmt, grouping))
        else:
            written = plain = data.draw(st.lists(CELL, min_size=1, max_size=8))
            assume(not looks_like_numbers(written))
        written_columns.append(written)
        plain_columns.append(plain)
    height = max(map(len, written_columns))
    pad = [column + [""] * (height - len(column)) for column in written_columns]
    records = [list(row) for row in zip(*pad, strict=True)]
    plain_records = [list(row) for row in zip(
        *(column + [""] * (height - len(column)) for column in plain_columns), strict=True)]
    header = [f"c{i}" for i in range(width)]
    text = io.StringIO()
    writer = csv.writer(text, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(records)
    folder = tmp_path_factory.mktemp("numbers")
    with Import(folder, delimiter=delimiter) as job:
        job.stage(io.BytesIO(text.getvalue().replace("\r", "").encode()))
        job.commit(Target("ours.db", "t", "create", True))
    plain_records = [[cell.replace("\r", "") for cell in record] for record in plain_records]
    assert_same_as_sqlite_utils(folder, header, plain_records)


@pytest.mark.parametrize(("data", "message"), [
    (b'id,text\r\n1,"two\r\nlines"\r\n\r\n2,"three\nmore\rlines"\n3,x,y\n',
     "Line 8: this row has 3 fields, but the header has 2. A field that contains the delimiter"
     " must be quoted."),
    (b'id,text\n1,"a\nb"\n\n2,"open\n3,x\n',
     'Line 5: a quoted field starts here, but its closing quote (") is missing.'),
])
def test_error_lines_count_line_breaks_inside_fields(tmp_path: Path, data: bytes,
                                                     message: str) -> None:
    """Rows are read a batch at a time; the line of a bad row counts the blank lines and the
    line breaks (CRLF, LF, CR) inside the quoted fields before it."""
    events = run_importer(tmp_path, data, target={"database": "data.db", "table": "t",
                                                  "mode": "create", "create_database": True})
    assert events[-1]["message"] == message
