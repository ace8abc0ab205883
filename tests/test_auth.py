"""Shared login over HTTP, end to end: a real gateway, real Datasette tenants, the real CLI.

Cookies are kept by hand (class Browser): requests go to 127.0.0.1 with a Host header, so an
HTTP client's cookie jar could not apply the Domain rules a browser applies.
"""

from __future__ import annotations

import html
import json
import re
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlencode, urlsplit

import httpx
import pytest
from itsdangerous import URLSafeSerializer

from gateway.auth.accounts import Accounts
from gateway.auth.actor import base62
from gateway.config import load_config
from gateway.keys import load_master_key, tenant_secret

from .conftest import RunningGateway, Site, wait_until
from .test_proxy import add_echo_plugin

DOMAIN = "gw.test"
ANN, JOE = "ann@example.com", "joe@example.com"
PASSWORD = "correct horse battery"
FAST_HASHING = {"password_memory_kib": 8192, "password_time_cost": 1,
                "password_parallelism": 1, "session_cache_s": 1.0}


class Browser:
    """Sends requests the way a browser would, with the cookies it was given."""

    def __init__(self, gateway: RunningGateway, local_address: str | None = None) -> None:
        self.gateway = gateway
        transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
        self.client = httpx.Client(base_url=gateway.url, timeout=30, transport=transport)
        self.cookies: dict[tuple[str, str], str] = {}  # (domain or host, name) -> value
        self.domain_cookies: set[tuple[str, str]] = set()

    def close(self) -> None:
        self.client.close()

    def cookie_header(self, host: str) -> str:
        host = host.partition(":")[0]  # cookies do not care about ports
        pairs = [f"{name}={value}" for (where, name), value in self.cookies.items()
                 if where == host or ((where, name) in self.domain_cookies
                                      and host.endswith("." + where))]
        return "; ".join(pairs)

    def request(self, method: str, host: str, path: str, *, headers: dict[str, str] | None = None,
                **kwargs: Any) -> httpx.Response:
        headers = {"host": host, **(headers or {})}
        cookie = self.cookie_header(host)
        if cookie and "cookie" not in headers:
            headers["cookie"] = cookie
        response = self.client.request(method, path, headers=headers, **kwargs)
        for raw in response.headers.get_list("set-cookie"):
            self._keep(host, raw)
        return response

    def get(self, host: str, path: str = "/", **kwargs: Any) -> httpx.Response:
        return self.request("GET", host, path, **kwargs)

    def follow(self, url: str, limit: int = 10, until: str = "\0"
               ) -> list[tuple[str, httpx.Response]]:
        """GET `url` and the redirects after it, as far as they lead to this gateway (and do
        not contain `until`); return each (url, response). A URL on another port than the
        gateway's is not followed: that is where someone else would receive it."""
        visited: list[tuple[str, httpx.Response]] = []
        for _ in range(limit):
            parts = urlsplit(url)
            if parts.port not in (None, self.gateway.port) or (visited and until in url):
                break
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            response = self.get(parts.netloc or DOMAIN, target)
            visited.append((url, response))
            if response.status_code not in (302, 303, 307):
                break
            location = response.headers["location"]
            url = location if "//" in location[:8] else f"http://{parts.netloc}{location}"
        return visited

    def _keep(self, host: str, raw: str) -> None:
        host = host.partition(":")[0]
        name, _, rest = raw.partition("=")
        value, *attributes = [part.strip() for part in rest.split(";")]
        attrs = dict(a.partition("=")[::2] for a in attributes)
        where = attrs.get("Domain", host).lstrip(".")
        if "Domain" in attrs:
            self.domain_cookies.add((where, name))
        if attrs.get("Max-Age") == "0":
            self.cookies.pop((where, name), None)
        else:
            self.cookies[(where, name)] = value

    def cookie(self, name: str, where: str = DOMAIN) -> str | None:
        return self.cookies.get((where, name))

    def form(self, path: str) -> dict[str, str]:
        """Open a gateway form page; return its hidden fields."""
        page = self.get(DOMAIN, path)
        assert page.status_code in (200, 404), page.text
        return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page.text))

    def sign_in(self, email: str, password: str = PASSWORD, next_url: str = "",
                state: str = "", headers: dict[str, str] | None = None) -> httpx.Response:
        fields = self.form("/-/login")
        fields.update(email=email, password=password, next=next_url, state=state)
        return self.request("POST", DOMAIN, "/-/login", data=fields, headers=headers)

    def sign_out(self) -> httpx.Response:
        fields = self.form("/-/logout")
        return self.request("POST", DOMAIN, "/-/logout", data=fields)

    def actor(self, tenant: str) -> Any:
        response = self.get(f"{tenant}.{DOMAIN}", "/-/actor.json")
        return response.json()["actor"] if response.status_code == 200 else response.status_code


def add_user(gateway: RunningGateway, email: str, *tenants: str) -> None:
    """What `gateway user add` and `tenant members --add` do (test_cli_* run the commands)."""
    accounts = Accounts(load_config(gateway.site.config_path))
    accounts.add_user(email, PASSWORD)
    for tenant in tenants:
        accounts.add_member(tenant, email)


def start(site: Site, start_gateway: Any, **auth: Any) -> RunningGateway:
    """alice public (echoes headers), bob and carol private; ann in bob and carol, joe in
    carol."""
    site.write_config(auth={**FAST_HASHING, **auth})
    add_echo_plugin(site.add_tenant("alice"))
    add_echo_plugin(site.add_tenant("bob", public=False,
                                    tables={"secrets": [{"id": 1, "word": "bob-only"}]}))
    site.add_tenant("carol", public=False)
    gateway: RunningGateway = start_gateway()
    add_user(gateway, ANN, "bob", "carol")
    add_user(gateway, JOE, "carol")
    gateway.wait_running("alice", "bob", "carol")
    return gateway


@pytest.fixture
def gateway(site: Site, start_gateway: Any) -> RunningGateway:
    return start(site, start_gateway)


@pytest.fixture
def browser(gateway: RunningGateway) -> Any:
    browser = Browser(gateway)
    yield browser
    browser.close()


def echoed(browser: Browser, tenant: str, headers: dict[str, str] | None = None
           ) -> dict[str, list[str]]:
    response = browser.get(f"{tenant}.{DOMAIN}", "/-/echo", headers=headers)
    assert response.status_code == 200, response.text
    seen: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        seen.setdefault(name, []).append(value)
    return seen


def mint(secret: str, actor_id: str) -> str:
    value: str = URLSafeSerializer(secret, "actor").dumps(
        {"a": {"id": actor_id}, "e": base62(int(time.time()) + 600)})
    return value


# --- access ----------------------------------------------------------------------------------


def test_anonymous_browser_is_sent_to_sign_in(browser: Browser) -> None:
    """1. GET a private tenant's page: 303 to the apex sign-in (on the gateway's own origin),
    with the page to come back to.
    2. A script (JSON) gets 401 with WWW-Authenticate. 3. Public alice answers anonymously."""
    response = browser.get(f"bob.{DOMAIN}", "/data/secrets?_size=1")
    assert response.status_code == 303
    assert response.headers["location"] == tenant_url(browser, None, "/-/login?") + urlencode(
        {"next": tenant_url(browser, "bob", "/data/secrets?_size=1")})
    assert "set-cookie" not in response.headers
    script = browser.get(f"bob.{DOMAIN}", "/data/secrets.json")
    assert script.status_code == 401
    assert script.headers["www-authenticate"] == f'Bearer realm="{DOMAIN}"'
    assert script.json()["message"].startswith("The site 'bob' is private.")
    assert browser.actor("alice") is None


def test_sign_in_then_tenant_sees_the_user(browser: Browser) -> None:
    """1. Sign in with next = a bob page: 303 there (through bob's /-/gateway-signin, which
    sees the session at once), and a session cookie for the whole domain
    (HttpOnly, SameSite=Lax, not Secure without TLS). 2. bob's Datasette sees ann as its actor,
    in a response no shared cache may keep. 3. The apex home lists ann's sites."""
    response = browser.sign_in(ANN, next_url=f"http://bob.{DOMAIN}/data")
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location._replace(query="").geturl() == tenant_url(browser, "bob", "/-/gateway-signin")
    assert parse_qs(location.query)["next"] == ["/data"]
    assert browser.follow(location.geturl())[-1][0] == tenant_url(browser, "bob", "/data")
    cookie = next(c for c in response.headers.get_list("set-cookie")
                  if c.startswith("gateway_session="))
    attributes = cookie.split("; ")[1:]
    assert sorted(attributes) == sorted(["Path=/", "Max-Age=2592000", "HttpOnly",
                                         "SameSite=Lax", f"Domain={DOMAIN}"])
    page = browser.get(f"bob.{DOMAIN}", "/-/actor.json")
    assert page.json() == {"actor": {"id": ANN, "role": "member"}}
    assert page.headers["cache-control"] == "private, no-store"
    assert page.headers["vary"] == "Cookie, Authorization"
    assert browser.actor("carol") == {"id": ANN, "role": "member"}
    assert browser.actor("alice") == {"id": ANN}  # public tenants know signed-in users too
    home = browser.get(DOMAIN, "/")
    assert "Your sites" in home.text
    assert f'href="http://bob.{DOMAIN}/"' in home.text
    assert ANN in home.text


def test_non_member_gets_403(browser: Browser) -> None:
    """joe (a member of carol only) signs in: carol lets him in, bob answers 403."""
    browser.sign_in(JOE)
    assert browser.actor("carol") == {"id": JOE, "role": "member"}
    page = browser.get(f"bob.{DOMAIN}", "/data/secrets")
    assert page.status_code == 403
    assert (f"You are signed in as {JOE}, who is not a member of the private site 'bob'."
            in html.unescape(page.text))
    assert "bob-only" not in page.text


def test_wrong_password_and_unknown_user_get_the_same_answer(browser: Browser) -> None:
    wrong = browser.sign_in(ANN, password="not the password")
    unknown = browser.sign_in("nobody@example.com", password="not the password")
    assert wrong.status_code == unknown.status_code == 400
    assert "The email address or the password is not right." in wrong.text
    assert wrong.text.replace(ANN, "X") == unknown.text.replace("nobody@example.com", "X")
    assert browser.cookie("gateway_session") is None


def test_unknown_user_takes_as_long_as_a_wrong_password(site: Site, start_gateway: Any) -> None:
    """With real argon2 parameters, an unknown email is checked against a dummy hash: its
    median time is of the same order as a wrong password's (not 1/50 of it)."""
    gateway = start(site, start_gateway, password_memory_kib=65536, password_time_cost=3,
                    password_parallelism=4, throttle_account_attempts=100,
                    throttle_address_attempts=100)
    browser = Browser(gateway)
    try:
        def timed(email: str) -> float:
            fields = browser.form("/-/login")
            fields.update(email=email, password="not the password")
            started = time.perf_counter()
            assert browser.request("POST", DOMAIN, "/-/login", data=fields).status_code == 400
            return time.perf_counter() - started

        wrong = statistics.median(timed(ANN) for _ in range(5))
        unknown = statistics.median(timed("nobody@example.com") for _ in range(5))
    finally:
        browser.close()
    assert unknown > 0.4 * wrong, (unknown, wrong)


# --- what the tenant sees ----------------------------------------------------------------------


def test_forged_actor_cookie_is_replaced(site: Site, browser: Browser) -> None:
    """A ds_actor signed with alice's real secret, sent by the client, never reaches alice:
    anonymous, alice sees no actor; signed in, exactly one ds_actor (the gateway's)."""
    secret = tenant_secret(load_master_key(site.root / "state"), "alice")
    forged = mint(secret, "root")
    headers = {"cookie": f"ds_actor={forged}"}
    assert browser.get(f"alice.{DOMAIN}", "/-/actor.json", headers=headers).json() == {
        "actor": None}
    browser.sign_in(ANN)
    session = browser.cookie("gateway_session")
    cookie = f"ds_actor={forged}; gateway_session={session}; ds_csrftoken=abc; ds_actor={forged}"
    assert browser.get(f"alice.{DOMAIN}", "/-/actor.json",
                       headers={"cookie": cookie}).json() == {"actor": {"id": ANN}}
    seen = echoed(browser, "alice", {"cookie": cookie})
    assert len(seen["cookie"]) == 1
    sent = seen["cookie"][0].split("; ")
    assert "ds_csrftoken=abc" in sent
    assert [c for c in sent if c.startswith("ds_actor=")] != [f"ds_actor={forged}"]
    assert len([c for c in sent if c.startswith("ds_actor=")]) == 1
    assert not [c for c in sent if c.startswith("gateway_")]


def test_forged_identity_headers_are_removed(browser: Browser) -> None:
    claims = {"x-remote-user": "root", "remote-user": "root", "x-forwarded-user": "root",
              "x-forwarded-email": "root@x", "x-auth-request-user": "root",
              "x-gateway-actor": '{"id": "root"}', "x-actor": "root"}
    seen = echoed(browser, "alice", claims)
    assert not set(claims) & set(seen)


def test_actor_cookie_for_one_tenant_is_rejected_by_another(site: Site,
                                                            gateway: RunningGateway) -> None:
    """Straight to bob's Datasette socket (bypassing the gateway): a ds_actor minted with
    alice's secret is no actor to bob; one minted with bob's is."""
    master = load_master_key(site.root / "state")
    socket_path = site.root / "run" / str(gateway.tenant("bob")["generation"]) / "ds.sock"
    transport = httpx.HTTPTransport(uds=str(socket_path))
    with httpx.Client(transport=transport, base_url="http://bob.gw.test") as direct:
        def actor(secret: str) -> Any:
            cookie = f"ds_actor={mint(secret, ANN)}"
            return direct.get("/-/actor.json", headers={"cookie": cookie}).json()["actor"]

        assert actor(tenant_secret(master, "alice")) is None
        assert actor(tenant_secret(master, "bob")) == {"id": ANN}


def test_tenant_cannot_set_the_gateways_cookies(site: Site, start_gateway: Any) -> None:
    """A tenant that answers Set-Cookie: gateway_session=...; Domain=<domain> (cookie tossing)
    has that header dropped; its other cookies pass."""
    directory = site.add_tenant("alice")
    (directory / "plugins").mkdir()
    (directory / "plugins" / "toss.py").write_text('''
from datasette import hookimpl
from datasette.utils.asgi import Response


@hookimpl
def register_routes():
    async def toss(request):
        response = Response.text("tossed")
        response.set_cookie("gateway_session", "planted", domain="gw.test")
        response.set_cookie("ds_actor", "planted")
        response.set_cookie("theirs", "kept")
        return response

    return [(r"^/-/toss$", toss)]
''')
    gateway = start_gateway()
    gateway.wait_running("alice")
    response = gateway.get("alice", "/-/toss")
    assert response.text == "tossed"
    cookies = response.headers.get_list("set-cookie")
    assert [c.partition("=")[0] for c in cookies] == ["theirs"]


# --- defences of the forms ---------------------------------------------------------------------


def test_csrf_is_required_on_every_form(browser: Browser) -> None:
    """Sign-in without the token, with a wrong one, or from another origin (even a tenant's)
    is refused with 403; so is sign-out, which then leaves the session alive."""
    fields = browser.form("/-/login")
    good = {**fields, "email": ANN, "password": PASSWORD}
    bare = Browser(browser.gateway)
    try:
        assert bare.request("POST", DOMAIN, "/-/login", data=good).status_code == 403
    finally:
        bare.close()
    wrong = {**good, "csrf_token": "0" * 64}
    refused = browser.request("POST", DOMAIN, "/-/login", data=wrong)
    assert refused.status_code == 403
    assert "This form has expired (or was sent from another site)." in refused.text
    for origin in ("http://evil.example", f"http://bob.{DOMAIN}", "null"):
        response = browser.request("POST", DOMAIN, "/-/login", data=good,
                                   headers={"origin": origin})
        assert response.status_code == 403, origin
    assert browser.cookie("gateway_session") is None
    accepted = browser.request("POST", DOMAIN, "/-/login", data=good,
                               headers={"origin": f"http://{DOMAIN}"})
    assert accepted.status_code == 303
    logout = browser.form("/-/logout")
    forged = browser.request("POST", DOMAIN, "/-/logout",
                             data={**logout, "csrf_token": "0" * 64})
    assert forged.status_code == 403
    assert browser.actor("bob") == {"id": ANN, "role": "member"}


def test_session_is_rotated_at_sign_in(gateway: RunningGateway) -> None:
    """Fixation: 1. ann signs in (session A). 2. A is planted in another browser, whose user
    signs in as joe: joe gets a new session B, and A ends. 3. An id the attacker made up is
    never adopted either."""
    attacker, victim = Browser(gateway), Browser(gateway)
    try:
        attacker.sign_in(ANN)
        planted = attacker.cookie("gateway_session")
        assert planted and attacker.actor("bob") == {"id": ANN, "role": "member"}
        victim.cookies[(DOMAIN, "gateway_session")] = planted
        victim.domain_cookies.add((DOMAIN, "gateway_session"))
        assert victim.sign_in(JOE).status_code == 303
        assert victim.cookie("gateway_session") not in (None, planted)
        assert victim.actor("carol") == {"id": JOE, "role": "member"}
        assert attacker.actor("carol") == 401  # the planted session is gone
        made_up = "x" * 43
        victim.cookies[(DOMAIN, "gateway_session")] = made_up
        victim.sign_in(JOE)
        assert victim.cookie("gateway_session") not in (None, made_up)
    finally:
        attacker.close()
        victim.close()


def test_sign_in_is_throttled_per_account_and_per_address(site: Site,
                                                          start_gateway: Any) -> None:
    """1. Three wrong passwords for ann: the fourth attempt, even right, gets 429 with
    Retry-After. 2. joe, from the same address, can still sign in. 3. Three more failures
    (other accounts) use up the address's six: joe is refused too. 4. From another address
    (127.0.0.2) joe signs in."""
    gateway = start(site, start_gateway, throttle_account_attempts=3,
                    throttle_address_attempts=6, throttle_backoff_initial_s=60.0)
    browser, elsewhere = Browser(gateway), Browser(gateway, local_address="127.0.0.2")
    try:
        for _ in range(3):
            assert browser.sign_in(ANN, password="wrong password").status_code == 400
        throttled = browser.sign_in(ANN)
        assert throttled.status_code == 429
        assert 55 <= int(throttled.headers["retry-after"]) <= 60
        assert "Too many failed attempts to sign in. Try again in" in throttled.text
        assert browser.sign_in(JOE).status_code == 303
        for name in ("x", "y", "z"):
            assert browser.sign_in(f"{name}@example.com").status_code == 400
        assert browser.sign_in(JOE).status_code == 429
        assert elsewhere.sign_in(JOE).status_code == 303
    finally:
        browser.close()
        elsewhere.close()


def test_sign_in_and_sign_out_are_logged_without_secrets(site: Site, start_gateway: Any) -> None:
    """One event each: a wrong password (sign_in_failed), an attempt while throttled
    (sign_in_throttled, with the wait), a sign-in (signed_in) and a sign-out (signed_out); with
    the email and client address, never the password or a session id."""
    gateway = start(site, start_gateway, throttle_account_attempts=1,
                    throttle_backoff_initial_s=60.0)
    browser = Browser(gateway)
    try:
        assert browser.sign_in(JOE).status_code == 303
        session = browser.cookie("gateway_session")
        assert browser.sign_out().status_code == 303
        assert browser.sign_in(ANN, password="wrong password").status_code == 400
        assert browser.sign_in(ANN).status_code == 429
    finally:
        browser.close()
    throttled = gateway.wait_for_event("sign_in_throttled")
    assert 55 <= throttled["retry_after_s"] <= 60
    events = [{k: v for k, v in e.items() if k not in ("time", "logger", "level")}
              for e in gateway.events if e["event"].startswith(("sign", "signed"))]
    assert events == [
        {"event": "signed_in", "email": JOE, "address": "127.0.0.1"},
        {"event": "signed_out", "email": JOE},
        {"event": "sign_in_failed", "email": ANN, "address": "127.0.0.1"},
        {"event": "sign_in_throttled", "email": ANN, "address": "127.0.0.1",
         "retry_after_s": throttled["retry_after_s"]},
    ]
    logged = "\n".join(map(str, gateway.events + gateway.access))
    assert session and session not in logged
    assert PASSWORD not in logged and "wrong password" not in logged


HOSTILE_NEXT = [
    "http://evil.example/", "//evil.example/", "/\\evil.example/", "https:evil.example",
    f"http://{DOMAIN}.evil.example/", f"http://evil.example/?{DOMAIN}", "javascript:alert(1)",
    "http://ann@evil.example/", f"http://x@{DOMAIN}@evil.example/", "/\t/evil.example/",
    f"http://bob.{DOMAIN}\\@evil.example/", "data:text/html,hi",
]


def test_no_open_redirect(browser: Browser) -> None:
    """After sign-in, a `next` off our domain (or that browsers could read so) leads home."""
    for next_url in HOSTILE_NEXT:
        response = browser.sign_in(ANN, next_url=next_url)
        assert response.status_code == 303
        assert response.headers["location"] == "/", next_url
    for next_url in ("/-/logout", f"https://{DOMAIN}/"):
        response = browser.sign_in(ANN, next_url=next_url)
        assert response.headers["location"] == next_url
    to_bob = browser.sign_in(ANN, next_url=f"http://bob.{DOMAIN}/data?x=1").headers["location"]
    assert to_bob.startswith(tenant_url(browser, "bob", "/-/gateway-signin?"))
    assert parse_qs(urlsplit(to_bob).query)["next"] == ["/data?x=1"]
    # Signed in already, the sign-in page redirects at once, with the same rule.
    assert browser.get(DOMAIN, "/-/login?next=%2F%2Fevil.example%2F").status_code == 200
    assert browser.get(DOMAIN, "/-/login?next=%2Fdata").headers["location"] == "/data"


def test_gateway_pages_have_security_headers(browser: Browser) -> None:
    for path in ("/-/login", "/-/logout", "/-/invite/nope", "/"):
        headers = browser.get(DOMAIN, path).headers
        assert headers["x-frame-options"] == "DENY", path
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]


# --- sign-out, hand-off ------------------------------------------------------------------------


def tenant_url(browser: Browser, tenant: str | None, path: str = "/") -> str:
    """A URL on the gateway's own public origin (its listening port: http_port is 0 here)."""
    host = f"{tenant}.{DOMAIN}" if tenant else DOMAIN
    return f"http://{host}:{browser.gateway.port}{path}"


def hand_off(browser: Browser, tenant: str, until: str = "\0"
             ) -> list[tuple[str, httpx.Response]]:
    """What a browser that keeps the session on the apex only (Chromium with `localhost`) does
    to open a private tenant: tenant -> apex sign-in -> tenant (state) -> apex (ticket) ->
    tenant (see auth/service.py). Returns every (url, response) on the way."""
    shared = set(browser.domain_cookies)
    browser.domain_cookies.clear()  # the tenant host does not get the apex's cookie
    try:
        return browser.follow(tenant_url(browser, tenant, "/data"), until=until)
    finally:
        browser.domain_cookies |= shared


def new_ticket(browser: Browser, tenant: str) -> tuple[str | None, SplitResult]:
    """Run a hand-off up to the ticket, unused: the state cookie it set, and the ticket URL."""
    browser.cookies.pop((f"{tenant}.{DOMAIN}", "gateway_session"), None)
    visits = hand_off(browser, tenant, until="ticket=")
    ticket_url = visits[-1][1].headers["location"]
    assert "ticket=" in ticket_url, [url for url, _ in visits]
    return browser.cookie("gateway_state", f"{tenant}.{DOMAIN}"), urlsplit(ticket_url)


def test_hand_off_gives_the_tenant_host_its_own_session(browser: Browser) -> None:
    browser.sign_in(ANN)
    url, landed = hand_off(browser, "bob")[-1]
    assert landed.status_code == 200
    assert url == tenant_url(browser, "bob", "/data")
    child = browser.cookie("gateway_session", f"bob.{DOMAIN}")
    assert child and child != browser.cookie("gateway_session")
    only_child = {"cookie": f"gateway_session={child}"}
    assert browser.get(f"bob.{DOMAIN}", "/-/actor.json", headers=only_child).json() == {
        "actor": {"id": ANN, "role": "member"}}
    # A tenant host's session is valid on that tenant only.
    assert browser.get(f"carol.{DOMAIN}", "/-/actor.json", headers=only_child).status_code == 401


def test_hand_off_tickets_are_single_use_and_bound(browser: Browser) -> None:
    """A ticket works once, only on its tenant, only with the state cookie of the browser that
    asked for it (else someone else's ticket could sign a victim in: login CSRF). A ticket
    that does not work leads back to the sign-in page, saying so."""
    browser.sign_in(ANN)
    host = f"bob.{DOMAIN}"
    state, ticket_url = new_ticket(browser, "bob")
    target = f"{ticket_url.path}?{ticket_url.query}"
    failed = tenant_url(browser, None, "/-/login?") + urlencode(
        {"next": tenant_url(browser, "carol", "/data"), "reason": "handoff"})
    on_carol = browser.get(f"carol.{DOMAIN}", target,
                           headers={"cookie": f"gateway_state={state}"})
    assert (on_carol.status_code, on_carol.headers["location"]) == (303, failed)
    # the ticket was spent by that attempt; ask for another
    state, ticket_url = new_ticket(browser, "bob")
    target = f"{ticket_url.path}?{ticket_url.query}"
    wrong_state = browser.get(host, target, headers={"cookie": "gateway_state=" + "y" * 32})
    assert wrong_state.headers["location"] == failed.replace("carol", "bob")
    state, ticket_url = new_ticket(browser, "bob")
    target = f"{ticket_url.path}?{ticket_url.query}"
    state_only = {"cookie": f"gateway_state={state}"}
    used = browser.get(host, target, headers=state_only)
    assert (used.status_code, used.headers["location"]) == (303, "/data")
    assert "gateway_session=" in used.headers["set-cookie"]
    again = browser.get(host, target, headers=state_only)
    assert again.headers["location"] == failed.replace("carol", "bob")
    assert "set-cookie" not in again.headers
    page = browser.get(DOMAIN, again.headers["location"].partition(str(browser.gateway.port))[2])
    assert ("Signing in to bob did not finish: the sign-in link had expired or was used"
            " already, or your browser did not keep bob's cookies." in html.unescape(page.text))


def test_hand_off_next_stays_on_the_tenant(browser: Browser) -> None:
    browser.sign_in(ANN)
    state, ticket_url = new_ticket(browser, "bob")
    ticket = parse_qs(ticket_url.query)["ticket"][0]
    landed = browser.get(f"bob.{DOMAIN}", f"/-/gateway-signin?ticket={ticket}&next=//evil.example/",
                         headers={"cookie": f"gateway_state={state}"})
    assert landed.headers["location"] == "/"


def test_sign_out_ends_the_session_everywhere(browser: Browser) -> None:
    """1. Sign in; hand the session to bob's host. 2. Sign out on the apex. 3. At once, the
    domain-wide session and bob's host session are both refused."""
    browser.sign_in(ANN)
    assert hand_off(browser, "bob")[-1][1].status_code == 200
    child = {"cookie": f"gateway_session={browser.cookie('gateway_session', f'bob.{DOMAIN}')}"}
    assert browser.actor("carol") == {"id": ANN, "role": "member"}
    signed_out = browser.sign_out()
    assert signed_out.status_code == 303
    assert signed_out.headers["location"] == "/-/login?signed_out=1"
    assert browser.cookie("gateway_session") is None
    assert "You have signed out." in browser.get(DOMAIN, "/-/login?signed_out=1").text
    assert browser.get(f"bob.{DOMAIN}", "/", headers=child).status_code == 303
    assert browser.actor("carol") == 401


def test_datasette_log_out_signs_out_of_the_gateway(browser: Browser) -> None:
    """Datasette's own "Log out" (a same-origin POST to /-/logout on the tenant host) ends the
    gateway session; the same POST from elsewhere only leads to the apex's sign-out page."""
    browser.sign_in(ANN)
    session = browser.cookie("gateway_session")
    cookie = {"cookie": f"gateway_session={session}"}
    page = browser.get(f"bob.{DOMAIN}", "/", headers=cookie)
    assert "Log out" in page.text and ANN in page.text
    cross_site = browser.request("POST", f"bob.{DOMAIN}", "/-/logout",
                                 headers={**cookie, "origin": "http://evil.example"})
    assert cross_site.status_code == 303
    assert cross_site.headers["location"] == tenant_url(browser, None, "/-/logout")
    assert browser.actor("bob") == {"id": ANN, "role": "member"}
    own = browser.request("POST", f"bob.{DOMAIN}", "/-/logout", data={"csrftoken": "x"},
                          headers={**cookie, "origin": f"http://bob.{DOMAIN}"})
    assert own.status_code == 303
    assert own.headers["location"] == tenant_url(browser, None, "/-/login?signed_out=1")
    assert browser.get(f"carol.{DOMAIN}", "/", headers=cookie).status_code == 303


# --- the CLI, and the running gateway noticing -------------------------------------------------


def test_api_token_works_until_revoked(browser: Browser, gateway: RunningGateway) -> None:
    """1. `gateway user token` prints a token. 2. As Bearer it reads bob (the Authorization
    header does not reach bob; the actor does). 3. Revoked, it gets 401 within seconds.
    4. Someone else's Authorization passes through to the tenant untouched."""
    token = gateway.cli("user", "token", ANN, "--name", "export").stdout.strip()
    assert token.startswith("gwt_")
    bearer = {"authorization": f"Bearer {token}"}
    rows = browser.get(f"bob.{DOMAIN}", "/data/secrets.json?_shape=array", headers=bearer)
    assert rows.json() == [{"id": 1, "word": "bob-only"}]
    seen = echoed(browser, "bob", bearer)
    assert "authorization" not in seen
    listed = gateway.cli("user", "tokens", ANN, "--json").stdout
    token_id = re.search(r'"id": "(\w+)"', listed).group(1)  # type: ignore[union-attr]
    assert '"name": "export"' in listed
    gateway.cli("user", "revoke-token", token_id)
    wait_until(lambda: browser.get(f"bob.{DOMAIN}", "/data.json",
                                   headers=bearer).status_code == 401, timeout=10,
               message="the revoked token to be refused")
    refused = browser.get(f"bob.{DOMAIN}", "/data.json", headers=bearer)
    assert refused.json()["message"] == (
        "This API token is not valid: it was revoked, or its account was removed.")
    theirs = echoed(browser, "alice", {"authorization": "Bearer dstok_theirs"})
    assert theirs["authorization"] == ["Bearer dstok_theirs"]


def test_membership_and_account_changes_apply_within_seconds(browser: Browser,
                                                             gateway: RunningGateway) -> None:
    browser.sign_in(ANN)
    assert browser.actor("bob") == {"id": ANN, "role": "member"}
    gateway.cli("tenant", "members", "bob", "--remove", ANN)
    wait_until(lambda: browser.actor("bob") == 403, timeout=10, message="ann out of bob")
    assert browser.actor("carol") == {"id": ANN, "role": "member"}
    gateway.cli("user", "remove", ANN)
    wait_until(lambda: browser.actor("carol") == 401, timeout=10, message="ann's session gone")


def test_invitation(browser: Browser, gateway: RunningGateway) -> None:
    """1. `gateway user invite` prints a link. 2. The page asks for a password (twice, long
    enough). 3. Accepting signs the new user in, a member of bob. 4. The link is used up."""
    link = gateway.cli("user", "invite", "new@example.com", "--tenant", "bob").stdout.strip()
    path = urlsplit(link).path
    assert link == f"http://{DOMAIN}{path}" and path.startswith("/-/invite/")
    fields = browser.form(path)
    page = browser.get(DOMAIN, path)
    assert 'value="new@example.com"' in page.text
    mismatch = browser.request("POST", DOMAIN, path,
                               data={**fields, "password": PASSWORD, "confirm": "other"})
    assert "The two passwords are not the same." in mismatch.text
    short = browser.request("POST", DOMAIN, path,
                            data={**fields, "password": "short", "confirm": "short"})
    assert short.status_code == 400
    assert "The password must have at least 10 characters." in short.text
    accepted = browser.request("POST", DOMAIN, path,
                               data={**fields, "password": PASSWORD, "confirm": PASSWORD})
    assert accepted.status_code == 303
    assert browser.follow(accepted.headers["location"])[-1][0] == tenant_url(browser, "bob")
    assert browser.actor("bob") == {"id": "new@example.com", "role": "member"}
    used = browser.get(DOMAIN, path)
    assert used.status_code == 404
    assert "This invitation link is not valid" in used.text
    listed = gateway.cli("user", "list").stdout
    assert re.search(r"new@example.com\s+bob\s", listed)


def test_cli_errors_say_what_to_do(gateway: RunningGateway) -> None:
    cases = [
        (("user", "add", ANN, "--password-stdin"), "Error: ann@example.com already has an"
         " account"),
        (("user", "add", "not-an-email", "--password-stdin"),
         "Error: 'not-an-email' is not an email address"),
        (("tenant", "members", "bob", "--add", "who@example.com"),
         "Error: no account for who@example.com (see `gateway user list`)"),
        (("tenant", "members", "nope", "--add", ANN),
         "Error: no tenant 'nope' (see `gateway tenant list`)"),
        (("user", "invite", ANN, "--tenant", "bob"), "Error: ann@example.com already has an"
         " account; add it to a tenant with `gateway tenant members NAME --add EMAIL`"),
        (("tenant", "add", "dave", "--member", "who@example.com"),
         "Error: no account for who@example.com: add it with `gateway user add"
         " who@example.com`, or invite it with `gateway user invite who@example.com"
         " --tenant NAME`"),
        (("user", "revoke-token", "nope"),
         "Error: no API token with id 'nope' (see `gateway user tokens`)"),
    ]
    for args, message in cases:
        result = gateway.cli(*args, check=False, input=PASSWORD + "\n")
        assert result.returncode == 1, args
        assert result.stderr.strip() == message, args
    assert not (gateway.site.tenants_dir / "dave").exists()


def test_tenant_add_with_members(gateway: RunningGateway) -> None:
    gateway.cli("tenant", "add", "dave", "--member", ANN, "--member", JOE)
    assert gateway.cli("tenant", "members", "dave").stdout.split() == [ANN, JOE]
    gateway.cli("tenant", "members", "dave", "--remove", JOE)
    assert json.loads(gateway.cli("tenant", "members", "dave", "--json").stdout) == [
        {"email": ANN, "role": "member"}]


def test_password_hash_is_upgraded_when_parameters_change(site: Site,
                                                          gateway: RunningGateway) -> None:
    """ann's hash was made with t=1; with password_time_cost = 2 and a reload, her next
    sign-in stores a t=2 hash (and still works after)."""
    def stored() -> str:
        with sqlite3.connect(site.root / "state" / "accounts.db") as db:
            row = db.execute("SELECT password_hash FROM users WHERE email = ?", (ANN,)).fetchone()
        db.close()
        return str(row[0])

    assert ",t=1," in stored()
    site.write_config(auth={"password_time_cost": 2})
    gateway.cli("reload")
    browser = Browser(gateway)
    try:
        assert browser.sign_in(ANN).status_code == 303
        assert ",t=2," in stored()
        assert browser.sign_in(ANN).status_code == 303
    finally:
        browser.close()


def test_idle_sessions_end(site: Site, start_gateway: Any) -> None:
    gateway = start(site, start_gateway, session_idle_s=2.0, session_cache_s=0.2)
    browser = Browser(gateway)
    try:
        browser.sign_in(ANN)
        assert browser.actor("bob") == {"id": ANN, "role": "member"}
        time.sleep(2.5)
        assert browser.actor("bob") == 401
    finally:
        browser.close()


def test_accounts_database_is_private(site: Site, gateway: RunningGateway) -> None:
    path: Path = site.root / "state" / "accounts.db"
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_removed_tenants_members_do_not_carry_over_to_a_new_one(gateway: RunningGateway) -> None:
    """1. dave has member ann. 2. `tenant remove dave` ends that membership (and says so).
    3. A new tenant dave starts with no members."""
    gateway.cli("tenant", "add", "dave", "--member", ANN)
    removed = gateway.cli("tenant", "remove", "dave").stdout
    assert f"Memberships ended: {ANN}" in removed
    gateway.cli("tenant", "add", "dave")
    assert gateway.cli("tenant", "members", "dave", "--json").stdout.split() == ["[]"]
