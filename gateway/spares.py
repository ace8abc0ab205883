"""Spare tenant processes: sandboxes with Python and Datasette already loaded, each handed one
tenant at its start (a wake, a restart), so that a start costs Datasette's own start and not the
~0.2 s of CPU its imports take (bench/wake.py).

    <run_dir>/spares/                0700 root; a shared mount point (mounts.py)
        <generation>/                a spare's, named spare-<pid>-<n> until its handoff
            data/                    the tenant's data folder is bound here at the handoff
            conf/                    its metadata file and plugins folder, read-only
    <run_dir>/<generation>/          the socket folder (spare-<pid>-<n> until the handoff),
                                     chowned to the tenant at the handoff

A spare gets its generation when it is handed a tenant (its folders are renamed then), so the
generations of a tenant's processes grow as cold starts' do.

A spare is used once: handed one tenant, it is that tenant's process until it exits, and its
folders are never used again (generations only grow). What the spare does with the handoff, and
why its sandbox equals a cold start's, is spare_process.py's docstring. Only the root gateway at
isolation `full` or `root-bwrap` has spares (sandbox.can_use_spares); elsewhere starts are cold.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import select
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import mounts, sandbox
from .tenant_files import make_private_dir
from .zygote import Zygote

log = logging.getLogger(__name__)

SPARES_DIR = "spares"
START_NICE = 5
_READY_TIMEOUT_S = 10.0


class ForkedProcess:
    """A spare the zygote forked (zygote.py): the zygote's child, not the gateway's, so watched
    through a pidfd, its exit status read from its status pipe (the zygote writes it once it
    has reaped the spare). What Spare needs of a subprocess.Popen."""

    def __init__(self, pid: int, status_fd: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._status_fd = status_fd
        self._pidfd = os.pidfd_open(pid)

    def poll(self) -> int | None:
        if self.returncode is None and (select.select([self._pidfd], [], [], 0)[0]
                                        or _dying(self.pid)):
            self._exited()
        return self.returncode

    def wait(self) -> int | None:
        if self.returncode is None:
            select.select([self._pidfd], [], [])
            self._exited()
        return self.returncode

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)  # PID 1 of its namespace: only SIGKILL from here

    def close(self) -> None:
        """Once handed over: the tenant's process watches it with a pidfd of its own."""
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def _exited(self) -> None:
        """Once it has exited: the exit code the zygote wrote, if it has yet (else -9)."""
        self.close()
        self.returncode = -signal.SIGKILL
        with contextlib.suppress(OSError, ValueError):
            os.set_blocking(self._status_fd, False)
            for line in os.read(self._status_fd, 65536).splitlines():
                self.returncode = int(json.loads(line).get("exit-code", self.returncode))


def _dying(pid: int) -> bool:
    """Whether `pid` is a zombie: killed, its threads still ending, so its pidfd does not say
    it has exited yet (a spare has a lifeline thread), though its handoff pipe may be closed."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] == b"Z"
    except OSError:
        return True


@dataclass(slots=True)
class Spare:
    name: str
    process: subprocess.Popen[bytes] | ForkedProcess
    spare_dir: Path
    run_dir: Path
    lifeline_fd: int  # write end: closing it ends the spare (and later the tenant)
    handoff_fd: int  # write end of the pipe the spare waits on
    ready_fd: int  # read end: "1" once the spare runs (its sandbox made), "2" once loaded
    output_fd: int
    status_fd: int


@dataclass(frozen=True, slots=True)
class Handoff:
    """What a spare is told (one JSON line); the secret never goes on a command line."""

    uid: int
    secret: str
    rlimits: dict[str, int]
    wal: list[str]
    datasette_args: list[str]
    read_only: list[str]

    def encode(self) -> bytes:
        return json.dumps({
            "uid": self.uid, "secret": self.secret, "rlimits": self.rlimits, "wal": self.wal,
            "datasette_args": self.datasette_args, "read_only": self.read_only,
        }).encode() + b"\n"


def spare_dir_for(run_dir: Path) -> Path:
    """The mount folder of the spare whose socket folder is `run_dir` (it may not exist)."""
    return run_dir.parent / SPARES_DIR / run_dir.name


class SparePool:
    """Keeps `size` spares started; take() hands out the oldest (starting one if none is left)."""

    def __init__(self, run_root: Path, size: int, zygote: Zygote | None) -> None:
        self.run_root = run_root
        self.size = size
        self.zygote = zygote  # None: each spare is a bubblewrap of its own
        self._names = (f"spare-{os.getpid()}-{n}" for n in itertools.count())
        self._spares: list[Spare] = []
        self._starting = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def take(self) -> Spare:
        while self._spares:
            spare = self._spares.pop(0)
            if spare.process.poll() is None:
                self.fill()
                return spare
            log.warning("spare_exited", extra={"spare": spare.name,
                                               "status": spare.process.returncode})
            await asyncio.to_thread(discard, spare)
        spare = await self._start()
        _close_ready(spare)  # not loaded yet, but no other is nearer to it
        self.fill()
        return spare

    def fill(self) -> None:
        """Start spares in the background until there are `size` of them, one at a time: a
        refill competes for the cores with the wakes that found no spare (bench/density)."""
        if not self._closed and self._starting == 0 and len(self._spares) < self.size:
            self._starting += 1
            task = asyncio.ensure_future(self._add())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _add(self) -> None:
        try:
            spare = await self._start()
        except OSError as exc:
            self._starting -= 1
            log.error("spare_start_failed", extra={"error": str(exc)})
            return
        if self._closed:
            self._starting -= 1
            _close_ready(spare)
            await asyncio.to_thread(discard, spare)
            return
        self._spares.append(spare)  # running: it may be handed a tenant from now on
        try:
            await asyncio.to_thread(_wait_for_byte, spare.ready_fd, b"2")  # its imports done
        finally:
            _close_ready(spare)
            self._starting -= 1
        self.fill()

    async def _start(self) -> Spare:
        """A new spare, once it runs (its sandbox made)."""
        name = next(self._names)
        starting = asyncio.ensure_future(asyncio.to_thread(_start_and_wait, self.run_root, name,
                                                       self.zygote))
        try:
            return await asyncio.shield(starting)  # a thread cannot be stopped half-way
        except asyncio.CancelledError:
            starting.add_done_callback(_discard_started)
            raise

    async def close(self) -> None:
        """Discard the idle spares (handed ones are tenants' now) and stop refilling."""
        self._closed = True
        spares, self._spares = self._spares, []
        for spare in spares:
            await asyncio.to_thread(discard, spare)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.zygote is not None:  # the spares it forked do not end with it
            await asyncio.to_thread(self.zygote.stop)


def _start_and_wait(run_root: Path, name: str, zygote: Zygote | None) -> Spare:
    if zygote is not None:
        zygote.ensure_running()
        try:
            spare = fork_spare(run_root, name, zygote)
        except OSError:
            if zygote.is_running():
                raise
            zygote.ensure_running()  # it had died: once more, from a new one
            spare = fork_spare(run_root, name, zygote)
    else:
        spare = start_spare(run_root, name)
    if not _wait_for_byte(spare.ready_fd, b"1"):
        _close_ready(spare)
        discard(spare)
        raise OSError(f"spare {name} did not start: exit status {spare.process.poll()}")
    return spare


def _discard_started(starting: asyncio.Future[Spare]) -> None:
    """A spare started for a take() that was cancelled meanwhile."""
    if not starting.cancelled() and starting.exception() is None:
        spare = starting.result()
        _close_ready(spare)
        discard(spare)


def _make_folders(run_root: Path, name: str) -> tuple[Path, Path]:
    """A spare's mount folder (data/, conf/) and socket folder."""
    spares = run_root / SPARES_DIR
    spares.mkdir(mode=0o700, exist_ok=True)
    mounts.make_shared_point(spares)
    spare_dir = spares / name
    spare_dir.mkdir(mode=0o700)
    (spare_dir / "data").mkdir()
    (spare_dir / "conf").mkdir()
    run_dir = run_root / name
    make_private_dir(run_dir, None)
    return spare_dir, run_dir


def fork_spare(run_root: Path, name: str, zygote: Zygote) -> Spare:
    """Make a spare's folders and have the zygote fork it (blocking: run in a thread). The
    zygote sees <run_dir>/spares only, so the socket folder is bound there too, at run/: the
    fork binds its own folders from there and then loses sight of the rest (fork_sandbox.py)."""
    spare_dir, run_dir = _make_folders(run_root, name)
    (spare_dir / "run").mkdir()
    lifeline_read, lifeline_write = os.pipe()
    handoff_read, handoff_write = os.pipe()
    ready_read, ready_write = os.pipe()
    status_read, status_write = os.pipe()
    output_read, output_write = os.pipe()
    theirs = (lifeline_read, handoff_read, ready_write, status_write, output_write)
    try:
        mounts.bind(run_dir, spare_dir / "run")
        pid = zygote.fork(name, theirs)
        process = ForkedProcess(pid, status_read)
    except OSError:
        for fd in (lifeline_write, handoff_write, ready_read, status_read, output_read):
            os.close(fd)
        mounts.release(spare_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        for fd in theirs:  # a failure here must not lose a spare that now exists
            with contextlib.suppress(OSError):
                os.close(fd)
    return Spare(name, process, spare_dir, run_dir, lifeline_write, handoff_write, ready_read,
                 output_read, status_read)


def start_spare(run_root: Path, name: str) -> Spare:
    """Make a spare's folders and start it in a bubblewrap of its own (blocking: run in a
    thread)."""
    spare_dir, run_dir = _make_folders(run_root, name)
    lifeline_read, lifeline_write = os.pipe()
    handoff_read, handoff_write = os.pipe()
    ready_read, ready_write = os.pipe()
    status_read, status_write = os.pipe()
    output_read, output_write = os.pipe()
    launch = sandbox.spare_launch(spare_dir=spare_dir, run_dir=run_dir, lifeline_fd=lifeline_read,
                                  handoff_fd=handoff_read, ready_fd=ready_write,
                                  status_fd=status_write)
    try:
        popen = subprocess.Popen(
            launch.argv, env=launch.env,
            pass_fds=(lifeline_read, handoff_read, ready_write, status_write),
            stdin=subprocess.DEVNULL, stdout=output_write, stderr=output_write,
            start_new_session=True,
        )
    except OSError:
        for fd in (lifeline_write, handoff_write, ready_read, status_read, output_read):
            os.close(fd)
        mounts.release(spare_dir)
        raise
    finally:
        for fd in (lifeline_read, handoff_read, ready_write, status_write, output_write):
            os.close(fd)
    return Spare(name, popen, spare_dir, run_dir, lifeline_write, handoff_write, ready_read,
                 output_read, status_read)


def hand_over(spare: Spare, *, generation: int, uid: int, data_dir: Path,
              metadata_file: Path | None, plugins_dir: Path | None, handoff: Handoff) -> None:
    """Give `spare` its tenant: folders renamed for `generation` (bubblewrap's binds follow
    them) and bound in, socket folder chowned, the handoff written (blocking: run in a thread).
    The spare's fd for the handoff is closed either way."""
    try:
        # Running (SparePool._start) when handed over; it may have imported at SPARE_NICE.
        # Until it answers it starts at START_NICE: a start is one long piece of work, requests
        # to tenants already serving are short ones, and these come first (bench/density).
        _renice(spare, START_NICE)
        for folder in ("run_dir", "spare_dir"):
            old = getattr(spare, folder)
            setattr(spare, folder, old.rename(old.with_name(str(generation))))
        os.chown(spare.run_dir, uid, uid)
        mounts.bind(data_dir, spare.spare_dir / "data")
        if metadata_file is not None:
            target = spare.spare_dir / "conf" / metadata_file.name
            target.touch(mode=0o600)
            mounts.bind(metadata_file, target, read_only=True)
        if plugins_dir is not None:
            target = spare.spare_dir / "conf" / "plugins"
            target.mkdir(mode=0o700)
            mounts.bind(plugins_dir, target, read_only=True)
        os.write(spare.handoff_fd, handoff.encode())  # < PIPE_BUF is not needed: one reader
    finally:
        os.close(spare.handoff_fd)
        spare.handoff_fd = -1


def answering(spare: Spare) -> None:
    """`spare`'s tenant answers its health check: it has made its own copies of the binds
    private, so the host's are detached; and it serves at the usual priority from now on
    (blocking: run in a thread)."""
    mounts.detach(spare.spare_dir)
    _renice(spare, 0)


def _renice(spare: Spare, nice: int) -> None:
    """Every thread of the spare's Python (a forked spare itself; bwrap's child) to `nice`."""
    pid = spare.process.pid
    with contextlib.suppress(OSError):
        pythons = [pid] if isinstance(spare.process, ForkedProcess) else \
            Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for python in pythons:
            for thread in os.listdir(f"/proc/{python}/task"):
                os.setpriority(os.PRIO_PROCESS, int(thread), nice)


def _wait_for_byte(fd: int, expected: bytes) -> bool:
    """Whether the spare wrote `expected` on its ready pipe within _READY_TIMEOUT_S."""
    ready, _, _ = select.select([fd], [], [], _READY_TIMEOUT_S)
    return bool(ready) and os.read(fd, 1) == expected


def wait_until_loaded(spare: Spare) -> bool:
    """Whether `spare` ran and finished its imports (for bench/wake.py: no pool there)."""
    loaded = _wait_for_byte(spare.ready_fd, b"1") and _wait_for_byte(spare.ready_fd, b"2")
    _close_ready(spare)
    return loaded


def _close_ready(spare: Spare) -> None:
    if spare.ready_fd >= 0:
        os.close(spare.ready_fd)
        spare.ready_fd = -1


def discard(spare: Spare) -> None:
    """End a spare that was never handed a tenant, and remove its folders. Its pipes are closed
    only once it has exited: a forked spare's exit status is read from its status pipe."""
    with contextlib.suppress(ProcessLookupError):
        spare.process.kill()
    spare.process.wait()
    for fd in (spare.lifeline_fd, spare.handoff_fd, spare.output_fd, spare.status_fd):
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    mounts.release(spare.spare_dir)
    with contextlib.suppress(OSError):
        for entry in spare.run_dir.iterdir():
            entry.unlink()
        spare.run_dir.rmdir()


def remove_stale(run_root: Path) -> None:
    """Spare folders an earlier gateway left (their processes died with it)."""
    spares = run_root / SPARES_DIR
    if spares.is_dir():
        for entry in spares.iterdir():
            mounts.release(entry)
    remove_unhanded(run_root)


def remove_unhanded(run_root: Path) -> None:
    """The folders of spares never handed a tenant (an old worker's, ending with it)."""
    for entry in (run_root / SPARES_DIR).glob("spare-*"):
        mounts.release(entry)
    for entry in run_root.glob("spare-*"):
        shutil.rmtree(entry, ignore_errors=True)  # socket folders: never a mount in them


def probe(run_root: Path) -> str | None:
    """None when spares can work here (bubblewrap as root, mounts that propagate), else why not.
    At isolation `full` only the unprivileged bubblewrap was tried; a spare runs it as root."""
    failure = sandbox.probe_root_bwrap()
    if failure is not None:
        return f"bubblewrap as root: {failure}"
    try:
        (run_root / SPARES_DIR).mkdir(mode=0o700, parents=True, exist_ok=True)
        mounts.make_shared_point(run_root / SPARES_DIR)
    except OSError as exc:
        return f"cannot make a shared mount point: {exc}"
    return None


def release_root(run_root: Path) -> None:
    """Unmount <run_dir>/spares when no tenant's folder is bound under it any more."""
    spares = run_root / SPARES_DIR
    if mounts.mounted_under(spares) == [str(spares)]:
        mounts.release(spares)
