"""What a tenant process prints, as log events worth reading (pure; process.py feeds it lines).

Most of it is uvicorn's start-up chatter ("INFO:     Waiting for application startup."): that
goes to the log at debug level. Warnings and errors keep their level, and a Python traceback,
chained ones included, becomes one event instead of one per line.
"""

from __future__ import annotations

import logging
import re

_ERROR_PREFIXES = ("ERROR:", "CRITICAL:", "Error:", "error:", "tenant_start_failed")
_WARNING = re.compile(r"^WARNING:|\b[A-Z]\w*Warning: ")  # uvicorn's, or warnings.warn's
_TRACEBACK = "Traceback (most recent call last):"
# Lines between two tracebacks of one chain (PEP 3134's messages) and the blank ones around them.
_CHAIN = ("During handling of the above exception", "The above exception was the direct cause")

Event = tuple[int, str, str]  # level, the line (a traceback's last), the whole traceback or ""


def line_level(line: str) -> int:
    if line.startswith(_ERROR_PREFIXES):
        return logging.ERROR
    if _WARNING.search(line):
        return logging.WARNING
    return logging.DEBUG


class OutputEvents:
    """Lines in, events out. A traceback is held until the line after its exception line shows
    that it is over; `flush` hands over what is held (process.py calls it after a pause)."""

    def __init__(self) -> None:
        self._traceback: list[str] = []
        self._ended = False  # the traceback's exception line has been seen

    def feed(self, line: str) -> list[Event]:
        if self._traceback:
            if not self._ended:
                self._traceback.append(line)
                self._ended = not line.startswith((" ", _TRACEBACK))
                return []
            if not line or line.startswith(_CHAIN):
                self._traceback.append(line)
                return []
            if line.startswith(_TRACEBACK):
                self._traceback.append(line)
                self._ended = False
                return []
            return [*self.flush(), *self.feed(line)]
        if line.startswith(_TRACEBACK):
            self._traceback, self._ended = [line], False
            return []
        return [(line_level(line), line, "")]

    @property
    def holding(self) -> bool:
        return bool(self._traceback)

    def flush(self) -> list[Event]:
        if not self._traceback:
            return []
        lines, self._traceback, self._ended = self._traceback, [], False
        while lines and not lines[-1]:
            lines.pop()
        return [(logging.ERROR, lines[-1], "\n".join(lines))]
