"""One tenant process's pipes (gateway/process.py), with a real child process."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from gateway.backend_client import BackendAddress
from gateway.backends import Backend
from gateway.process import ProcessHandle, TenantProcess


async def test_a_handle_never_names_a_pipe_its_reader_has_closed(tmp_path: Path) -> None:
    """The status pipe ends while the process lives on (a forked tenant whose zygote ended at
    an upgrade): the handle, which a next upgrade sends to the new worker, names no status
    pipe any more (its number may be another file's by then), and the process is still handed
    over with its lifeline and output."""
    lifeline_read, lifeline_write = os.pipe()
    output_read, output_write = os.pipe()
    status_read, status_write = os.pipe()
    child = subprocess.Popen(["sleep", "30"], stdout=output_write, stdin=lifeline_read)
    for fd in (lifeline_read, output_write):
        os.close(fd)
    handle = ProcessHandle(tenant="alice", generation=1, pid=child.pid, signal_pid=child.pid,
                           lifeline_fd=lifeline_write, output_fd=output_read,
                           status_fd=status_read, run_dir=tmp_path / "run", uid=None)
    process = TenantProcess(handle, Backend(BackendAddress(path=str(tmp_path / "ds.sock")),
                                            generation=1, connect_timeout=1.0), child)
    try:
        os.write(status_write, b'{"child-pid": %d}\n' % child.pid)
        os.close(status_write)
        assert await asyncio.wait_for(process.child_pid, 5) == child.pid
        for _ in range(100):
            if handle.status_fd < 0:
                break
            await asyncio.sleep(0.01)
        assert handle.status_fd == -1
        assert handle.output_fd == output_read and not process.exited.done()
        os.fstat(handle.output_fd)  # still ours, open
    finally:
        await process.stop(0)
    assert process.exited.done() and handle.output_fd == -1
