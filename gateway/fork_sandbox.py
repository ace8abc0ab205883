"""A forked spare's own sandbox, made by the fork itself before it touches any tenant.

The zygote (zygote.py) runs in a bubblewrap sandbox with a spare's filesystem view (sandbox.
zygote_launch): /usr, the venv and the gateway read-only, empty /data and /conf, /run/ds, /proc,
/dev, /tmp, and the host's <run_dir>/spares at SANDBOX_SPARES. Every spare it forks must end up
with what a spare bubblewrap starts itself gets (spares.start_spare): namespaces of its own, and
nothing of the zygote's or of another spare's. The fork does, in order:

1. is forked into a PID namespace of its own, as its PID 1 (as `bwrap --as-pid-1`): the zygote
   unshares the PID namespace its next child gets (unshare(2) moves only the children), forks
   and takes its own back (setns; `fork_into_new_pid_namespace`); the fork unshares its
   mount, network, IPC, UTS and cgroup namespaces itself (`unshare`) and does the rest
   (`become_spare`);
2. makes every mount a slave (nothing it mounts reaches the zygote), binds its own folders from
   SANDBOX_SPARES/<name>/ onto /data, /conf and /run/ds (slaves of the host's <run_dir>/spares,
   as bubblewrap's binds, so the tenant's folders bound there at the handoff appear here), then
   detaches SANDBOX_SPARES: no other spare's folders are reachable any more;
3. replaces what the zygote's mounts would share between spares with fresh ones, as bubblewrap
   mounts them (bubblewrap 0.8 bind.c/bubblewrap.c, SETUP_MOUNT_PROC/DEV/TMPFS): a /proc of its
   own PID namespace (the zygote's shows the host's processes) with bubblewrap's read-only
   covers, a /dev tmpfs with the same six device nodes and a devpts of its own, a /tmp tmpfs;
4. brings its loopback up (bubblewrap's --unshare-net does).

Everything else (the tenant's uid, capabilities, no-new-privs, rlimits, private mounts) happens
at the handoff, in spare_process.confine, exactly as for a spare bubblewrap started. The
zygote's file descriptors are closed by zygote.py before step 1. tests/test_sleep_spares.py
compares a forked spare with a bubblewrap one: namespaces, mountinfo, capabilities, ids,
rlimits, file descriptors.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct

from .linux import check, libc
from .mounts import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_SLAVE,
    mount,
)
from .sandbox import SANDBOX_SPARES

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACES = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET
MS_MOVE = 8192

# bubblewrap's --dev: these nodes bound from the host, these links, a devpts of its own.
_DEVICE_NODES = ("null", "zero", "full", "random", "urandom", "tty")
_DEVICE_LINKS = {"stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
                 "stderr": "/proc/self/fd/2", "fd": "/proc/self/fd", "core": "/proc/kcore",
                 "ptmx": "pts/ptmx"}
_DEVPTS_OPTIONS = "newinstance,ptmxmode=0666,mode=620"
# bubblewrap's --proc covers these read-only when they are writable.
_PROC_COVERED = ("sys", "sysrq-trigger", "irq", "bus")
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 1


def fork_into_new_pid_namespace() -> int:
    """os.fork(), the child PID 1 of a new PID namespace (step 1); the caller's later children
    are not: it takes its own PID namespace back for them."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    pid = -1
    try:
        check(libc.unshare(CLONE_NEWPID), "unshare the PID namespace")
        pid = os.fork()
        if pid != 0:
            check(libc.setns(own, CLONE_NEWPID), "take the PID namespace back")
        return pid
    finally:
        if pid != 0:  # the child closes all it inherited (zygote.py)
            os.close(own)


def unshare() -> None:
    """Step 1 in the fork: its other namespaces."""
    check(libc.unshare(NAMESPACES), "unshare")


def become_spare(name: str) -> None:
    """Steps 2-4, in the forked child that is PID 1 of its namespace. Any error is raised: the
    caller ends the process before it has said it is ready."""
    if os.getpid() != 1:
        raise OSError("not PID 1 of a new PID namespace")
    mount(None, "/", MS_REC | MS_SLAVE)
    own = f"{SANDBOX_SPARES}/{name}"
    for folder, target in (("data", "/data"), ("conf", "/conf"), ("run", "/run/ds")):
        _bind(f"{own}/{folder}", target, MS_NOSUID | MS_NODEV)
    _detach(SANDBOX_SPARES)
    _fresh_tmp()
    _fresh_proc()
    _fresh_dev()
    _loopback_up()



def _bind(source: str, target: str, flags: int) -> None:
    mount(source, target, MS_BIND)
    mount(None, target, MS_REMOUNT | MS_BIND | flags)


def _detach(target: str) -> None:
    check(libc.umount2(os.fsencode(target), MNT_DETACH), f"umount {target}")


def _mount_fs(kind: str, target: str, flags: int, options: str | None) -> None:
    check(libc.mount(kind.encode(), os.fsencode(target), kind.encode(), ctypes.c_ulong(flags),
                     None if options is None else options.encode()), f"mount {kind} on {target}")


def _fresh_tmp() -> None:
    _detach("/tmp")
    _mount_fs("tmpfs", "/tmp", MS_NOSUID | MS_NODEV, "mode=0755")


def _fresh_proc() -> None:
    """A /proc of this PID namespace (the zygote's shows the host's processes, and would keep
    doing so underneath a new one: detached first)."""
    _detach("/proc")
    _mount_fs("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    for name in _PROC_COVERED:
        path = f"/proc/{name}"
        if os.path.lexists(path) and os.access(path, os.W_OK):
            _bind(path, path, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _fresh_dev() -> None:
    """A /dev tmpfs of its own, built under the fresh /tmp (the device nodes are bound from the
    zygote's /dev, itself bound from the host's by bubblewrap), then moved onto /dev."""
    staging = "/tmp/.dev"
    os.mkdir(staging, 0o755)
    _mount_fs("tmpfs", staging, MS_NOSUID | MS_NODEV, "mode=0755")
    for node in _DEVICE_NODES:
        target = f"{staging}/{node}"
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o666))
        _bind(f"/dev/{node}", target, MS_NOSUID)
    for link, destination in _DEVICE_LINKS.items():
        os.symlink(destination, f"{staging}/{link}")
    for folder in ("shm", "pts"):
        os.mkdir(f"{staging}/{folder}", 0o755)
    _mount_fs("devpts", f"{staging}/pts", MS_NOSUID | MS_NOEXEC, _DEVPTS_OPTIONS)
    _detach("/dev")
    mount(staging, "/dev", MS_MOVE)
    os.rmdir(staging)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))
