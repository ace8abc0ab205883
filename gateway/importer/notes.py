"""What the importer changed or guessed, said in sentences for the page and the API (pure).

Each note is one sentence; the `staged` and `done` events carry them as `"notes": [...]`.
Columns treated alike share a note, so that a table with sixty year columns gets one line.
"""

from __future__ import annotations

from collections.abc import Sequence

from .numbers import DECIMAL_COMMA, THOUSANDS_COMMA, NumberFormat, Reading, plain_value

_FRACTION = {DECIMAL_COMMA: ",", THOUSANDS_COMMA: "."}

MAX_NAMES = 5  # columns named in one note
MAX_ODD_SHOWN = 3  # values shown in one note
_ENCODINGS = {"utf-16": "UTF-16", "windows-1252": "Windows-1252", "latin-1": "Latin-1"}
_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe", ",": "comma"}


def encoding_note(encoding: str) -> list[str]:
    """For a detected encoding (UTF-8, the default, goes without saying)."""
    if encoding == "windows-1252":
        return ["The text is not UTF-8, so it was read as Windows-1252."]
    if encoding in _ENCODINGS:
        return [f"The text was read as {_ENCODINGS[encoding]}."]
    return []


def delimiter_note(delimiter: str, *, from_sep_line: bool) -> list[str]:
    """For a sniffed delimiter (a comma, the default, goes without saying)."""
    name = _DELIMITERS[delimiter]
    if from_sep_line:
        return [f"The fields are separated by a {name}, as the file's first line"
                f" (sep={delimiter}) says."]
    if delimiter == ",":
        return []
    return [f"The fields are separated by a {name} (detected)."]


def header_notes(cells: Sequence[str], names: Sequence[str]) -> list[str]:
    """Header cells that were empty, repeated or untidy, and the names they became."""
    notes = []
    seen: set[str] = set()
    for position, (cell, name) in enumerate(zip(cells, names, strict=True), 1):
        tidy = " ".join(cell.split())
        if not tidy:
            notes.append(f"Column {position} has no name in the header, so it is named"
                         f" {_quoted(name)}.")
        elif tidy.casefold() in seen and tidy != name:
            notes.append(f"Column {position} repeats the name {_quoted(tidy)}, so it is named"
                         f" {_quoted(name)}.")
        elif cell.strip() != name:
            notes.append(f"Column {position}'s name {_quoted(cell)} is written {_quoted(name)}"
                         " (line breaks and repeated spaces removed).")
        seen.add(tidy.casefold())
    return notes


def number_notes(names: Sequence[str], readings: Sequence[Reading | None]) -> list[str]:
    """Columns read as numbers written for people, and number columns kept as text."""
    groups: dict[tuple[object, ...], list[tuple[str, Reading]]] = {}
    for name, reading in zip(names, readings, strict=True):
        if reading is not None:
            key = (reading.format, _has_fraction(reading), reading.by_file, reading.ambiguous,
                   reading.mixed, tuple(sorted(value for value, _ in reading.odd)))
            groups.setdefault(key, []).append((name, reading))
    return [_number_note([name for name, _ in group], [reading for _, reading in group])
            for group in groups.values()]


def _number_note(columns: list[str], readings: list[Reading]) -> str:
    subject = _columns(columns)
    first = readings[0]
    if first.format is not None:
        how = _format_words(first.format, first.example)
        if first.by_file:
            return (f"{subject} read as numbers with {how}, as the file's other"
                    f" numbers: its own values ({first.example}) could be read either way.")
        return f"{subject} read as numbers with {how}."
    if first.ambiguous:
        return (f"{subject} kept as text: {first.example} could be"
                f" {plain_value(first.example, DECIMAL_COMMA)} or"
                f" {plain_value(first.example, THOUSANDS_COMMA)}, and no value says which.")
    if first.mixed:
        return f"{subject} kept as text: its numbers are not all written the same way."
    count = sum(n for reading in readings for _, n in reading.odd)
    values = [value for value, _ in first.odd]
    shown = ", ".join(_quoted(value) for value in values[:MAX_ODD_SHOWN])
    more = ", …" if len(values) > MAX_ODD_SHOWN else ""
    noun = "value is" if count == 1 else "values are"
    return f"{subject} kept as text, as {count:,} {noun} not numbers: {shown}{more}."


def _has_fraction(reading: Reading) -> bool:
    return reading.format is not None and _FRACTION[reading.format] in reading.example


def _format_words(fmt: NumberFormat, example: str) -> str:
    """How the example writes its number: a decimal comma, else how it groups thousands."""
    if fmt == DECIMAL_COMMA:
        words = ("a decimal comma" if "," in example else
                 '"." between thousands' if "." in example else "a space between thousands")
    else:
        words = '"," between thousands' if "," in example else "a decimal point"
    return f"{words} ({example} is {plain_value(example, fmt)})" if example else words


def _columns(names: list[str]) -> str:
    if len(names) == 1:
        return f"Column {_quoted(names[0])} is"
    shown = ", ".join(_quoted(name) for name in names[:MAX_NAMES])
    if len(names) > MAX_NAMES:
        return f"Columns {shown} and {len(names) - MAX_NAMES} more are"
    head, _, last = shown.rpartition(", ")
    return f"Columns {head} and {last} are"


def _quoted(text: str) -> str:
    return '"' + text + '"'
