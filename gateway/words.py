"""Numbers in the words people read on the gateway's pages and in its messages. Pure."""

from __future__ import annotations


def plural(count: float, unit: str) -> str:
    """ "1 second", "2 seconds", "1.5 seconds", "1,000 hours"."""
    number = f"{int(count):,}" if count == int(count) else f"{count:g}"
    return f"{number} {unit}" + ("" if count == 1 else "s")


def duration(seconds: float) -> str:
    """A limit in the largest whole unit: "1 hour", "90 minutes", "45 seconds"."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            return plural(seconds // size, unit)
    return plural(seconds, "second")
