"""One importer process (`python -m gateway.importer`), seen from the gateway: the file's
bytes into its stdin, its events out of its stdout, the commit instruction into its fd 3; and,
whatever happens, its whole process tree killed and reaped at the end (issue 12: an importer
left running holds three of the tenant's processes, and about fifteen exhaust its RLIMIT_NPROC).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .errors import UploadFailed

# The longest event line read. A "staged" or "done" event lists the columns: 2,000 names of 300
# characters are ~0.7 MB of JSON (asyncio's default of 64 KiB silently killed the reader).
MAX_EVENT_BYTES = 8 * 1024 * 1024
_CHECKPOINT_S = 60  # after a commit the importer checkpoints the database before it exits
_REAP_S = 5  # after SIGKILL, bwrap exits once its sandbox is gone


class Importer:
    """One `python -m gateway.importer`: bytes in, events out, then the commit instruction.

    Events end with {"event": "exit", "status": N} when the importer's output ends, or
    {"event": "exit", "status": None, "too_large": True} when a line passed MAX_EVENT_BYTES."""

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
                stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=MAX_EVENT_BYTES,
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
        if stdin is not None and not stdin.is_closing():
            stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await stdin.wait_closed()

    def commit(self, instruction: bytes) -> None:
        os.write(self.commit_fd, instruction)
        self.cancel()

    def cancel(self) -> None:
        """Close fd 3: without an instruction written before, the importer writes nothing."""
        if self.commit_fd >= 0:
            os.close(self.commit_fd)
            self.commit_fd = -1

    async def until(self, *names: str) -> AsyncIterator[dict[str, Any]]:
        """Events up to and including the first one named in `names` (or the end: "exit")."""
        while True:
            event = await self.events.get()
            yield event
            if event["event"] in names or event["event"] == "exit":
                return

    async def close(self, kill: bool = False) -> None:
        """Make sure the importer and every process under it are gone and reaped, and its pipes
        read. After a commit (kill=False) it may still be checkpointing: give it a minute."""
        self.cancel()
        if not kill and self.process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), _CHECKPOINT_S)
        if self.process.returncode is None:
            await self._kill()
        if self.process.stdin is not None:
            self.process.stdin.close()  # its reader is gone: nothing is waiting for the bytes
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._readers, return_exceptions=True),
                                   _REAP_S)
        for reader in self._readers:
            reader.cancel()

    async def _kill(self) -> None:
        """SIGKILL every process under the importer, then the importer itself if it is still
        there. In a bubblewrap sandbox the tree is bwrap -> bwrap (the PID namespace's init) ->
        python: killing the init ends the namespace, and each process is reaped by its own
        parent, so nothing is left for PID 1 to reap (which, in a container, it may never do)."""
        for pidfd in await asyncio.to_thread(_open_descendants, self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), _REAP_S)
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()

    async def _read_events(self) -> None:
        end: dict[str, Any] = {"event": "exit", "status": None}
        try:
            assert self.process.stdout is not None
            while line := await self.process.stdout.readline():
                try:
                    event = json.loads(line)
                except ValueError:
                    self.output.append(line.decode("utf-8", "replace").rstrip()[:1000])
                    continue
                if isinstance(event, dict) and isinstance(event.get("event"), str):
                    self.events.put_nowait(event)
            end["status"] = await self.process.wait()
        except ValueError:  # a line longer than MAX_EVENT_BYTES
            end["too_large"] = True
        finally:  # whatever happened, whoever waits for an event gets this one
            self.events.put_nowait(end)

    async def _read_errors(self) -> None:
        assert self.process.stderr is not None
        while True:
            try:
                line = await self.process.stderr.readline()
            except ValueError:
                line = b"(a line longer than the limit, left out)\n"
            if not line:
                return
            self.output.append(line.decode("utf-8", "replace").rstrip()[:1000])
            del self.output[:-20]


def _open_descendants(root: int) -> list[int]:
    """pidfds of every process under `root`, found by their parent ids in /proc. A pidfd
    stays bound to its process, so a pid reused later is never signalled."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(entry.path, "stat").read_bytes()
                parent = int(stat[stat.rindex(b")") + 2:].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    pidfds, stack = [], [root]
    while stack:
        for pid in children.get(stack.pop(), []):
            with contextlib.suppress(OSError):
                pidfds.append(os.pidfd_open(pid))
                stack.append(pid)
    return pidfds
