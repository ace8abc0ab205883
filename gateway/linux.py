"""The few Linux calls the standard library lacks, through one handle on libc and one check of
their result: prctl(2) here, and for mounts.py and fork_sandbox.py mount(2), umount2(2),
unshare(2) and setns(2). Nothing else is imported, so the smallest processes (a spare before
its handoff) can use it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38


def check(result: int, what: str) -> None:
    """A libc call's result: OSError (errno, "what: its message") unless it succeeded (0)."""
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def prctl(option: int, value: int, what: str) -> None:
    """prctl(option, value); OSError naming `what` could not be done."""
    check(libc.prctl(option, value, 0, 0, 0), f"prctl: cannot {what}")
