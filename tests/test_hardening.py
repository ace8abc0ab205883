"""Hostile clients (issue 12) against a real gateway and a real Datasette, at small scale.

The gateway here has 4 slots per tenant and 1 s timeouts, so each attack needs only a handful
of sockets: slow readers, stalled request bodies, idle and slowloris connections, big heads.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from .conftest import RunningGateway, Site, wait_until

# 8 MB: more than the kernel's socket buffers absorb on loopback (tcp_wmem's 4 MB)
BIG_ANSWER = "/data.json?sql=select+printf(%27%25.*c%27,8000000,%27x%27)"
LIMITS = {"head_timeout_s": 1.0, "body_timeout_s": 1.0, "send_timeout_s": 1.0,
          "keepalive_timeout_s": 1.0, "max_head_bytes": 8192}


def start(site: Site, start_gateway, **proxy: object) -> RunningGateway:  # type: ignore[no-untyped-def]
    site.add_tenant("alice")
    site.write_config(proxy={"max_connections_per_tenant": 4, **proxy}, limits=LIMITS)
    gateway = start_gateway()
    gateway.wait_running("alice")
    return gateway


@pytest.fixture
def gateway(site: Site, start_gateway) -> RunningGateway:  # type: ignore[no-untyped-def]
    return start(site, start_gateway)


def connect(gateway: RunningGateway, *, receive_buffer: int = 0) -> socket.socket:
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", gateway.port))
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the gateway sends until it closes the connection (reset counts as closed)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def normal_request(gateway: RunningGateway) -> httpx.Response:
    """What a normal visitor asks meanwhile (10 s: far longer than it needs, not a timing)."""
    return gateway.get("alice", "/-/versions.json", timeout=10)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.mark.slow
@pytest.mark.parametrize("buffer_total", [64 * 1024 * 1024, 0], ids=["buffered", "streamed"])
def test_slow_readers_do_not_take_the_tenants_slots(
    site: Site, start_gateway, sockets: list[socket.socket], buffer_total: int  # type: ignore[no-untyped-def]
) -> None:
    """1. Six clients with a 4 KB receive buffer ask for an 8 MB answer and never read (more
    than the 4 slots), the answers buffered whole, or (no buffer room) streamed.
    2. A normal request still gets 200. 3. Each slow reader is cut off after send_timeout_s."""
    gateway = start(site, start_gateway, response_buffer_total_bytes=buffer_total)
    for _ in range(6):
        sock = connect(gateway, receive_buffer=4096)
        sock.sendall(f"GET {BIG_ANSWER} HTTP/1.1\r\nHost: alice.gw.test\r\n\r\n".encode())
        sockets.append(sock)
    time.sleep(1.0)  # let the answers start (the attack in place); not a timing assertion
    assert normal_request(gateway).status_code == 200
    wait_until(lambda: [e.get("reason") for e in gateway.events].count("send_timeout") == 6)
    for sock in sockets:
        assert len(read_until_closed(sock)) < 8_000_000
    assert normal_request(gateway).status_code == 200


@pytest.mark.slow
def test_stalled_request_bodies_are_abandoned(
    gateway: RunningGateway, sockets: list[socket.socket]
) -> None:
    """1. Six POSTs announce a 1 MB body (read whole before a slot is taken) and send 10
    bytes. 2. A normal request still gets 200. 3. Each stalled POST gets 408 after
    body_timeout_s."""
    for _ in range(6):
        sock = connect(gateway)
        sock.sendall(b"POST /data HTTP/1.1\r\nHost: alice.gw.test\r\nContent-Length: 1000000\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n\r\nx=12345678")
        sockets.append(sock)
    assert normal_request(gateway).status_code == 200
    for sock in sockets:
        assert read_until_closed(sock) == (
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: 40\r\nconnection: close\r\n\r\n"
            b"The request body did not arrive in time.")


def test_streamed_bodies_take_at_most_half_the_slots(
    site: Site, start_gateway, sockets: list[socket.socket]  # type: ignore[no-untyped-def]
) -> None:
    """1. Four slots; six POSTs announce a 10 MB body (too big to read first: streamed) and
    send 3 bytes, then nothing (body timeout far away). 2. A normal request still gets 200:
    the stalled bodies hold two slots at most."""
    site.add_tenant("alice")
    site.write_config(proxy={"max_connections_per_tenant": 4, "queue_timeout_s": 0.5},
                      limits={"body_timeout_s": 60.0})
    gateway = start_gateway()
    gateway.wait_running("alice")
    for _ in range(6):
        sock = connect(gateway)
        sock.sendall(b"POST /data HTTP/1.1\r\nHost: alice.gw.test\r\n"
                     b"Content-Length: 10000000\r\n\r\nx=1")
        sockets.append(sock)
    time.sleep(1.0)  # let them take what they can; not a timing assertion
    for _ in range(3):
        assert normal_request(gateway).status_code == 200


def test_slots_wait_at_most_queue_timeout(
    site: Site, start_gateway, sockets: list[socket.socket]  # type: ignore[no-untyped-def]
) -> None:
    """1. One slot, taken by a POST whose body (too big to read first: streamed) never comes
    (body timeout far away). 2. The next request waits queue_timeout_s for it, then gets 503
    with Retry-After."""
    site.add_tenant("alice")
    site.write_config(proxy={"max_connections_per_tenant": 1, "queue_timeout_s": 0.5},
                      limits={"body_timeout_s": 60.0})
    gateway = start_gateway()
    gateway.wait_running("alice")
    sock = connect(gateway)
    sockets.append(sock)
    sock.sendall(b"POST /data HTTP/1.1\r\nHost: alice.gw.test\r\nContent-Length: 10000000\r\n"
                 b"\r\nx=1")
    busy = wait_until(lambda: (r := normal_request(gateway)).status_code == 503 and r)
    assert busy.headers["retry-after"] == "5"
    assert busy.json()["message"] == "The site 'alice' is busy; try again in a moment."


def test_idle_and_slowloris_connections_are_closed(
    gateway: RunningGateway, sockets: list[socket.socket]
) -> None:
    """1. 20 connections send nothing; 10 send a request head a line at a time, forever.
    2. Within head_timeout_s (1 s, checked every 0.25 s) the idle ones are closed, and the
    slowloris ones get 408."""
    idle = [connect(gateway) for _ in range(20)]
    slow = [connect(gateway) for _ in range(10)]
    sockets += idle + slow
    for sock in slow:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: alice.gw.test\r\n")
    for line in range(20):  # keep dribbling; the gateway answers and closes meanwhile
        for sock in slow:
            with contextlib.suppress(OSError):
                sock.sendall(b"X-Line-%d: x\r\n" % line)
        time.sleep(0.1)
    for sock in idle:
        assert read_until_closed(sock) == b""
    for sock in slow:
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 Request Timeout\r\n")


def test_big_request_heads_get_431(gateway: RunningGateway, sockets: list[socket.socket]) -> None:
    """1. A head under max_head_bytes (8 KB here) is served. 2. A 1 MB header gets 431 before
    the gateway reads it all. 3. So do many small headers."""
    assert gateway.get("alice", "/-/versions.json",
                       headers={"x-fill": "a" * 7000}).status_code == 200
    expected = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: text/plain; charset=utf-8\r\ncontent-length: 32\r\n"
                b"connection: close\r\n\r\nRequest header fields too large.")
    for head in (b"X-Big: " + b"a" * 1_000_000 + b"\r\n",
                 b"".join(b"X-Small-%d: abcdefgh\r\n" % n for n in range(2000))):
        sock = connect(gateway)
        sockets.append(sock)
        with contextlib.suppress(OSError):  # refused while still sending: the answer waits
            sock.sendall(b"GET / HTTP/1.1\r\nHost: alice.gw.test\r\n" + head + b"\r\n")
        assert read_until_closed(sock) == expected


def test_two_host_headers_get_400(gateway: RunningGateway, sockets: list[socket.socket]) -> None:
    """RFC 9112 3.2: which Host names the site is ambiguous, so neither is used."""
    sock = connect(gateway)
    sockets.append(sock)
    sock.sendall(b"GET /-/versions.json HTTP/1.1\r\nHost: alice.gw.test\r\nHost: evil.example\r\n"
                 b"Accept: application/json\r\nConnection: close\r\n\r\n")
    answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b'"message": "The request has more than one Host header."' in answer


def test_websocket_and_malformed_chunks_get_a_plain_400(
    gateway: RunningGateway, sockets: list[socket.socket]
) -> None:
    """1. A WebSocket upgrade gets a plain 400. 2. So does a malformed chunked body. 3. Each is
    one log line, and no traceback is logged."""
    sock = connect(gateway)
    sockets.append(sock)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: alice.gw.test\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    assert read_until_closed(sock) == (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: 48\r\nconnection: close\r\n\r\n"
        b"This site does not accept WebSocket connections.")
    sock = connect(gateway)
    sockets.append(sock)
    sock.sendall(b"POST /data HTTP/1.1\r\nHost: alice.gw.test\r\nTransfer-Encoding: chunked\r\n"
                 b"\r\n5\r\nx=123\r\nzz\r\nnot a chunk\r\n")
    assert read_until_closed(sock) == (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: 30\r\nconnection: close\r\n\r\nInvalid HTTP request received.")
    gateway.wait_for_event("client_refused", reason="websocket")
    wait_until(lambda: any(e.get("reason", "").startswith("malformed") for e in gateway.events))
    time.sleep(0.5)  # anything the aborted request might still log
    assert [e for e in gateway.events if "exception" in e or e["level"] == "error"] == []


def test_health_names_no_tenant_and_logs_keep_no_codes(
    site: Site, start_gateway  # type: ignore[no-untyped-def]
) -> None:
    """1. A public and a private tenant. 2. The anonymous /-/health counts them, naming
    neither. 3. An invitation link's code does not reach the access log."""
    site.add_tenant("alice")
    site.add_tenant("bob", public=False)
    gateway = start_gateway()
    gateway.wait_running("alice", "bob")
    health = gateway.get(None, "/-/health")
    assert health.json() == {"ok": True, "tenants": {"running": 2}}
    assert "bob" not in health.text and "alice" not in health.text
    code = "k3Jx9-secret_Invite0Code"
    gateway.get(None, f"/-/invite/{code}")
    entry = wait_until(lambda: next((e for e in gateway.access
                                     if e["path"].startswith("/-/invite/")), None))
    assert entry["path"] == "/-/invite/REDACTED"


def test_redact_path() -> None:
    from gateway.logs import redact_path

    assert redact_path("/-/invite/AbCdEfGhIjKlMnOpQrStUv/accept") == "/-/invite/REDACTED/accept"
    assert redact_path("/-/gateway-signin?ticket=abc&next=/x") == (
        "/-/gateway-signin?ticket=REDACTED&next=/x")
    assert redact_path("/-/reset?Token=zz;x=1") == "/-/reset?Token=REDACTED;x=1"
    assert redact_path("/-/versions.json") == "/-/versions.json"
    assert redact_path("/db/a_table_with_a_long_name") == "/db/a_table_with_a_long_name"
