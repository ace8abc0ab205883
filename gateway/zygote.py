"""The zygote: one Python per gateway with Datasette imported, that forks spares (spares.py), so
a new spare costs a fork and a sandbox, not ~0.2 s of imports (bench/wake.py), and shares the
zygote's memory until it writes to it.

    python -m gateway.zygote --lifeline-fd 3 --control-fd 4

Started by the gateway (Zygote.start) as root in bubblewrap with a spare's filesystem view
(sandbox.zygote_launch) but in the host's PID namespace: its spares are not its PID namespace's,
so they outlive it if it dies. It imports what a spare imports, freezes the garbage collector's
view of those objects (gc.freeze: collections in a spare then do not write to, and so copy, the
pages it shares), says "ready" on its control socket, and waits there. The gateway sends one
request per spare: its name and, as SCM_RIGHTS, the spare's five pipe ends (lifeline, handoff,
ready, status, output); the zygote forks and answers the pid of the fork. The zygote never
starts a thread (a fork copies only the calling one), never reads a tenant's file and exits at
end of file on its lifeline or control socket.

The fork (the spare's outer process, bubblewrap's role for a spare it starts):
1. keeps only the spare's pipes: the lifeline, handoff and ready ends at 3, 4, 5, the output as
   stdout and stderr, the status end; every other descriptor (the zygote's) is closed;
2. starts a session, unshares its namespaces and forks the spare, PID 1 of its own namespace,
   which makes its own sandbox (fork_sandbox.become_spare), writes "1" and "2" on the ready pipe
   (running, loaded) and waits for the handoff (spare_process.serve_handoff);
3. writes bubblewrap's --json-status-fd lines on the status pipe ({"child-pid": N}, then
   {"exit-code": N}) and waits for the spare, and exits with it.
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

from . import fork_sandbox, sandbox, spare_process, tenant_process
from .linux import PR_SET_PDEATHSIG, prctl

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
        """Ask for spare `name` with these pipe ends; the pid of its outer process."""
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
    os.setpriority(os.PRIO_PROCESS, 0, 0)  # its spares start at the usual priority
    gc.freeze()
    if threading.active_count() != 1:
        raise SystemExit("gateway.zygote: a thread runs; forking would lose it")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the forks
    control = socket.socket(fileno=args.control_fd)
    control.send(_READY)
    while True:
        readable, _, _ = select.select([control, args.lifeline_fd], [], [])
        if args.lifeline_fd in readable:
            os._exit(0)  # end of file: the gateway is gone
        message, fds, _, _ = socket.recv_fds(control, 256, _PIPES)
        if not message:
            os._exit(0)
        name = message.decode("ascii", "replace")
        if len(fds) != _PIPES or not _SPARE_NAME.fullmatch(name):
            _close(fds)
            control.send(_PID.pack(-1))
            continue
        try:
            pid = os.fork()
        except OSError:  # EAGAIN, ENOMEM: this spare is refused, the next may not be
            pid = -1
        if pid == 0:
            control.detach()
            _outer(name, fds)
        _close(fds)
        control.send(_PID.pack(pid))


def _outer(name: str, fds: list[int]) -> NoReturn:
    """The fork: steps 1-3 of the module docstring. Never returns."""
    try:
        lifeline, handoff, ready, status, output = _keep_only(fds)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        fork_sandbox.unshare()
        pid = os.fork()
    except BaseException as exc:  # whatever it is, this fork must end
        _fail(f"cannot fork a spare: {exc}")
    if pid == 0:
        _spare(name, lifeline, handoff, ready, status)
    for fd in (lifeline, handoff, ready):
        os.close(fd)
    os.dup2(0, 1)  # /dev/null: the output pipe ends with the spare
    os.dup2(0, 2)
    os.write(status, json.dumps({"child-pid": pid}).encode() + b"\n")
    _, wait_status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    with contextlib.suppress(OSError):
        os.write(status, json.dumps({"exit-code": code}).encode() + b"\n")
    os._exit(code & 0xFF)


def _spare(name: str, lifeline: int, handoff: int, ready: int, status: int) -> NoReturn:
    """PID 1 of the spare's namespace: its sandbox, then what a spare bubblewrap started does
    once loaded."""
    try:
        os.close(status)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "set the parent-death signal")
        fork_sandbox.become_spare(name)
    except BaseException as exc:  # whatever it is, this spare must end
        _fail(f"cannot make the spare's sandbox: {exc}")
    tenant_process.watch_lifeline(lifeline)
    os.write(ready, b"12")  # running in its sandbox, and loaded (spares.SparePool)
    os.close(ready)
    spare_process.serve_handoff(handoff)
    os._exit(0)


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
