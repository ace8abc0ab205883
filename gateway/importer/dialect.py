"""The dialect: which delimiter splits the file into records, sniffed or chosen (pure)."""

from __future__ import annotations

import contextlib
import csv
import io
from dataclasses import dataclass

DELIMITERS = (",", ";", "\t", "|")
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


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
