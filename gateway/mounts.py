"""Bind mounts on the host that reach into a spare's sandbox (see spares.py), and removing them.

<run_dir>/spares is made a mount point of its own, shared (mount_namespaces(7)). Bubblewrap binds
a spare's data/ and conf/ folders from under it into the sandbox and makes every mount there a
slave of the host's, so what the gateway binds onto those folders later (the tenant's data
folder, its metadata) appears inside that sandbox, and in no other: a mount propagates only to
the slaves whose root holds its mount point. Mounted only by the root gateway, and only onto
the folders of one spare, never reused.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from pathlib import Path

from .linux import check, libc

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 2


def mount(source: str | None, target: str, flags: int) -> None:
    check(libc.mount(None if source is None else os.fsencode(source), os.fsencode(target),
                     None, ctypes.c_ulong(flags), None), f"mount {source} on {target}")


def make_shared_point(path: Path) -> None:
    """`path` becomes a mount point with a peer group of its own (nothing else propagates in);
    once: a mount point already is left as it is."""
    if str(path) in mounted_under(path):
        return
    mount(str(path), str(path), MS_BIND)
    mount(None, str(path), MS_PRIVATE)
    mount(None, str(path), MS_SHARED)


def bind(source: Path, target: Path, *, read_only: bool = False) -> None:
    """Bind `source` on `target` (nosuid, nodev; read-only if asked), propagating to slaves.

    The flags are set inside the sandbox too (spare_process.py): a remount here comes after the
    copy has propagated."""
    mount(str(source), str(target), MS_BIND)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (MS_RDONLY if read_only else 0)
    mount(None, str(target), flags)


def release(spare_dir: Path) -> None:
    """Detach every mount under `spare_dir`, then remove the folders and empty files the spare
    layout made (data/, conf/ and what conf/ held). Never deletes a file of a tenant: nothing is
    removed while anything is still mounted there, and only empty files and folders at all."""
    if not spare_dir.is_dir():
        return
    detach(spare_dir)
    conf = spare_dir / "conf"
    if conf.is_dir():
        for entry in conf.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                _rmdir(entry)
            elif entry.is_file() and entry.stat().st_size == 0:
                entry.unlink()
    for folder in (conf, spare_dir / "data", spare_dir / "run", spare_dir):
        _rmdir(folder)


_MAX_STACKED = 8


def detach(folder: Path) -> None:
    """Detach every mount at or under `folder` from the host, keeping the folders.

    A sandbox that has made its mounts private keeps its copies (spare_process.confine), so
    a tenant's data folder is bound on the host only from its handoff until its process
    answers: nothing that walks the run folder later (an operator's rm -rf) reaches the
    tenant's files through it."""
    for _ in range(_MAX_STACKED):
        points = mounted_under(folder)
        if not points:
            return
        for point in points:
            libc.umount2(os.fsencode(point), MNT_DETACH)
    raise OSError(errno.EBUSY, f"{folder}: mounts remain after {_MAX_STACKED} detaches")


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):  # missing, or not empty: not ours to delete
        path.rmdir()


def mounted_under(folder: Path) -> list[str]:
    """Mount points at or under `folder`, deepest first (from /proc/self/mountinfo)."""
    prefix = str(folder)
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)
