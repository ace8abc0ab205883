"""Reading a child's pipe line by line on the event loop, the descriptor closed exactly once.

Not loop.connect_read_pipe: under uvloop (the gateway's loop) its transport hands the pipe's
descriptor to libuv, which closes it, and keeps the file object, which closes the same number
again (MagicStack/uvloop#763). When another thread has opened something in between, that second
close ends it: under bench/density's load this closed spares' pipes ("spare_start_failed: Bad
file descriptor", a spare exiting at end of file on its handoff) and tenants' lifelines (a
tenant exiting with status 70 mid-request). Here the reader owns the descriptor and nothing
else does.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

MAX_LINE = 65536  # a longer line is handed over in pieces of this size


class LineReader:
    """Calls `on_line` with each line (its newline kept) read from pipe `fd` until end of file,
    then closes `fd`; `ended` is done then. close() stops early (and closes `fd`)."""

    def __init__(self, fd: int, on_line: Callable[[bytes], None]) -> None:
        self._fd = fd
        self._on_line = on_line
        self._pending = b""
        self._loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            chunk = os.read(self._fd, MAX_LINE)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            if self._pending:
                self._on_line(self._pending)
            self.close()
            return
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        for line in lines:
            self._on_line(line + b"\n")
        while len(self._pending) >= MAX_LINE:
            self._on_line(self._pending[:MAX_LINE])
            self._pending = self._pending[MAX_LINE:]

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        if not self.ended.done():
            self.ended.set_result(None)
