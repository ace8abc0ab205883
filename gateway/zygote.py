"""The zygote: one Python per gateway with Datasette imported, that forks spares (spares.py), so
a new spare costs a fork and a sandbox, not ~0.2 s of imports (bench/wake.py), and shares the
zygote's memory until it writes to it.

    python -m gateway.zygote --lifeline-fd 3 --control-fd 4

Started by the gateway (Zygote.start) as root in bubblewrap with a spare's filesystem view
(sandbox.zygote_launch) but in the host's PID namespace. It imports what a spare imports,
compiles Datasette's templates (compiled_templates.py), freezes the garbage collector's view of
those objects (gc.freeze: collections in a spare then do not write to, and so copy, the pages it
shares), says "ready" on its control socket, and waits there. The gateway sends one request per
spare: its name and, as SCM_RIGHTS, the spare's five pipe ends (lifeline, handoff, ready,
status, output); the zygote forks the spare and answers its pid. The zygote never starts a
thread (a fork copies only the calling one), never reads a tenant's file and exits at end of
file on its lifeline or control socket.

The fork is the spare itself, PID 1 of a PID namespace of its own (fork_sandbox, step 1). It
1. keeps only its pipes: the lifeline, handoff and ready ends at 3, 4, 5, the output as stdout
   and stderr; every other descriptor (the zygote's) is closed;
2. starts a session, unshares its other namespaces and makes its own sandbox
   (fork_sandbox.become_spare), writes "1" and "2" on the ready pipe (running, loaded) and
   waits for the handoff (spare_process.serve_handoff).
The zygote keeps the status pipe and writes on it what bubblewrap's --json-status-fd would:
{"child-pid": N} at the fork, {"exit-code": N} once it has reaped the spare, then closes it.
A spare outlives the zygote (its lifeline is the gateway's); once the zygote is gone, what
is left of its spares is reaped by the host's init, without an exit code.

There is no process between the zygote and a spare (there was: an outer process that made the
PID namespace by forking once more and waited): that was a fork and an exit more per wake, and
1.4 MiB of copied pages per awake tenant (bench/density).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import json
import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import NoReturn

from . import compiled_templates, fork_sandbox, sandbox, spare_process, tenant_process

log = logging.getLogger(__name__)

_SPARE_NAME = re.compile(r"spare-[0-9]+-[0-9]+")
_PIPES = 5  # lifeline, handoff, ready, status, output
_READY = b"ready"
_PID = struct.Struct("=i")
_START_TIMEOUT_S = 20.0


class Zygote:
    """The gateway's side: start the zygote, ask it for spares (blocking: run in a thread)."""

    def __init__(self, run_root: Path) -> None:
        self.run_root = run_root
        self.popen: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._lifeline = -1
        self._lock = threading.Lock()

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def ensure_running(self) -> None:
        """Start it (again: it died) unless it runs; OSError if it cannot be started."""
        with self._lock:
            if not self.is_running():
                self.start()
                log.info("zygote_started", extra={"pid": self.pid})

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def start(self) -> None:
        """Start the zygote and wait until it has loaded (OSError if it does not)."""
        self.stop()
        lifeline_read, self._lifeline = os.pipe()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        launch = sandbox.zygote_launch(run_root=self.run_root, lifeline_fd=lifeline_read,
                                       control_fd=theirs.fileno())
        try:
            self.popen = subprocess.Popen(
                launch.argv, env=launch.env, pass_fds=(lifeline_read, theirs.fileno()),
                stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(lifeline_read)
            theirs.close()
        self._control = ours
        ours.settimeout(_START_TIMEOUT_S)
        try:
            ready = ours.recv(16)
        except OSError:
            ready = b""
        if ready != _READY:
            status = self.popen.poll()
            self.stop()
            raise OSError(f"the zygote did not start (exit status {status})")
        ours.settimeout(None)

    def fork(self, name: str, pipes: tuple[int, int, int, int, int]) -> int:
        """Ask for spare `name` with these pipe ends; the spare's pid."""
        with self._lock:
            if self._control is None:
                raise OSError("the zygote is not running")
            try:
                socket.send_fds(self._control, [name.encode()], list(pipes))
                self._control.settimeout(_START_TIMEOUT_S)
                answer = self._control.recv(_PID.size)
                self._control.settimeout(None)
            except OSError:
                answer = b""
            if len(answer) != _PID.size:
                self.stop()  # it died, or hangs: the next ensure_running starts another
                raise OSError("the zygote did not answer")
        pid: int = _PID.unpack(answer)[0]
        if pid <= 0:
            raise OSError(f"the zygote could not fork {name}")
        return pid

    def stop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait()
            self.popen = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway.zygote")
    parser.add_argument("--lifeline-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    os.nice(spare_process.SPARE_NICE)  # its imports come after the gateway's and tenants' work
    spare_process.preload()
    compiled_templates.compile_datasette_templates()
    os.setpriority(os.PRIO_PROCESS, 0, 0)  # its spares start at the usual priority
    gc.freeze()
    if threading.active_count() != 1:
        raise SystemExit("gateway.zygote: a thread runs; forking would lose it")
    exited = _on_child_exit()
    statuses: dict[int, int] = {}  # the pid of each spare not reaped yet: its status pipe
    control = socket.socket(fileno=args.control_fd)
    control.send(_READY)
    while True:
        readable, _, _ = select.select([control, args.lifeline_fd, exited], [], [])
        if args.lifeline_fd in readable:
            os._exit(0)  # end of file: the gateway is gone
        if exited in readable:
            with contextlib.suppress(OSError):
                os.read(exited, 4096)
            _reap(statuses)
        if control in readable:
            message, fds, _, _ = socket.recv_fds(control, 256, _PIPES)
            if not message:
                os._exit(0)
            control.send(_PID.pack(_fork(message, fds, statuses, control)))


def _on_child_exit() -> int:
    """A pipe that becomes readable when a child exits (SIGCHLD, through the wakeup fd)."""
    read, write = os.pipe()
    for fd in (read, write):
        os.set_blocking(fd, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(write)
    return read


def _fork(message: bytes, fds: list[int], statuses: dict[int, int],
          control: socket.socket) -> int:
    """Fork the spare `message` names with these pipes; its pid, or -1."""
    name = message.decode("ascii", "replace")
    if len(fds) != _PIPES or not _SPARE_NAME.fullmatch(name):
        _close(fds)
        return -1
    status = fds[3]
    try:
        pid = fork_sandbox.fork_into_new_pid_namespace()
    except OSError:  # EAGAIN, ENOMEM: this spare is refused, the next may not be
        pid = -1
    if pid == 0:
        control.detach()  # its number is closed in the spare: never closed again at its exit
        _spare(name, fds)
    for fd in fds:
        if fd != status or pid < 0:
            os.close(fd)
    if pid > 0:
        statuses[pid] = status
        _report(status, {"child-pid": pid})
    return pid


def _reap(statuses: dict[int, int]) -> None:
    """Every exited child: its exit code on its status pipe, which is then closed."""
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        status = statuses.pop(pid, -1)
        if status >= 0:
            _report(status, {"exit-code": os.waitstatus_to_exitcode(wait_status)})
            os.close(status)


def _report(status: int, line: dict[str, int]) -> None:
    """One line on a status pipe; never blocks (a reader that is gone loses it)."""
    with contextlib.suppress(OSError):
        os.set_blocking(status, False)
        os.write(status, json.dumps(line).encode() + b"\n")


def _spare(name: str, fds: list[int]) -> NoReturn:
    """The fork, PID 1 of its PID namespace: steps 1 and 2 of the module docstring, then what a
    spare bubblewrap started does once loaded, then the tenant's Datasette. It never returns
    into the zygote's loop: it ends as a spare bubblewrap started does, by SystemExit
    (Datasette's command line) or an exception, and the interpreter's own shutdown."""
    try:
        signal.set_wakeup_fd(-1)  # before its number is closed: a signal would write there
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        lifeline, handoff, ready, status, output = _keep_only(fds)
        os.close(status)  # the zygote's to write
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        os.setsid()
        fork_sandbox.unshare()
        fork_sandbox.become_spare(name)
    except BaseException as exc:  # whatever it is, this spare must end
        _fail(f"cannot make the spare's sandbox: {exc}")
    tenant_process.watch_lifeline(lifeline)
    os.write(ready, b"12")  # running in its sandbox, and loaded (spares.SparePool)
    os.close(ready)
    spare_process.serve_handoff(handoff)
    sys.exit(0)


def _keep_only(fds: list[int]) -> tuple[int, int, int, int, int]:
    """The spare's pipes at 3-7; every other descriptor but 0-2 (the zygote's) closed."""
    lowest = 3 + len(fds)
    copies = [fcntl.fcntl(fd, fcntl.F_DUPFD, lowest) for fd in fds]  # none in 3-7 now
    for number, fd in enumerate(copies, start=3):
        os.dup2(fd, number)
    os.closerange(lowest, os.sysconf("SC_OPEN_MAX"))
    lifeline, handoff, ready, status, output = range(3, lowest)
    return lifeline, handoff, ready, status, output


def _fail(message: str) -> NoReturn:
    with contextlib.suppress(OSError):
        sys.stderr.write(f"spare_start_failed: {message}\n")
        sys.stderr.flush()
    os._exit(1)


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


if __name__ == "__main__":
    main()
