"""The first code a tenant process runs, as the tenant's user, inside its sandbox.

    python -m gateway.tenant_process --lifeline-fd 3 --wal /data/a.db -- serve /data/a.db ...

1. Watches the lifeline: the read end of a pipe whose write end only gateways hold. When the
   last gateway holding it is gone (even killed with SIGKILL), the read returns EOF and this
   process exits at once, so no tenant outlives the gateway. An upgrading gateway hands the
   write end to its successor, so tenants survive the hand-over.
2. Puts the tenant's databases in WAL mode (the tenant owns them, so the tenant does it), so
   that uploads writing to a database do not block Datasette's readers.
3. Runs `datasette` in this same process, with the gateway's plugin (datasette_plugin.py).

It must stay light: it is imported on every tenant start.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sqlite3
import sys
import threading
import types
from pathlib import Path
from typing import Any


def watch_lifeline(fd: int) -> None:
    def wait_for_eof() -> None:
        try:
            while os.read(fd, 1):
                pass
        finally:
            # os._exit, not a signal: as PID 1 of its namespace this process ignores signals it
            # has no handler for, SIGKILL from inside included.
            os._exit(70)

    threading.Thread(target=wait_for_eof, name="lifeline", daemon=True).start()


def enable_wal(paths: list[Path]) -> None:
    for path in paths:
        connection = sqlite3.connect(path)
        try:
            mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway.tenant_process")
    parser.add_argument("--lifeline-fd", type=int, required=True)
    parser.add_argument("--wal", type=Path, action="append", default=[])
    parser.add_argument("datasette_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    watch_lifeline(args.lifeline_fd)
    datasette_args = args.datasette_args
    if datasette_args[:1] == ["--"]:
        datasette_args = datasette_args[1:]
    serve(args.wal, datasette_args)


def serve(wal: list[Path], datasette_args: list[str]) -> None:
    """Steps 2 and 3 of the module docstring (spare_process.py joins here too)."""
    try:
        enable_wal(wal)
    except sqlite3.DatabaseError as exc:
        sys.stderr.write(f"tenant_start_failed: cannot open a database: {exc}\n")
        sys.exit(1)
    run_datasette(datasette_args)


def run_datasette(args: list[str]) -> None:
    """Datasette's own command line, with the gateway's plugin (datasette_plugin.py) and
    without uvicorn's access log or WebSockets.

    The gateway writes the access log. Datasette's uvicorn would print a line per request too,
    which the gateway reads from this process's output and logs again as an event: that cost
    both processes CPU on every request (bench/proxy). `datasette serve` has no option for it.
    """
    import uvicorn

    defer_unit_registry()
    import_on_first_use("httpx")  # only Datasette's internal client (datasette.client) uses it
    from datasette.cli import cli
    from datasette.plugins import pm

    from . import datasette_plugin

    pm.register(datasette_plugin, name="gateway")
    # ws="none": the gateway refuses WebSockets (http_protocol.py), and uvicorn's "auto" imports
    # the websockets package as it starts (~10 ms of CPU at every start, a third of a forked
    # spare's; bench/wake).
    uvicorn.run = functools.partial(uvicorn.run, access_log=False, ws="none")
    cli.main(args, prog_name="datasette")


def defer_unit_registry() -> None:
    """Datasette imports pint and builds its unit registry as it is imported
    (datasette/views/base.py: `ureg = pint.UnitRegistry()`, its only use of pint): ~0.25 s of
    CPU, over a third of a tenant's start, for the rare table whose metadata declares units.
    Datasette gets a registry that imports pint and is built the first time it is used."""
    real_name = "datasette.vendored.pint"
    stand_in = types.ModuleType(real_name)

    class LazyUnitRegistry:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._made: Any = None
            self._arguments = (args, kwargs)

        def _registry(self) -> Any:
            if self._made is None:
                if sys.modules.get(real_name) is stand_in:
                    del sys.modules[real_name]
                args, kwargs = self._arguments
                self._made = importlib.import_module(real_name).UnitRegistry(*args, **kwargs)
            return self._made

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return self._registry()(*args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._registry(), name)

    stand_in.UnitRegistry = LazyUnitRegistry  # type: ignore[attr-defined]
    sys.modules[real_name] = stand_in
    try:
        importlib.import_module("datasette.views.base")  # makes its `ureg` now
    finally:
        if sys.modules.get(real_name) is stand_in:
            del sys.modules[real_name]


def import_on_first_use(name: str) -> None:
    """Put a stand-in for module `name` in sys.modules: the real module is imported the first
    time one of its attributes is read (httpx: ~70 ms of CPU at every start, for Datasette's
    internal client, which only plugins use)."""
    if name in sys.modules:
        return
    stand_in = types.ModuleType(name)

    def load(attribute: str) -> Any:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        real = importlib.import_module(name)
        stand_in.__dict__.update(real.__dict__)  # later reads find the real attributes
        return getattr(real, attribute)

    stand_in.__getattr__ = load  # type: ignore[method-assign]
    sys.modules[name] = stand_in


if __name__ == "__main__":
    main()
