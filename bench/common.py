"""What every benchmark here needs: the processes it starts, free ports, waiting for a state.

The benchmarks run as scripts (`python bench/NAME.py`), so they import this as `common`.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Processes:
    """Everything a run starts, each in a session of its own; all stopped on the way out."""

    def __init__(self) -> None:
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, argv: list[str], log: Path | None = None, *, name: str = "",
              errors: Path | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start `argv` with its output appended to `log` (nowhere if None), its stderr to
        `errors` if given; `name` is how check_alive speaks of it."""
        with contextlib.ExitStack() as files:
            output: Any = files.enter_context(open(log, "ab")) if log else subprocess.DEVNULL
            error_output: Any = (files.enter_context(open(errors, "ab")) if errors
                                 else subprocess.STDOUT if log else subprocess.DEVNULL)
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=error_output, start_new_session=True, **kwargs)
        self.started[f"{name or argv[0]} #{len(self.started)}"] = process
        return process

    def check_alive(self) -> None:
        """The machine is shared: say so if something stopped one of ours mid-run."""
        for name, process in self.started.items():
            if process.poll() is not None:
                raise SystemExit(f"bench: {name} (pid {process.pid}) exited with status"
                                 f" {process.returncode} during the run; figures discarded")

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        running = [p for p in reversed(self.started.values()) if p.poll() is None]
        for process in running:
            process.terminate()
        for process in running:
            self.stop(process)


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 60.0,
               interval: float = 0.01) -> Any:
    """Poll `predicate` until it returns something truthy (an OSError, ValueError or KeyError
    it raises counts as "not yet"); end the run if `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            result = predicate()
            if result:
                return result
        time.sleep(interval)
    raise SystemExit(f"bench: timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
