"""Bodies stream through the gateway both ways: its memory stays flat on huge transfers."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import RunningGateway, Site

SINK_PLUGIN = '''
from datasette import hookimpl
from datasette.utils.asgi import Response


@hookimpl
def register_routes():
    async def sink(request):
        total, more = 0, True
        while more:
            message = await request.receive()
            total += len(message.get("body", b""))
            more = message.get("more_body", False)
        return Response.json({"bytes": total})

    return [(r"^/-/sink$", sink)]


@hookimpl
def skip_csrf(scope):
    return scope["path"] == "/-/sink"
'''

ROWS = 1_000_000


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class RssSampler:
    """Samples a process's resident memory in the background; `peak_growth_mb` after stop."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = rss_kb(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_kb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.peak - self.baseline) / 1024


@pytest.fixture
def gateway(site: Site, start_gateway) -> RunningGateway:  # type: ignore[no-untyped-def]
    alice = site.add_tenant("alice", tables={})
    make_big_table(alice / "data" / "big.db")
    (alice / "plugins").mkdir()
    (alice / "plugins" / "sink.py").write_text(SINK_PLUGIN)
    gateway = start_gateway()
    gateway.wait_running("alice")
    gateway.get("alice", "/big/rows.json?_size=1")  # warm up: pools, caches
    return gateway


def make_big_table(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "create table rows as with recursive c(x) as (select 1 union all select x + 1 from c"
            f" where x < {ROWS}) select x as id, 'row number ' || x as name, x * 1.5 as value"
            " from c"
        )
    db.close()


@pytest.mark.slow
def test_a_million_row_csv_export_streams_with_flat_memory(gateway: RunningGateway) -> None:
    """`?_stream=on` of a 1M-row table: every row arrives; the gateway's RSS grows < 20 MB."""
    sampler = RssSampler(gateway.worker_pid)
    lines = 0
    size = 0
    with gateway.client.stream("GET", "/big/rows.csv?_stream=on&_size=max",
                               headers={"host": "alice.gw.test"}, timeout=300) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            lines += chunk.count(b"\n")
            size += len(chunk)
    growth = sampler.stop()
    assert lines == ROWS + 1  # the header and every row
    assert size > 25_000_000
    assert growth < 20, f"gateway RSS grew by {growth:.1f} MB"


def test_a_large_request_body_streams_with_flat_memory(gateway: RunningGateway) -> None:
    """200 MB posted through the gateway (beyond the replay buffer) arrives whole."""
    chunk = b"x" * (1024 * 1024)

    def body() -> Iterator[bytes]:
        for _ in range(200):
            yield chunk

    sampler = RssSampler(gateway.worker_pid)
    response = gateway.request("POST", "alice", "/-/sink", content=body(), timeout=300)
    growth = sampler.stop()
    assert response.status_code == 200, response.text
    assert response.json() == {"bytes": 200 * 1024 * 1024}
    assert growth < 20, f"gateway RSS grew by {growth:.1f} MB"
