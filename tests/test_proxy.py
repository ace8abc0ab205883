"""The proxy path end to end: a real gateway, real Datasette tenants, real TCP."""

from __future__ import annotations

import json
import os
import socket

import pytest

from .conftest import RunningGateway, Site, wait_until

ECHO_PLUGIN = """
from datasette import hookimpl
from datasette.utils.asgi import Response


@hookimpl
def register_routes():
    async def echo(request):
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]]
        return Response.json({"headers": headers, "url": request.url})

    return [(r"^/-/echo$", echo)]
"""


def add_echo_plugin(directory) -> None:  # type: ignore[no-untyped-def]
    (directory / "plugins").mkdir()
    (directory / "plugins" / "echo.py").write_text(ECHO_PLUGIN)


@pytest.fixture
def gateway(site: Site, start_gateway) -> RunningGateway:  # type: ignore[no-untyped-def]
    add_echo_plugin(site.add_tenant("alice"))
    site.add_tenant("bob", tables={"secrets": [{"id": 1, "word": "bob-only"}]})
    gateway = start_gateway()
    gateway.wait_running("alice", "bob")
    return gateway


def test_tenant_pages_are_served_by_host(gateway: RunningGateway) -> None:
    """1. alice.<domain> serves alice's table. 2. bob.<domain> serves bob's, not alice's."""
    alice = gateway.get("alice", "/data/items.json?_shape=array&_size=2")
    assert alice.status_code == 200
    assert alice.json() == [{"id": 1, "name": "item 1"}, {"id": 2, "name": "item 2"}]
    bob = gateway.get("bob", "/data/secrets.json?_shape=array")
    assert bob.json() == [{"id": 1, "word": "bob-only"}]
    assert gateway.get("bob", "/data/items.json").status_code == 404


def test_host_header_is_normalised(gateway: RunningGateway) -> None:
    for host in ("ALICE.GW.TEST", "alice.gw.test.", "alice.gw.test:8080", "Alice.Gw.Test.:1"):
        response = gateway.client.get("/data/items.json?_shape=array&_size=1",
                                      headers={"host": host})
        assert response.status_code == 200, host
        assert response.json() == [{"id": 1, "name": "item 1"}]


def test_unknown_host_gets_a_404_page(gateway: RunningGateway) -> None:
    html = gateway.client.get("/", headers={"host": "carol.gw.test"})
    assert html.status_code == 404
    assert "There is no site at carol.gw.test." in html.text
    assert html.headers["content-type"] == "text/html; charset=utf-8"
    as_json = gateway.client.get("/", headers={"host": "carol.gw.test",
                                               "accept": "application/json"})
    assert as_json.status_code == 404
    body = as_json.json()
    assert body["error"] == "No such site"
    assert body["message"] == "There is no site at carol.gw.test."
    assert body["request_id"]


@pytest.mark.parametrize("host", ["", "a b", "alice.gw.test@evil", "alice.gw.test:x",
                                  "[::1]", "x.alice.gw.test", "gw.test.evil.com", "evil.com"])
def test_malformed_or_foreign_hosts_get_404(gateway: RunningGateway, host: str) -> None:
    response = gateway.client.get("/", headers={"host": host})
    assert response.status_code == 404


def echoed_headers(gateway: RunningGateway, headers: dict[str, str]) -> list[list[str]]:
    response = gateway.get("alice", "/-/echo", headers=headers)
    assert response.status_code == 200
    return response.json()["headers"]  # type: ignore[no-any-return]


def test_forwarded_headers_are_set_by_the_gateway(gateway: RunningGateway) -> None:
    """Client-supplied X-Forwarded-*, Forwarded and X-Real-IP are replaced, never trusted."""
    seen = echoed_headers(gateway, {
        "x-forwarded-for": "6.6.6.6", "x-forwarded-host": "evil.com",
        "x-forwarded-proto": "https", "forwarded": "for=6.6.6.6", "x-real-ip": "6.6.6.6",
    })
    names = [name for name, _ in seen]
    assert names.count("x-forwarded-for") == 1
    assert dict(seen)["x-forwarded-for"] == "127.0.0.1"
    assert dict(seen)["x-forwarded-proto"] == "http"
    assert dict(seen)["x-forwarded-host"] == "alice.gw.test"
    assert dict(seen)["host"] == "alice.gw.test"
    assert "forwarded" not in names
    assert "x-real-ip" not in names


def test_identity_headers_are_stripped_by_family(gateway: RunningGateway) -> None:
    """Every header an auth proxy or CDN uses to say who the user or client is (issue 12's
    list, and names nobody listed) is dropped; ordinary ones pass."""
    claims = ["x-auth-request-groups", "x-auth-request-access-token", "x-forwarded-groups",
              "x-forwarded-access-token", "x-original-user", "x-remote-email", "x-webauth-user",
              "true-client-ip", "cf-connecting-ip", "x-client-ip", "remote-user",
              "x-gateway-actor", "x-actor", "x-forwarded-anything-new", "x-amzn-oidc-identity",
              "x-ms-client-principal-name", "x-goog-authenticated-user-email", "x-user-id"]
    seen = dict(echoed_headers(gateway, {name: "admin" for name in claims} | {"x-kept": "yes"}))
    assert [name for name in claims if name in seen] == []
    assert seen["x-kept"] == "yes"


def test_gateway_cookies_are_stripped_as_datasette_parses_them(gateway: RunningGateway) -> None:
    """Datasette (http.cookies) splits cookies on whitespace too: `x=1 ds_actor=...` is two
    cookies, so ds_actor must not reach it that way either."""
    seen = dict(echoed_headers(gateway, {
        "cookie": 'x=1 ds_actor=forged y=2; gateway_session=abc; z="q; ds_actor=inside"'}))
    assert seen["cookie"] == 'x=1; y=2; z="q; ds_actor=inside"'


def test_hop_by_hop_headers_are_dropped(gateway: RunningGateway) -> None:
    """Connection, the headers it names, TE, Upgrade and Proxy-Authorization never pass."""
    seen = dict(echoed_headers(gateway, {
        "connection": "keep-alive, x-secret", "x-secret": "1", "te": "trailers",
        "proxy-authorization": "Basic eA==", "keep-alive": "timeout=5", "x-kept": "yes",
    }))
    for name in ("connection", "x-secret", "te", "proxy-authorization", "keep-alive"):
        assert name not in seen
    assert seen["x-kept"] == "yes"


def test_links_use_the_public_host(gateway: RunningGateway) -> None:
    """Datasette builds absolute URLs from the Host it sees: the public one."""
    page = gateway.get("alice", "/data/items.json?_size=5")
    assert page.json()["next_url"].startswith("http://alice.gw.test/data/items.json")


def test_dead_backend_gets_a_plain_502_page_and_an_event(site: Site, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """1. Start alice. 2. Move its socket away. 3. A request gets a 502 page in plain words
    (no socket path, no errno). 4. The reason is in a backend_unavailable event."""
    site.add_tenant("alice")
    site.write_config(proxy={"retry_budget_s": 0.3})
    gateway = start_gateway()
    gateway.wait_running("alice")
    generation = gateway.tenant("alice")["generation"]
    socket_path = site.root / "run" / str(generation) / "ds.sock"
    os.rename(socket_path, str(socket_path) + ".moved")  # requests now find no socket
    response = gateway.get("alice", "/", headers={"accept": "text/html"})
    assert response.status_code == 502
    assert "<p>The site &#39;alice&#39; could not be reached. Try again in a moment.</p>" in (
        response.text)
    assert str(socket_path) not in response.text and "No such file" not in response.text
    scripted = gateway.get("alice", "/", headers={"accept": "application/json"})
    request_id = scripted.json()["request_id"]
    assert scripted.json() == {
        "ok": False, "status": 502, "error": "Bad gateway", "tenant": "alice",
        "message": "The site 'alice' could not be reached. Try again in a moment.",
        "request_id": request_id,
    }
    event = gateway.wait_for_event("backend_unavailable", request_id=request_id)
    assert (event["tenant"], event["status"]) == ("alice", 502)
    assert event["cause"] == f"cannot connect to unix:{socket_path}: No such file or directory"
    os.rename(str(socket_path) + ".moved", socket_path)


def test_slow_backend_gets_504(site: Site, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """A query slower than response_timeout_s gets a 504 page naming the tenant."""
    site.add_tenant("alice", settings="[datasette]\nsql_time_limit_ms = 20000\n")
    site.write_config(proxy={"response_timeout_s": 0.5})
    gateway = start_gateway()
    gateway.wait_running("alice")
    slow = ("/data.json?sql=with+recursive+c(x)+as+(select+1+union+all+select+x%2B1+from+c"
            "+where+x<30000000)+select+count(*)+from+c")
    response = gateway.get("alice", slow, headers={"accept": "application/json"})
    assert response.status_code == 504
    assert response.json()["tenant"] == "alice"


def test_access_log_has_one_json_line_per_request(gateway: RunningGateway) -> None:
    gateway.get("alice", "/data/items.json?_size=1")
    gateway.get("nobody", "/")
    entry = wait_until(lambda: next((e for e in gateway.access
                                     if e.get("path") == "/data/items.json"), None))
    assert entry["host"] == "alice.gw.test"
    assert entry["tenant"] == "alice"
    assert entry["method"] == "GET"
    assert entry["status"] == 200
    assert entry["bytes"] > 0
    assert entry["attempts"] == 1
    assert entry["duration_ms"] >= 0
    unknown = wait_until(lambda: next((e for e in gateway.access
                                       if e.get("host") == "nobody.gw.test"), None))
    assert unknown["status"] == 404
    assert unknown["tenant"] == ""


def test_request_body_is_streamed_to_the_backend(gateway: RunningGateway) -> None:
    """A large POST (over the replay limit) reaches Datasette; it answers (CSRF 403, not 502)."""
    body = b"x=" + b"a" * (3 * 1024 * 1024)
    response = gateway.request("POST", "alice", "/data", content=body,
                               headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code in (400, 403, 405)


def test_chunked_request_body(gateway: RunningGateway) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b"x=1"
        yield b"&y=2"

    response = gateway.request("POST", "alice", "/data", content=chunks())
    assert response.status_code in (400, 403, 405)


def test_websocket_upgrade_is_refused(gateway: RunningGateway) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: alice.gw.test\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        answer = sock.recv(200)
    assert not answer.startswith(b"HTTP/1.1 101")


def test_json_error_pages_are_valid_json(gateway: RunningGateway) -> None:
    response = gateway.client.get("/x.json", headers={"host": "nope.gw.test"})
    assert json.loads(response.text)["status"] == 404


def test_backend_addresses() -> None:
    from gateway.backend_client import BackendAddress

    unix = BackendAddress.parse("unix:/run/gateway/3/ds.sock")
    assert (unix.path, str(unix)) == ("/run/gateway/3/ds.sock", "unix:/run/gateway/3/ds.sock")
    tcp = BackendAddress.parse("tcp:10.0.0.7:8001")
    assert (tcp.host, tcp.port, str(tcp)) == ("10.0.0.7", 8001, "tcp:10.0.0.7:8001")
    assert BackendAddress.parse("tcp:[::1]:80").host == "::1"
    for bad in ("", "unix:", "tcp:host", "http://x", "tcp::80"):
        with pytest.raises(ValueError, match="not a backend address"):
            BackendAddress.parse(bad)
