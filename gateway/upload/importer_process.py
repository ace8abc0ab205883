"""One importer process (`python -m gateway.importer`), seen from the gateway: the file's
bytes into its stdin, its events out of its stdout, the commit instruction into its fd 3."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

from .errors import UploadFailed
from .form import Target


class Importer:
    """One `python -m gateway.importer`: bytes in, events out, then the commit instruction."""

    def __init__(self, process: asyncio.subprocess.Process, commit_fd: int) -> None:
        self.process = process
        self.commit_fd = commit_fd
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.accepting = True  # False once it stopped reading (it found the file broken)
        self.output: list[str] = []
        self._readers = [asyncio.ensure_future(self._read_events()),
                         asyncio.ensure_future(self._read_errors())]

    @classmethod
    async def start(cls, argv: list[str], env: dict[str, str]) -> Importer:
        commit_read, commit_write = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, "--commit-fd", str(commit_read), env=env, pass_fds=(commit_read,),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True,
            )
        except OSError as exc:
            os.close(commit_write)
            raise UploadFailed(f"The importer could not be started ({exc.strerror}).") from None
        finally:
            os.close(commit_read)
        return cls(process, commit_write)

    async def write(self, data: bytes) -> None:
        stdin = self.process.stdin
        if not self.accepting or stdin is None:
            return
        try:
            stdin.write(data)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            self.accepting = False

    async def end_of_file(self) -> None:
        stdin = self.process.stdin
        if stdin is not None:
            stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await stdin.wait_closed()

    def commit(self, target: Target) -> None:
        os.write(self.commit_fd, target.instruction())
        self.cancel()

    def cancel(self) -> None:
        """Close fd 3: without an instruction written before, the importer writes nothing."""
        if self.commit_fd >= 0:
            os.close(self.commit_fd)
            self.commit_fd = -1

    async def until(self, *names: str) -> AsyncIterator[dict[str, Any]]:
        """Events up to and including the first one named in `names` (or the importer's exit)."""
        while True:
            event = await self.events.get()
            yield event
            if event["event"] in names or event["event"] == "exit":
                return

    async def close(self, kill: bool = False) -> None:
        """Make sure the process is gone (killed if it still runs) and its pipes are read.
        After an import it may still be checkpointing the database: give it a minute."""
        self.cancel()
        await self.end_of_file()
        if self.process.returncode is None and not kill:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 60)
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)

    async def _read_events(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                self.output.append(line.decode("utf-8", "replace").rstrip())
                continue
            self.events.put_nowait(event)
        await self.process.wait()
        self.events.put_nowait({"event": "exit", "status": self.process.returncode})

    async def _read_errors(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.output.append(line.decode("utf-8", "replace").rstrip())
            del self.output[:-20]
