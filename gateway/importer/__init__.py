"""CSV -> a typed SQLite table: the import a tenant's upload runs, as the tenant, in its sandbox.

    python -m gateway.importer --data-dir /data --filename "Budget 2024.csv" <upload 3<commit

The gateway (upload/) streams the uploaded file into stdin and reads JSON lines from stdout:

    {"event": "progress", "rows": 120000, "bytes": 10485760}     every ~0.2 s while reading
    {"event": "staged", "rows": 1000000, "columns": [...], "notes": [...]}
                                                                  stdin reached its end
    {"event": "done", "database": "data", "table": "budget_2024", "rows": ..., "columns": [...],
     "notes": [...], "cpu_s": 3.1, "max_rss_mb": 41.0}            committed
    {"event": "error", "message": "Line 12: ...", "line": 12}     nothing was changed

`notes` say, in sentences for the person who uploaded, what the importer changed or guessed:
the encoding and delimiter it detected, header names it made up, columns of numbers written
for people ("5,51") it stored as numbers, number columns it kept as text, and why.

Two phases, so that a broken file, a cancelled upload or a dead gateway never leave anything
half-done behind:

1. Staging: bytes -> text (encoding detected) -> records (delimiter sniffed) -> rows in a
   private scratch database on the tenant's disk (not the sandbox's RAM-backed /tmp), while
   column types are tracked. See job.Import for the scratch space and how rows are staged.
2. Commit: only once the gateway writes its instruction on fd 3 (`{"database": "data.db",
   "table": "t", "mode": "create"}`), one transaction on the target database creates (or
   replaces, or appends to) the typed table from the staged rows. If fd 3 closes without an
   instruction (the upload failed or was abandoned), nothing is written.

Column types are sqlite-utils' (`sqlite-utils insert --csv`, whose TypeTracker decides, and whose
transform() copies with NULLIF): a column is INTEGER if every non-empty value passes Python's
int(), else REAL if every one passes float(), else TEXT. Values are stored the way that copy
stores them: the raw text, converted by the column's affinity, with empty cells NULL in numeric
columns. Tracking is one streaming pass, a batch of rows at a time, column by column. Columns
that this makes TEXT but whose values are all numbers written one way for people (decimal
commas; thousands separators) are stored as numbers: see numbers.py.

The pure parts are functions and small classes; the I/O (stdin, SQLite, fd 3) is in staging,
commit, job and __main__:

    errors.py        ImportFailed: why a file cannot be imported, and what to do (pure)
    text.py          what kind of file, which encoding; bytes -> text -> lines (pure)
    dialect.py       the delimiter, sniffed or chosen (pure)
    names.py         column names from the header, table and database file names (pure)
    column_types.py  TypeTracker: sqlite-utils' column types, a batch at a time (pure)
    numbers.py       numbers written for people: decimal commas, thousands separators (pure)
    notes.py         what was changed or guessed, in sentences (pure)
    staging.py       the file -> raw rows in a scratch database
    inserter.py      rows into the scratch database, in a thread beside the reading
    commit.py        the staged rows -> the target table, in one transaction
    job.py           Import: one file's scratch space, staged then committed
    __main__.py      the process: stdin, stdout, fd 3

This package imports only the standard library: it starts inside the sandbox on every upload.
"""
