"""The pure parts of shared login: redirects, throttling, CSRF, cookies, the actor cookie, and
the accounts database's own rules (against a real SQLite file)."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest
from datasette.app import Datasette
from hypothesis import given
from hypothesis import strategies as st
from itsdangerous import BadSignature

from gateway.auth.actor import ActorMinter
from gateway.auth.cookies import cookie_values, set_cookie
from gateway.auth.csrf import Csrf
from gateway.auth.handoff import PASS_TTL_S, Passes
from gateway.auth.store import AccountStore, digest
from gateway.auth.throttle import Throttle, address_key
from gateway.auth.urls import path_of, public_origin, safe_next
from gateway.config import AuthSettings, Config, load_config
from gateway.errors import AccountError

DOMAIN = "gw.test"
_TLS = '[tls]\nmode = "files"\ncert_file = "/nonexistent.pem"\nkey_file = "/nonexistent.key"'


@pytest.mark.parametrize("url", [
    "/", "/data/items?_size=1", "http://gw.test/", "https://bob.gw.test/x?y=1#z",
    "http://BOB.GW.TEST:8000/", "http://gw.test./",
])
def test_safe_next_keeps_our_urls(url: str) -> None:
    assert safe_next(url, DOMAIN) == url


@pytest.mark.parametrize("url", [
    "", "//evil.example", "///evil.example", "/\\evil.example", "\\\\evil.example",
    "http://evil.example/", "http://gw.test.evil.example/", "http://evilgw.test/",
    "http://a.b.gw.test/", "http://gw.test@evil.example/", "http://u:p@gw.test/",
    "javascript:alert(1)", "ftp://gw.test/", "http:/gw.test/", "https:gw.test",
    "http://gw.test:0/", "http://gw.test:99999/", "/\n/evil.example", "http://[::1]/",
    "http://127.0.0.1/", "data:text/html,x", "http://gw.test\t.evil.example/",
])
def test_safe_next_refuses_everything_else(url: str) -> None:
    assert safe_next(url, DOMAIN) is None


@given(st.text(max_size=60))
def test_safe_next_never_leaves_the_domain(url: str) -> None:
    """Whatever it accepts is a same-host path or names our domain as its host."""
    from urllib.parse import urlsplit

    accepted = safe_next(url, DOMAIN)
    if accepted is None:
        return
    if accepted.startswith("/"):
        assert not accepted.startswith("//") and "\\" not in accepted
    else:
        host = urlsplit(accepted).hostname or ""
        assert host.rstrip(".") == DOMAIN or host.rstrip(".").endswith("." + DOMAIN)


def test_path_of_never_leaves_the_host() -> None:
    assert path_of("http://bob.gw.test//evil.example/x?y=1") == "/evil.example/x?y=1"
    assert path_of("http://bob.gw.test") == "/"


def settings(**changes: object) -> AuthSettings:
    base = {"throttle_account_attempts": 3, "throttle_address_attempts": 5,
            "throttle_backoff_initial_s": 1.0, "throttle_backoff_max_s": 8.0,
            "throttle_window_s": 100.0}
    return AuthSettings(**{**base, **changes})  # type: ignore[arg-type]


def fail(throttle: Throttle, account: str, address: str, now: float) -> None:
    assert throttle.wait_s(account, address, now) == 0
    throttle.attempt(account, address, now)


def test_throttle_backs_off_exponentially_per_account() -> None:
    throttle = Throttle(settings())
    for second in range(3):
        fail(throttle, "ann", "10.0.0.1", second)
    assert throttle.wait_s("ann", "10.0.0.2", 2.0) == 1.0  # from anywhere
    assert throttle.wait_s("joe", "10.0.0.1", 2.0) == 0.0  # the address has 2 left
    throttle.attempt("ann", "10.0.0.2", 3.0)
    assert throttle.wait_s("ann", "10.0.0.2", 3.0) == 2.0
    for now in (5.0, 9.0, 17.0):
        throttle.attempt("ann", "10.0.0.3", now)
    assert throttle.wait_s("ann", "10.0.0.4", 17.0) == 8.0  # capped at backoff_max_s


def test_throttle_counts_per_address_and_forgets() -> None:
    throttle = Throttle(settings())
    for number in range(5):
        fail(throttle, f"user{number}", "10.0.0.1", 0.0)
    assert throttle.wait_s("someone", "10.0.0.1", 0.0) == 1.0
    assert throttle.wait_s("someone", "10.0.0.9", 0.0) == 0.0
    assert throttle.wait_s("someone", "10.0.0.1", 101.0) == 0.0  # window passed


def test_throttle_success_clears_the_account_but_not_other_failures() -> None:
    throttle = Throttle(settings())
    for second in range(2):
        fail(throttle, "ann", "10.0.0.1", second)
    fail(throttle, "ann", "10.0.0.1", 2.0)
    throttle.succeeded("ann", "10.0.0.1")
    assert throttle.wait_s("ann", "10.0.0.1", 2.0) == 0.0
    for number in range(3):  # the address kept its two earlier failures: 2 + 3 = 5
        fail(throttle, f"user{number}", "10.0.0.1", 3.0)
    assert throttle.wait_s("joe", "10.0.0.1", 3.0) == 1.0


def test_throttle_groups_ipv6_by_64() -> None:
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_key("2001:db8:0:1::1") != address_key("2001:db8::1")
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"


def test_csrf_token_is_bound_to_the_cookie_and_origin() -> None:
    csrf = Csrf(b"k" * 32)
    cookie = csrf.new_cookie()
    token = csrf.form_token(cookie)
    assert csrf.accepts(cookie, token, None, "http://gw.test")
    assert csrf.accepts(cookie, token, "http://gw.test", "http://gw.test")
    assert not csrf.accepts(cookie, token, "http://bob.gw.test", "http://gw.test")
    assert not csrf.accepts(csrf.new_cookie(), token, None, "http://gw.test")
    assert not csrf.accepts(cookie, "", None, "http://gw.test")
    assert not csrf.accepts(None, token, None, "http://gw.test")
    assert not Csrf(b"x" * 32).accepts(cookie, token, None, "http://gw.test")


def test_cookie_values_and_set_cookie() -> None:
    header = b"a=1; gateway_session=first; b=2;gateway_session=second"
    assert cookie_values(header, b"gateway_session") == ["first", "second"]
    assert cookie_values(b"", b"x") == []
    assert set_cookie("s", "v", max_age_s=60, secure=True, domain="gw.test") == (
        b"set-cookie", b"s=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Domain=gw.test; Secure")


async def test_minted_actor_is_accepted_by_datasette_with_its_secret_only() -> None:
    """Datasette itself checks the cookie: accepted with the tenant's secret, with a future
    expiry; worthless with another secret."""
    cookie = ActorMinter("bob-secret").mint({"id": "ann@example.com"}, time.time()).decode()
    bob = Datasette(memory=True, secret="bob-secret")
    decoded = bob.unsign(cookie, "actor")
    assert decoded["a"] == {"id": "ann@example.com"}
    response = await bob.client.get("/-/actor.json", cookies={"ds_actor": cookie})
    assert response.json() == {"actor": {"id": "ann@example.com"}}
    with pytest.raises(BadSignature):
        Datasette(memory=True, secret="alice-secret").unsign(cookie, "actor")
    stale = ActorMinter("bob-secret").mint({"id": "ann@example.com"}, time.time() - 3600)
    response = await bob.client.get("/-/actor.json", cookies={"ds_actor": stale.decode()})
    assert response.json() == {"actor": None}


@pytest.fixture
def store(tmp_path: Path) -> AccountStore:
    return AccountStore(tmp_path / "accounts.db")


def test_store_sign_out_deletes_the_sessions_handed_to_tenants(store: AccountStore) -> None:
    user = store.add_user("ann@example.com", "hash", 0.0)
    store.add_member("bob", "ann@example.com")
    store.sign_in("root", user, 0.0, replaces=[], new_password_hash=None)
    store.add_ticket("ticket", "root", "bob", "state", expires=60.0)
    assert not store.redeem_ticket("ticket", "bob", "state", "child", now=61.0)  # expired
    store.add_ticket("ticket2", "root", "bob", "state", expires=60.0)
    assert store.redeem_ticket("ticket2", "bob", "state", "child", now=1.0)
    child = store.session("child", 2.0, idle_s=100, max_s=1000)
    assert child is not None and child.only_tenant == "bob" and child.session_root == "root"
    assert child.tenants == frozenset({"bob"})
    store.delete_session("root")
    assert store.session("child", 3.0, idle_s=100, max_s=1000) is None


def test_store_session_expiry(store: AccountStore) -> None:
    user = store.add_user("ann@example.com", "hash", 0.0)
    store.sign_in("s", user, 0.0, replaces=[], new_password_hash=None)
    assert store.session("s", 90.0, idle_s=100, max_s=1000) is not None  # touches it
    assert store.session("s", 180.0, idle_s=100, max_s=1000) is not None
    assert store.session("s", 290.0, idle_s=100, max_s=1000) is None  # idle since 180
    store.sign_in("t", user, 0.0, replaces=[], new_password_hash=None)
    for now in range(50, 1000, 50):
        assert store.session("t", float(now), idle_s=100, max_s=1000) is not None
    assert store.session("t", 1001.0, idle_s=100, max_s=1000) is None  # absolute limit


def test_store_secrets_are_hashed(store: AccountStore, tmp_path: Path) -> None:
    user = store.add_user("ann@example.com", "hash", 0.0)
    session_id = "the-session-id-itself"
    store.sign_in(digest(session_id), user, 0.0, replaces=[], new_password_hash=None)
    store.add_token("ann@example.com", "id1", digest("gwt_secret"), "", 0.0)
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("accounts.db*"))
    assert session_id.encode() not in raw and b"gwt_secret" not in raw


def test_store_invitation_is_used_once(store: AccountStore) -> None:
    store.add_invite("code", "new@example.com", ("bob",), 0.0, expires=100.0)
    assert store.invite("code", 50.0) is not None
    assert store.invite("code", 101.0) is None
    store.accept_invite("code", "hash", "session", 50.0)
    assert store.members("bob") == ["new@example.com"]
    with pytest.raises(AccountError, match="used already or it has expired"):
        store.accept_invite("code", "hash", "session2", 51.0)


# --- where sign-in redirects go, and hand-off passes -------------------------------------------


def _config(tmp_path: Path, listen: str, tls: str = "") -> Config:
    (tmp_path / "tenants").mkdir(exist_ok=True)
    path = tmp_path / "gateway.toml"
    path.write_text(f'domain = "{DOMAIN}"\n[listen]\n{listen}\n{tls}\n')
    return load_config(path)


@pytest.mark.parametrize(("listen", "tls", "bound", "expected"), [
    ("http_port = 80", "", {}, "http://bob.gw.test"),
    ("http_port = 8000", "", {"http": 8000}, "http://bob.gw.test:8000"),
    ("http_port = 0", "", {"http": 41234}, "http://bob.gw.test:41234"),
    ("http_port = 80\npublic_port = 8080", "", {"http": 80}, "http://bob.gw.test:8080"),
    # With TLS on, never plain HTTP, whatever the HTTP port.
    ("http_port = 80\nhttps_port = 443", _TLS, {"http": 80, "https": 443}, "https://bob.gw.test"),
    ("http_port = 8000\nhttps_port = 0", _TLS, {"http": 8000, "https": 8443},
     "https://bob.gw.test:8443"),
])
def test_public_origin_comes_from_the_configuration(tmp_path: Path, listen: str, tls: str,
                                                   bound: dict[str, int], expected: str) -> None:
    config = _config(tmp_path, listen, tls)
    assert public_origin(config, f"bob.{DOMAIN}", bound) == expected
    assert public_origin(config, None, bound) == expected.replace("bob.", "")


def test_a_pass_is_good_for_its_session_and_tenant_only_and_not_for_long() -> None:
    passes, now = Passes(b"k" * 32), 1_700_000_000.0
    value = passes.make("root", "bob", now)
    assert passes.accepts(value, "root", "bob", now + PASS_TTL_S)
    assert not passes.accepts(value, "root", "bob", now + PASS_TTL_S + 1)
    assert not passes.accepts(value, "other", "bob", now)
    assert not passes.accepts(value, "root", "carol", now)
    assert not Passes(b"j" * 32).accepts(value, "root", "bob", now)
    issued, _, mac = value.partition(".")
    for forged in ("", ".", issued, f"{issued}.", f"{int(issued, 16) + 1:x}.{mac}",
                   f"0x{issued}.{mac}", f" {issued}.{mac}", "x" * 200, f"{issued}.{mac}0"):
        assert not passes.accepts(forged, "root", "bob", now), forged


def test_auth_imports_neither_the_proxy_nor_the_app() -> None:
    """Issue 18: auth/ and the proxy meet in identity.py; auth/ renders its pages with html.py,
    not the app's error pages; the sign-in flow is handed the Auth service, not the Gateway."""
    package = Path(__file__).resolve().parent.parent / "gateway" / "auth"
    imported: dict[str, set[str]] = {}
    for module in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                names = {node.module} if node.module else {a.name for a in node.names}
                imported.setdefault(module.name, set()).update(n.split(".")[0] for n in names
                                                               if n)
    assert imported  # the walk found auth's imports of the rest of the gateway
    for module, names in imported.items():
        assert not names & {"proxy", "pages", "app", "site", "server"}, module
    for module in ("service.py", "web.py", "handoff.py", "urls.py", "cookies.py"):
        assert "runtime" not in imported.get(module, set()), module
