"""One running tenant process: its pipes, its exit, stopping it.

TenantProcess watches a process the gateway started, or adopted from an old worker (see
handover.py, which carries its ProcessHandle): its exit through a pidfd, what it prints (logged
as tenant_output events) and, under bwrap, the status pipe that names Datasette's own pid. It
stops the process with SIGTERM to Datasette (in-flight requests finish), then SIGKILL; or lets
go of it when a new worker has adopted it. Starting processes and keeping one healthy per
tenant is supervisor.py's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import mounts
from .backends import Backend
from .pipes import LineReader
from .spares import spare_dir_for
from .tenant_output import Event, OutputEvents

log = logging.getLogger(__name__)

_OUTPUT_LINES_KEPT = 20
_TRACEBACK_PAUSE_S = 0.1
_STATUS_WAIT_S = 1.0  # for a status pipe still open after its process exited


@dataclass(slots=True)
class ProcessHandle:
    """What is needed to watch and stop one tenant process, and to hand it to a new gateway."""

    tenant: str
    generation: int
    pid: int  # the process the gateway started (bwrap outside the sandbox, else the tenant)
    signal_pid: int  # the process that drains on SIGTERM (Datasette itself)
    lifeline_fd: int  # write end; closing it (in every gateway) ends the process
    output_fd: int  # read end of the process's stdout and stderr
    status_fd: int  # read end of bwrap's --json-status-fd, or -1 without bwrap
    run_dir: Path
    uid: int | None


class TenantProcess:
    """One running generation of a tenant's Datasette."""

    def __init__(
        self, handle: ProcessHandle, backend: Backend, popen: subprocess.Popen[bytes] | None
    ) -> None:
        self.handle = handle
        self.backend = backend
        self.popen = popen
        self.started_at = time.time()
        self.retiring = False
        self.output: collections.deque[str] = collections.deque(maxlen=_OUTPUT_LINES_KEPT)
        self._output_events = OutputEvents()
        self._output_flush: asyncio.TimerHandle | None = None
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int | None] = loop.create_future()
        self.child_pid: asyncio.Future[int | None] = loop.create_future()
        self._exit_code: int | None = None
        try:
            self._pidfd = os.pidfd_open(handle.pid)  # works for adopted processes too
        except ProcessLookupError:
            self._pidfd = -1
            self.exited.set_result(None)
        else:
            loop.add_reader(self._pidfd, self._on_exit)
        self._readers = [self._read(LineReader(handle.output_fd, self._on_output), "output_fd")]
        self._status: LineReader | None = None
        if handle.status_fd >= 0:
            self._status = self._read(LineReader(handle.status_fd, self._on_status), "status_fd")
            self._readers.append(self._status)
        else:
            self.child_pid.set_result(None)

    def _read(self, reader: LineReader, field: str) -> LineReader:
        """A reader closes its pipe at its end; from then on the handle (sent to a new worker
        at an upgrade) names no descriptor there, since the number may be another file's. A
        forked tenant's status pipe ends before the tenant does if its zygote ends first (its
        worker's, at an upgrade)."""
        reader.ended.add_done_callback(lambda _: setattr(self.handle, field, -1))
        return reader

    @property
    def pid(self) -> int:
        return self.handle.pid

    def _on_exit(self) -> None:
        self._close_pidfd()
        if self._status is not None and not self._status.ended.done():
            # The exit code comes on the status pipe, which ends with it: bwrap writes it
            # before it exits, but the zygote only once it has reaped a forked spare.
            self._status.ended.add_done_callback(lambda _: self._set_exited())
            asyncio.get_running_loop().call_later(_STATUS_WAIT_S, self._set_exited)
        else:
            self._set_exited()

    def _set_exited(self) -> None:
        code = self.popen.poll() if self.popen is not None else None
        if not self.exited.done():
            self.exited.set_result(code if code is not None else self._exit_code)

    def _on_output(self, line: bytes) -> None:
        """Log what the tenant prints (see tenant_output.py), and keep the last lines."""
        text = line.decode("utf-8", "replace").rstrip()
        self.output.append(text)
        self._log_output(self._output_events.feed(text))
        if self._output_flush is not None:
            self._output_flush.cancel()
            self._output_flush = None
        if self._output_events.holding:  # a traceback: log it once it stops growing
            self._output_flush = asyncio.get_running_loop().call_later(
                _TRACEBACK_PAUSE_S, lambda: self._log_output(self._output_events.flush())
            )

    def _log_output(self, events: list[Event]) -> None:
        for level, text, traceback in events:
            fields = {"tenant": self.handle.tenant, "line": text}
            log.log(level, "tenant_output",
                    extra={**fields, "traceback": traceback} if traceback else fields)

    def _on_status(self, line: bytes) -> None:
        """bwrap's status: {"child-pid": N} once the sandbox is up, {"exit-code": N} at the end."""
        try:
            status = json.loads(line)
        except ValueError:
            return
        if "child-pid" in status and not self.child_pid.done():
            self.child_pid.set_result(int(status["child-pid"]))
        if "exit-code" in status:
            self._exit_code = int(status["exit-code"])

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def release(self) -> None:
        """Let go of the process without stopping it: a new worker has adopted it."""
        self.stop_reading()
        self._close_pidfd()
        if self.handle.lifeline_fd >= 0:
            os.close(self.handle.lifeline_fd)
            self.handle.lifeline_fd = -1
        self.backend.pool.close()

    def stop_reading(self) -> None:
        for reader in self._readers:
            reader.close()
        if self._output_flush is not None:
            self._output_flush.cancel()
            self._output_flush = None
        self._log_output(self._output_events.flush())
        if not self.child_pid.done():
            self.child_pid.set_result(None)

    def describe_exit(self) -> str:
        code = self.exited.result() if self.exited.done() else None
        how = f"exited with status {code}" if code is not None else "exited"
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        last = " | ".join(line for line in list(self.output)[-3:] if line)
        return f"{how}: {last}" if last else how

    async def stop(self, grace_s: float) -> None:
        """SIGTERM (Datasette finishes in-flight requests), then SIGKILL after `grace_s`."""
        self.retiring = True
        try:
            self.backend.pool.close()
            if not self.exited.done():
                _signal(self.handle.signal_pid, signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.exited), grace_s)
            if not self.exited.done():
                log.warning("tenant_killed", extra={
                    "tenant": self.handle.tenant, "pid": self.handle.signal_pid,
                    "grace_s": grace_s})
            self.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.exited), 5)
            with contextlib.suppress(TimeoutError):  # the last lines it printed
                await asyncio.wait([reader.ended for reader in self._readers], timeout=1)
            self.stop_reading()
        finally:
            # Whatever failed above: a process made of a spare had the tenant's folders bound
            # under the run folder, and one left there is reached by anything that walks it
            # (an operator's rm -rf deletes the tenant's data through it). Never removed with it.
            await asyncio.to_thread(mounts.release, spare_dir_for(self.handle.run_dir))
            await asyncio.to_thread(shutil.rmtree, self.handle.run_dir, ignore_errors=True)

    def kill(self) -> None:
        """End the process now: close the lifeline, SIGKILL both pids. Safe to call twice."""
        if self.handle.lifeline_fd >= 0:
            os.close(self.handle.lifeline_fd)
            self.handle.lifeline_fd = -1
        if not self.exited.done():
            _signal(self.handle.signal_pid, signal.SIGKILL)
            _signal(self.handle.pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)

