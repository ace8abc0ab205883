"""A spare tenant process: Python with Datasette imported, in a sandbox, waiting for a tenant.

    python -m gateway.spare_process --lifeline-fd 3 --handoff-fd 4 --ready-fd 5

Started by spares.py as root inside bubblewrap (own mount, PID, network, IPC, UTS and cgroup
namespaces; a filesystem of /usr, the venv and the gateway package read-only, empty /data and
/conf, its socket folder, a private /tmp), before any tenant needs it. It imports what a tenant
process imports (~0.2 s of CPU, the bulk of a start), then blocks on the handoff pipe. The
gateway binds one tenant's data folder (and metadata, plugins) onto /data and /conf from the
host and writes one JSON line: the tenant's uid, rlimits, secret and Datasette arguments. This
process then, before any of the tenant's files or settings are read:

1. remounts /data nosuid,nodev and /conf (and what it holds) read-only, and makes every mount
   private (nothing the host mounts later reaches it);
2. sets the tenant's rlimits, clears its groups, drops the capability bounding set, takes the
   tenant's uid/gid (which empties the other sets but the inheritable one, emptied next) and
   sets no-new-privs: what
   `setpriv --reuid --regid --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs`
   gives a cold start;
3. runs as tenant_process.py does (WAL, Datasette).

One handoff per process: it serves that tenant until it exits; end of file on either pipe ends it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import importlib
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

from . import tenant_process
from .linux import PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, libc, prctl
from .mounts import MS_BIND, MS_NODEV, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT, mount

SPARE_NICE = 10
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_RLIMITS = {"as": resource.RLIMIT_AS, "nofile": resource.RLIMIT_NOFILE,
            "nproc": resource.RLIMIT_NPROC, "core": resource.RLIMIT_CORE}


# Everything a tenant process imports up to its first pages (found by diffing sys.modules).
_PRELOAD = ("uvicorn", "uvicorn.loops.auto", "uvicorn.loops.uvloop", "uvicorn.lifespan.on",
            "uvicorn.protocols.http.auto", "uvicorn.protocols.http.httptools_impl",
            "encodings.unicode_escape", "datasette.app", "datasette.cli",
            "gateway.datasette_plugin")


def preload() -> None:
    """Import what run_datasette imports (the cost a spare takes off a wake)."""
    tenant_process.defer_unit_registry()
    tenant_process.import_on_first_use("httpx")
    for name in _PRELOAD:
        importlib.import_module(name)


def read_handoff(fd: int) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            os._exit(0)  # the gateway let go of this spare
        data += chunk
    os.close(fd)
    handoff: dict[str, Any] = json.loads(data)
    return handoff


def confine(handoff: dict[str, Any]) -> None:
    """Steps 1 and 2 of the module docstring. Any failure ends the process (os._exit)."""
    mount(None, "/data", MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    mount(None, "/conf", MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for path in handoff["read_only"]:
        mount(None, path, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    mount(None, "/", MS_REC | MS_PRIVATE)
    for name, limit in handoff["rlimits"].items():
        resource.setrlimit(_RLIMITS[name], (limit, limit))
    uid = int(handoff["uid"])
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        prctl(PR_CAPBSET_DROP, cap, f"drop capability {cap}")
    os.setresuid(uid, uid, uid)  # clears the permitted, effective and ambient capabilities
    _clear_inheritable()
    prctl(PR_SET_NO_NEW_PRIVS, 1, "set no-new-privs")
    if os.getuid() != uid or os.geteuid() != uid or os.getgroups():
        raise OSError("the tenant's user was not taken")
    os.environ["DATASETTE_SECRET"] = handoff["secret"]
    os.chdir("/data")


def _clear_inheritable() -> None:
    """capset(2) with every set empty: the inheritable set survives setresuid."""
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two of {effective, permitted, inheritable}
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "cannot clear the inheritable capabilities")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway.spare_process")
    parser.add_argument("--lifeline-fd", type=int, required=True)
    parser.add_argument("--handoff-fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    args = parser.parse_args(argv)
    tenant_process.watch_lifeline(args.lifeline_fd)
    # Its imports are background work: wakes, and the tenants serving, come first. The gateway
    # gives it the usual priority back when it hands it a tenant (spares.hand_over).
    os.nice(SPARE_NICE)
    # Running means bubblewrap has made the sandbox: the gateway may now rename its folders.
    os.write(args.ready_fd, b"1")
    preload()
    with contextlib.suppress(OSError):  # "2": loaded (the pool starts the next spare)
        os.write(args.ready_fd, b"2")
    os.close(args.ready_fd)
    serve_handoff(args.handoff_fd)


def serve_handoff(handoff_fd: int) -> None:
    """Wait for the handoff, then steps 1-3 (a forked spare, zygote.py, joins here too)."""
    handoff = read_handoff(handoff_fd)
    try:
        confine(handoff)
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"tenant_start_failed: cannot confine the spare: {exc}\n")
        os._exit(1)
    tenant_process.serve([Path(path) for path in handoff["wal"]], handoff["datasette_args"])


if __name__ == "__main__":
    main()
