"""Column types, as sqlite-utils decides them, a batch of rows at a time (pure)."""

from __future__ import annotations

import collections
import operator
import sys
from collections.abc import Callable, Iterable
from typing import Literal

from .numbers import NumberColumn

ColumnType = Literal["INTEGER", "REAL", "TEXT"]
NUMERIC_TYPES = ("INTEGER", "REAL")


class TypeTracker:
    """sqlite-utils' TypeTracker, a batch of rows at a time: each column is INTEGER while every
    non-empty value passes int(), then REAL while every one passes float(), then TEXT.

    Same answers as sqlite-utils because the same int()/float() decide (int-valid strings are
    float-valid too, tests/test_importer.py checks, so a column leaving INTEGER only needs its
    current batch checked for float). The loops over values run in C (map, filter).

    Text columns are also watched as numbers written for people (numbers.NumberColumn), from
    the batch that made them text. What came before only matters when it was not plain
    integers (which every format reads): such columns are `unsure`, and `from_start` (a second
    pass) watches them from the first row.
    """

    def __init__(self, width: int, from_start: frozenset[int] = frozenset()) -> None:
        self.types: list[ColumnType] = ["INTEGER"] * width
        self.rows = 0
        self.numbers: list[NumberColumn | None] = [
            NumberColumn() if index in from_start else None for index in range(width)]
        self.unsure: set[int] = set()
        self._plain = [True] * width  # every value so far "-"? and digits
        self._watched = [index in from_start for index in range(width)]

    def observe(self, rows: list[list[str]]) -> None:
        self.rows += len(rows)
        if not rows:
            return
        active = [index for index, (kind, watcher)
                  in enumerate(zip(self.types, self.numbers, strict=True))
                  if kind != "TEXT" or watcher is not None]
        for index, column in zip(active, _columns(rows, active, len(self.types)), strict=True):
            kind = before = self.types[index]
            was_plain = self._plain[index]
            if kind == "INTEGER":
                plain = _plain_integers(column)
                if not (plain or _all_convert(int, column)):
                    kind = "REAL"
                self._plain[index] = was_plain and plain
            if kind == "REAL" and not _all_convert(float, column):
                kind = "TEXT"
            if kind == "TEXT" and not self._watched[index]:
                self._watched[index] = True
                self.numbers[index] = NumberColumn()
                if before == "REAL" or not was_plain:
                    self.unsure.add(index)
            self.types[index] = kind
            watcher = self.numbers[index]
            if watcher is not None:
                watcher.observe(column)
                if watcher.given_up:
                    self.numbers[index] = None

    def result(self) -> list[ColumnType]:
        """The types; a file with no rows at all gets TEXT columns (nothing says otherwise)."""
        return list(self.types) if self.rows else ["TEXT"] * len(self.types)


def _columns(rows: list[list[str]], indices: list[int], width: int
             ) -> Iterable[tuple[str, ...]]:
    """The values of these columns, a tuple per column (only those: text columns that no
    longer need looking at are most of the work of transposing)."""
    if len(indices) == width:
        return zip(*rows, strict=True)
    if len(indices) == 1:
        return [tuple(map(operator.itemgetter(indices[0]), rows))]
    if not indices:
        return []
    return zip(*map(operator.itemgetter(*indices), rows), strict=True)


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
    return (not digits or digits.isdecimal()) and (
        len(digits) <= _INT_MAX_DIGITS or max(map(len, values)) <= _INT_MAX_DIGITS)


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
