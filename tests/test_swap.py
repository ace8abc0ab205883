"""Hot swaps lose no request: blue/green replacement, retries, crash recovery under load."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from .conftest import RunningGateway, Site, wait_until

RECORDER_PLUGIN = '''
import asyncio
import os

from datasette import hookimpl
from datasette.utils.asgi import Response


@hookimpl
def register_routes():
    async def record(request):
        body = await request.post_body()
        with open("writes.log", "ab") as f:  # the tenant's data folder is its working directory
            f.write(body + b"\\n")
        await asyncio.sleep(float(request.args.get("sleep", "0")))
        return Response.json({"written": body.decode()})

    return [(r"^/-/record$", record)]


@hookimpl
def skip_csrf(scope):
    return scope["path"] == "/-/record"
'''


class Load:
    """Threads sending GETs in a loop (each with its own keep-alive connection)."""

    def __init__(self, gateway: RunningGateway, path: str, threads: int = 8) -> None:
        self.gateway = gateway
        self.path = path
        self.results: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        wait_until(lambda: self.results["ok"] > 20, message="load running")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        with httpx.Client(base_url=self.gateway.url, timeout=30,
                          headers={"host": self.gateway.host("alice")}) as client:
            while not self._stop.is_set():
                try:
                    response = client.get(self.path)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code == 200:
                    self.results["ok"] += 1
                else:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")


@pytest.fixture
def gateway(site: Site, start_gateway) -> Iterator[RunningGateway]:  # type: ignore[no-untyped-def]
    alice = site.add_tenant("alice")
    (alice / "plugins").mkdir()
    (alice / "plugins" / "recorder.py").write_text(RECORDER_PLUGIN)
    site.write_config(proxy={"drain_timeout_s": 10.0})
    gateway = start_gateway()
    gateway.wait_running("alice")
    yield gateway


def test_restarts_under_load_lose_no_request(gateway: RunningGateway) -> None:
    """1. 8 clients loop on GETs. 2. Restart the tenant 4 times. 3. Not one request failed."""
    generations = {gateway.tenant("alice")["generation"]}
    with Load(gateway, "/data/items.json?_size=5") as load:
        for _ in range(4):
            gateway.cli("tenant", "restart", "alice")
            generations.add(gateway.tenant("alice")["generation"])
            time.sleep(0.2)
    assert load.failures == []
    assert load.results["ok"] > 100
    assert len(generations) == 5
    for event in gateway.events:
        if event.get("event") == "tenant_drain_timeout":
            raise AssertionError(f"an old process did not drain: {event}")


def test_restarting_one_tenant_does_not_hold_up_another(
    site: Site, gateway: RunningGateway
) -> None:
    """Starting a process walks and chowns the tenant's folder and forks: that work runs off
    the event loop. 1. bob has 5,000 files in its data folder. 2. 8 clients loop on alice while
    bob is restarted 5 times. 3. Every request to alice got its 200, from the same process."""
    bob = site.add_tenant("bob")
    for index in range(5000):
        (bob / "data" / f"note-{index}.txt").write_text("x")
    gateway.cli("reload")
    gateway.wait_running("bob")
    alice_pid = gateway.tenant("alice")["pid"]
    generations = {gateway.tenant("bob")["generation"]}
    with Load(gateway, "/data/items.json?_size=5") as load:
        for _ in range(5):
            gateway.cli("tenant", "restart", "bob")
            generations.add(gateway.tenant("bob")["generation"])
        served = load.results["ok"]
        wait_until(lambda: load.results["ok"] > served, message="alice still served")
    assert load.failures == []
    assert len(generations) == 6
    assert gateway.tenant("alice")["pid"] == alice_pid


def test_unhealthy_replacement_leaves_the_old_process_serving(
    site: Site, gateway: RunningGateway
) -> None:
    """A new process that cannot start (a broken database) never gets traffic; the error is
    reported and the old process keeps serving."""
    before = gateway.tenant("alice")
    (site.tenants_dir / "alice" / "data" / "broken.db").write_bytes(b"not sqlite" * 200)
    with Load(gateway, "/data/items.json?_size=5") as load:
        result = gateway.cli("tenant", "restart", "alice", check=False)
    assert result.returncode == 1
    assert "alice" in result.stderr and "exited with status 1" in result.stderr
    assert load.failures == []
    after = gateway.tenant("alice")
    assert after["pid"] == before["pid"]
    assert after["state"] == "running"
    assert gateway.get("alice", "/data/items.json").status_code == 200


def test_kill_9_under_load_loses_no_get(gateway: RunningGateway) -> None:
    """kill -9 of the tenant under load: GETs wait and are served by the restarted process."""
    with Load(gateway, "/data/items.json?_size=5") as load:
        os.kill(gateway.tenant("alice")["pid"], signal.SIGKILL)
        wait_until(lambda: gateway.tenant("alice")["restarts"] == 1
                   and gateway.tenant("alice")["state"] == "running", 30)
        served = load.results["ok"]
        wait_until(lambda: load.results["ok"] > served + 50, message="load served again")
    assert load.failures == []


def test_post_whose_backend_dies_is_not_replayed(site: Site, gateway: RunningGateway) -> None:
    """1. POST to a handler that records the write, then sleeps. 2. kill -9 the tenant while
    it sleeps. 3. The client gets 502, and the write happened exactly once."""
    result: dict[str, httpx.Response] = {}

    def post() -> None:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            result["r"] = client.post("/-/record?sleep=5", content=b"once", headers={
                "host": gateway.host("alice"), "accept": "application/json"})

    thread = threading.Thread(target=post)
    thread.start()
    log = site.tenants_dir / "alice" / "data" / "writes.log"
    wait_until(lambda: log.exists() and log.read_bytes() == b"once\n", message="write recorded")
    os.kill(gateway.tenant("alice")["pid"], signal.SIGKILL)
    thread.join(30)
    assert result["r"].status_code == 502
    assert result["r"].json()["tenant"] == "alice"
    gateway.wait_running("alice")
    time.sleep(0.5)
    assert log.read_bytes() == b"once\n"


def test_post_waits_for_a_restarting_backend(site: Site, gateway: RunningGateway) -> None:
    """A POST sent while the tenant restarts after a crash (nothing to send it to yet) is
    delivered once it is back, within the retry budget."""
    os.kill(gateway.tenant("alice")["pid"], signal.SIGKILL)
    wait_until(lambda: gateway.tenant("alice")["state"] == "restarting")
    response = gateway.request("POST", "alice", "/-/record", content=b"later")
    assert response.status_code == 200
    assert response.json() == {"written": "later"}
    log = site.tenants_dir / "alice" / "data" / "writes.log"
    assert log.read_bytes() == b"later\n"
