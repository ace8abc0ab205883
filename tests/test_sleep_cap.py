"""The cap on awake tenants (supervisor.max_awake_tenants): a wake beyond it puts the least
recently used idle tenant to sleep first.

Real gateway, real sandboxed Datasette. idle_stop_s is long (IDLE_S): every sleep seen here is
the cap's, never an idle one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import RunningGateway, Site, assert_gone, wait_until
from .test_auth import FAST_HASHING
from .test_upload import Uploader, add_user

IDLE_S = 600
ITEMS = "/data/items.json?_shape=array&_size=1"


def _events(gateway: RunningGateway, name: str) -> list[dict[str, Any]]:
    return [e for e in list(gateway.events) if e.get("event") == name]


def _cap_sleeps(gateway: RunningGateway) -> list[tuple[str, str]]:
    """(tenant, tenant woken) of each tenant_sleeping the cap caused."""
    return [(e["tenant"], e.get("waking", "")) for e in _events(gateway, "tenant_sleeping")
            if e["reason"] == "cap"]


def _states(gateway: RunningGateway) -> dict[str, str]:
    return {t["name"]: t["state"] for t in gateway.status()["tenants"]}


def _answered(gateway: RunningGateway, tenant: str) -> None:
    response = gateway.get(tenant, ITEMS)
    assert (response.status_code, response.json()) == (200, [{"id": 1, "name": "item 1"}])


def _start(site: Site, start_gateway: Any, cap: int, sleepers: tuple[str, ...],
           never: tuple[str, ...] = ()) -> RunningGateway:
    site.write_config(supervisor={"max_awake_tenants": cap})
    for name in sleepers:
        site.add_tenant(name, settings=f"idle_stop_s = {IDLE_S}\n")
    for name in never:
        site.add_tenant(name)  # idle_stop_s = 0: never sleeps
    gateway: RunningGateway = start_gateway()
    gateway.wait_running(*never)
    return gateway


def test_a_wake_beyond_the_cap_puts_the_least_recently_used_to_sleep(
        site: Site, start_gateway: Any) -> None:
    """Cap 2; ann, bob and cat may sleep, dan never does (and is the least recently used of
    all, never asked). 1. ann then bob wake: both awake beside dan (dan does not count).
    2. cat wakes: ann, the least recently used sleeper, is put to sleep ("cap", for cat), her
    process gone; status, the apex, /-/health and the metrics show her asleep. 3. ann wakes
    again: bob goes to sleep. Every request is answered 200; dan keeps his process; the cap
    was never exceeded."""
    gateway = _start(site, start_gateway, 2, ("ann", "bob", "cat"), never=("dan",))
    dan = gateway.tenant("dan")["pid"]
    _answered(gateway, "ann")
    _answered(gateway, "bob")
    assert _states(gateway) == {"ann": "running", "bob": "running", "cat": "sleeping",
                                "dan": "running"}
    assert _cap_sleeps(gateway) == []
    ann = gateway.tenant("ann")["pid"]

    _answered(gateway, "cat")
    slept = gateway.wait_for_event("tenant_sleeping", tenant="ann")
    assert (slept["reason"], slept["waking"]) == ("cap", "cat")
    assert_gone({ann})
    assert _states(gateway) == {"ann": "sleeping", "bob": "running", "cat": "running",
                                "dan": "running"}
    assert gateway.tenant("ann")["pid"] is None
    home = gateway.get(None, "/").text
    assert home.count("asleep: wakes at the first visit") == 1
    assert gateway.get(None, "/-/health").json()["tenants"] == {"running": 3, "sleeping": 1}
    metrics = httpx.get(f"http://{gateway.wait_for_event('gateway_listening')['metrics']}"
                        "/metrics").text
    assert 'gateway_tenant_state{state="sleeping",tenant="ann"} 1' in metrics

    _answered(gateway, "ann")
    gateway.wait_for_event("tenant_sleeping", tenant="bob")
    wait_until(lambda: len(_events(gateway, "tenant_woke")) == 4, 20, message="4 wakes logged")
    assert _cap_sleeps(gateway) == [("ann", "cat"), ("bob", "ann")]
    assert _states(gateway) == {"ann": "running", "bob": "sleeping", "cat": "running",
                                "dan": "running"}
    assert gateway.tenant("dan")["pid"] == dan
    assert [e["tenant"] for e in _events(gateway, "tenant_woke")] == ["ann", "bob", "cat", "ann"]
    assert _events(gateway, "awake_cap_exceeded") == []


@pytest.fixture
def go_on() -> Iterator[threading.Event]:
    """Lets a held request go on; set at the end whatever happens (its thread then ends)."""
    event = threading.Event()
    yield event
    event.set()


def test_a_busy_tenant_is_not_put_to_sleep(
        site: Site, start_gateway: Any, go_on: threading.Event) -> None:
    """Cap 1; ann and bob may sleep. 1. ann has a request in flight (its body held back). 2.
    bob wakes: answered 200, ann keeps her process (same pid, no tenant_sleeping), and
    awake_cap_exceeded is logged. 3. ann's request finishes. 4. cat wakes: bob and ann, both
    idle now, are put to sleep for her, least recently used first; awake_cap_exceeded was
    logged once in all."""
    gateway = _start(site, start_gateway, 1, ("ann", "bob", "cat"))
    _answered(gateway, "ann")
    ann = gateway.tenant("ann")["pid"]
    answers: list[httpx.Response] = []

    def body() -> Iterator[bytes]:
        yield b"a=1"
        go_on.wait(60)
        yield b"&b=2"

    def post() -> None:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            answers.append(client.post("/data", content=body(), headers={
                "host": gateway.host("ann"), "content-type": "application/x-www-form-urlencoded"}))

    poster = threading.Thread(target=post)
    poster.start()
    wait_until(lambda: gateway.tenant("ann")["in_flight"] == 1, 30,
               message="ann's request in flight")

    _answered(gateway, "bob")
    exceeded = gateway.wait_for_event("awake_cap_exceeded")
    assert {k: exceeded[k] for k in ("tenant", "awake", "cap", "over")} == {
        "tenant": "bob", "awake": 2, "cap": 1, "over": 1}
    assert _cap_sleeps(gateway) == []
    assert gateway.tenant("ann")["pid"] == ann
    assert _states(gateway) == {"ann": "running", "bob": "running", "cat": "sleeping"}

    go_on.set()
    poster.join(60)
    assert [a.status_code for a in answers] == [405]  # Datasette: a database page takes no POST

    _answered(gateway, "cat")
    wait_until(lambda: len(_cap_sleeps(gateway)) == 2, 20, message="ann and bob asleep")
    # bob first: ann's request, which ended after bob's, made her the more recently used.
    assert _cap_sleeps(gateway) == [("bob", "cat"), ("ann", "cat")]
    assert _states(gateway) == {"ann": "sleeping", "bob": "sleeping", "cat": "running"}
    assert len(_events(gateway, "awake_cap_exceeded")) == 1


def test_an_upload_in_flight_keeps_its_tenant_awake(
        site: Site, start_gateway: Any, go_on: threading.Event) -> None:
    """Cap 1; ann and bob may sleep. 1. A member's upload to ann has sent the start of its
    form (the gateway holds it, no request is at ann's Datasette). 2. bob wakes: answered
    200, ann keeps her process, awake_cap_exceeded is logged. 3. The rest of the form comes:
    the upload is answered 200 and its rows are in ann's database."""
    site.write_config(auth=FAST_HASHING)
    gateway = _start(site, start_gateway, 1, ("ann", "bob"))
    uploader = Uploader(gateway, add_user(gateway, "ann@example.com", "ann"), "ann")
    _answered(gateway, "ann")
    ann = gateway.tenant("ann")["pid"]
    time.sleep(0.5)  # ann idle: her idle_s shows when the upload's lease is taken (0.0)
    assert gateway.tenant("ann")["idle_s"] > 0
    answers: list[httpx.Response] = []

    def form() -> Iterator[bytes]:
        yield (b'--b\r\ncontent-disposition: form-data; name="table"\r\n\r\nheld\r\n'
               b'--b\r\ncontent-disposition: form-data; name="file"; filename="held.csv"\r\n'
               b"content-type: text/csv\r\n\r\nn,word\r\n")
        go_on.wait(60)
        yield b"1,one\r\n2,two\r\n\r\n--b--\r\n"

    def upload() -> None:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            answers.append(client.post("/-/upload", content=form(), headers={
                **uploader.headers, "content-type": "multipart/form-data; boundary=b"}))

    uploading = threading.Thread(target=upload)
    uploading.start()
    wait_until(lambda: gateway.tenant("ann")["idle_s"] == 0.0, 30, message="the upload's lease")
    assert gateway.tenant("ann")["in_flight"] == 0

    _answered(gateway, "bob")
    exceeded = gateway.wait_for_event("awake_cap_exceeded")
    assert (exceeded["tenant"], exceeded["over"]) == ("bob", 1)
    assert _cap_sleeps(gateway) == []
    assert gateway.tenant("ann")["pid"] == ann

    go_on.set()
    uploading.join(60)
    assert [(a.status_code, a.json()["rows"]) for a in answers] == [(200, 2)]
    assert uploader.rows("data", "held") == [{"rowid": 1, "n": 1, "word": "one"},
                                             {"rowid": 2, "n": 2, "word": "two"}]


def test_a_reload_applies_a_lower_cap(site: Site, start_gateway: Any) -> None:
    """No cap: ann, bob and cat wake. A reload sets the cap to 1: ann and bob, the least
    recently used, are put to sleep at once (no tenant woke for it); cat serves on."""
    gateway = _start(site, start_gateway, 0, ("ann", "bob", "cat"))
    for name in ("ann", "bob", "cat"):
        _answered(gateway, name)
    assert gateway.status()["sleep"] == {"awake": 3, "cap": 0}
    cat = gateway.tenant("cat")["pid"]
    site.write_config(supervisor={"max_awake_tenants": 1})
    gateway.cli("reload")
    gateway.wait_for_event("reload_done")
    assert _cap_sleeps(gateway) == [("ann", ""), ("bob", "")]
    assert _states(gateway) == {"ann": "sleeping", "bob": "sleeping", "cat": "running"}
    assert gateway.status()["sleep"] == {"awake": 1, "cap": 1}
    assert "sleep      1 awake that may sleep (max_awake_tenants 1), 2 sleeping" in \
        gateway.cli("status").stdout
    assert gateway.tenant("cat")["pid"] == cat
    _answered(gateway, "bob")
    gateway.wait_for_event("tenant_sleeping", tenant="cat")
    assert _cap_sleeps(gateway)[-1] == ("cat", "bob")


def test_wakes_at_once_under_the_cap_are_all_answered(site: Site, start_gateway: Any) -> None:
    """Cap 1; four sleepers woken together, three requests each: every request is answered
    200 by its tenant, however the wakes interleave and put each other to sleep; nothing is
    logged at error level."""
    names = ("ann", "bob", "cat", "dan")
    gateway = _start(site, start_gateway, 1, names)
    barrier = threading.Barrier(len(names))
    results: list[tuple[str, int]] = []

    def visit(name: str) -> None:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            barrier.wait()
            for _ in range(3):
                response = client.get(ITEMS, headers={"host": gateway.host(name)})
                results.append((name, response.status_code))

    threads = [threading.Thread(target=visit, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert sorted(results) == sorted((name, 200) for name in names for _ in range(3))
    assert [e for e in list(gateway.events) if e.get("level") in ("error", "critical")] == []
