"""Numbers written for people: decimal commas and thousands separators (pure). Issue 13 item 6.

A column sqlite-utils would store as TEXT is stored as numbers when every non-empty value is a
number written one way:

    decimal comma      5,51   -3   1.234,5   1 234,5   (thousands: "." or a space)
    thousands comma    1,234   1,234.5   -0.5          (decimal point)

"1,234" (with plain integers) fits both: such a column takes the way the file's other columns
decide, and stays text when none does. The values of a column are tracked a batch at a time,
with one regular expression over the joined batch; a value by value pass only runs for batches
holding something else (then the column is text: its odd values are counted for the notes).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

NumberFormat = Literal["decimal comma", "thousands comma"]
DECIMAL_COMMA: NumberFormat = "decimal comma"
THOUSANDS_COMMA: NumberFormat = "thousands comma"
FORMATS = (DECIMAL_COMMA, THOUSANDS_COMMA)

# Spaces that group thousands: space, no-break space, narrow no-break space (French Excel).
_SPACES = " \u00a0\u202f"
_PATTERNS = {
    DECIMAL_COMMA: r"[-+]?(?:[0-9]+|[0-9]{1,3}(?:\.[0-9]{3})+"
                   r"|[0-9]{1,3}(?:[ \u00a0\u202f][0-9]{3})+)(?:,[0-9]+)?",
    THOUSANDS_COMMA: r"[-+]?(?:[0-9]+|[0-9]{1,3}(?:,[0-9]{3})+)(?:\.[0-9]+)?",
}
_VALUE = {fmt: re.compile(pattern) for fmt, pattern in _PATTERNS.items()}
# A whole batch: every value (each followed by a NUL) empty or a number. The atomic group keeps
# a failed match linear: a value that matched is never tried again.
_BATCH = {fmt: re.compile(f"(?>(?:{pattern})?\x00)*+") for fmt, pattern in _PATTERNS.items()}
_FRACTION = {DECIMAL_COMMA: ",", THOUSANDS_COMMA: "."}


@dataclass(slots=True)
class NumberColumn:
    """One text column's values, seen as numbers written for people: which formats read all of
    them, and which values are no number at all. Tracking stops (`given_up`) once a batch ends
    with more of those than numbers: a column of words, not of numbers."""

    formats: set[NumberFormat] = field(default_factory=lambda: set(FORMATS))
    fractions: set[NumberFormat] = field(default_factory=set)  # formats that read a fraction
    numbers: int = 0
    odd: collections.Counter[str] = field(default_factory=collections.Counter)
    example: str = ""  # to show in a note: the first value with a comma (the sign of both
    grouped: str = ""  # formats), else the first with a "." or a space
    given_up: bool = False

    def observe(self, values: Sequence[str]) -> None:
        if self.given_up:
            return
        joined = "\x00".join(values) + "\x00"
        if (joined.count("\x00") == len(values)
                and all(_BATCH[fmt].fullmatch(joined) for fmt in self.formats)
                and self.formats):
            self.numbers += len(values) - values.count("")
            self.fractions.update(fmt for fmt in self.formats if _FRACTION[fmt] in joined)
            if not self.example and "," in joined:
                self.example = next(v for v in values if "," in v)
            if not self.grouped:
                self.grouped = next((v for v in values if _has_separator(v)), "")
        else:
            present = list(filter(None, values))
            odd = sum(self.odd.values())
            for index, value in enumerate(present):
                if odd > self.numbers + len(present) - index:  # the rest cannot outnumber them
                    break
                odd += self._observe_one(value)
        if sum(self.odd.values()) > self.numbers:
            self.given_up = True

    def _observe_one(self, value: str) -> int:
        """1 if `value` is no number."""
        fits = {fmt for fmt in FORMATS if _VALUE[fmt].fullmatch(value)}
        if not fits:
            try:
                float(value)  # a number sqlite-utils reads (1e5, nan, " 12 "), in neither format
            except ValueError:
                self.odd[value] += 1
                return 1
        self.numbers += 1
        self.formats &= fits
        self.fractions.update(fmt for fmt in fits if _FRACTION[fmt] in value)
        if not self.example and "," in value:
            self.example = value
        if not self.grouped and _has_separator(value):
            self.grouped = value
        return 0

    def is_integer(self, fmt: NumberFormat) -> bool:
        return fmt not in self.fractions


    def shown(self) -> str:
        return self.example or self.grouped


def _has_separator(value: str) -> bool:
    return "." in value or any(space in value for space in _SPACES)


@dataclass(frozen=True, slots=True)
class Reading:
    """How a text column's values are read: as numbers in `format`, or kept as text (why)."""

    format: NumberFormat | None = None
    by_file: bool = False  # the column fits both formats; the file's other columns decided
    ambiguous: bool = False  # kept as text: both formats fit, nothing decided
    mixed: bool = False  # kept as text: numbers written in different ways
    odd: tuple[tuple[str, int], ...] = ()  # kept as text: these values (count) are no numbers
    example: str = ""


def read_columns(columns: Sequence[NumberColumn | None]) -> list[Reading | None]:
    """Decide each tracked text column (None: not tracked, plain text). A column that only one
    format reads settles the file's format; columns both read take it if it is one format."""
    settled = {next(iter(c.formats)) for c in columns
               if c is not None and _is_clean(c) and len(c.formats) == 1}
    file_format = next(iter(settled)) if len(settled) == 1 else None
    readings: list[Reading | None] = []
    for column in columns:
        if column is None or column.given_up or not column.numbers:
            readings.append(None)
        elif column.odd:
            readings.append(Reading(odd=tuple(column.odd.most_common())))
        elif not column.formats:
            readings.append(Reading(mixed=True, example=column.shown()))
        elif len(column.formats) == 1:
            readings.append(Reading(format=next(iter(column.formats)), example=column.shown()))
        elif file_format is not None:
            readings.append(Reading(format=file_format, by_file=True, example=column.shown()))
        else:
            readings.append(Reading(ambiguous=True, example=column.shown()))
    return readings


def _is_clean(column: NumberColumn) -> bool:
    return not column.given_up and not column.odd and column.numbers > 0


def plain_value(value: str, fmt: NumberFormat) -> str:
    """A value of `fmt` as Python and SQLite write numbers: "1.234,5" -> "1234.5"."""
    if fmt == THOUSANDS_COMMA:
        return value.replace(",", "")
    for separator in "." + _SPACES:
        value = value.replace(separator, "")
    return value.replace(",", ".")


def plain_sql(column: str, fmt: NumberFormat) -> str:
    """plain_value in SQL, for a staged column of raw text."""
    if fmt == THOUSANDS_COMMA:
        return f"REPLACE({column}, ',', '')"
    for separator in "." + _SPACES:
        column = f"REPLACE({column}, {_sql_char(separator)}, '')"
    return f"REPLACE({column}, ',', '.')"


def _sql_char(character: str) -> str:
    return f"'{character}'" if character.isascii() else f"char({ord(character)})"
