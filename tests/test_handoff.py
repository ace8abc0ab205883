"""The hand-off that brings a sign-in to a tenant host, over HTTP, as an attacker would try it.

A browser that keeps the apex's cookie on the apex only (Chromium on `localhost`) is played by
class Browser with its domain cookies hidden from tenant hosts (`apex_only`). The flow
(auth/service.py) is: tenant -> apex sign-in -> tenant (state) -> apex (ticket) -> tenant.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from .conftest import RunningGateway, Site
from .test_auth import ANN, DOMAIN, JOE, Browser, start


@pytest.fixture
def gateway(site: Site, start_gateway: Any) -> RunningGateway:
    return start(site, start_gateway)


@pytest.fixture
def apex_only(gateway: RunningGateway) -> Iterator[Browser]:
    """A browser whose domain-wide cookies never reach tenant hosts (Chromium on localhost)."""
    browser = Browser(gateway)
    real = browser.cookie_header

    def header(host: str) -> str:
        if host.partition(":")[0] == DOMAIN:
            return real(host)
        shared = set(browser.domain_cookies)
        browser.domain_cookies.clear()
        try:
            return real(host)
        finally:
            browser.domain_cookies |= shared

    browser.cookie_header = header  # type: ignore[method-assign]
    yield browser
    browser.close()


def origin(gateway: RunningGateway, tenant: str | None) -> str:
    """The gateway's own public origin for `tenant` (the apex for None)."""
    return f"http://{gateway.host(tenant)}:{gateway.port}"


def landed(visits: list[tuple[str, Any]]) -> tuple[str, Any]:
    url, response = visits[-1]
    assert response.status_code == 200, (url, response.status_code, response.text[:300])
    return url, response


def ticket_urls(visits: list[tuple[str, Any]]) -> list[str]:
    return [url for url, _ in visits if "ticket=" in url]


# --- issue 12, Broken 3: a sign-in link must not hand a session to someone else -------------


def test_tickets_go_only_to_the_gateways_own_origin(gateway: RunningGateway,
                                                   apex_only: Browser) -> None:
    """1. ann is signed in on the apex. 2. She opens an attacker's link:
    /-/login?next=http://bob.<domain>:9999/&state=<attacker's>. 3. Every redirect that carries a
    ticket or a pass goes to the gateway's own origin for bob (its configured scheme and its
    listening port), never to :9999. 4. She lands on bob, signed in."""
    victim = apex_only
    victim.sign_in(ANN)
    link = "/-/login?" + urlencode({"next": f"http://bob.{DOMAIN}:9999/data",
                                    "state": "a" * 32})
    visits = victim.follow(f"{origin(gateway, None)}{link}")
    for url, _ in visits[1:]:
        assert url.startswith((origin(gateway, "bob") + "/", origin(gateway, None) + "/")), url
    assert landed(visits)[0] == f"{origin(gateway, 'bob')}/data"
    assert victim.get(f"bob.{DOMAIN}", "/-/actor.json").json() == {
        "actor": {"id": ANN, "role": "member"}}


def test_a_sign_in_link_gives_the_attacker_nothing(gateway: RunningGateway,
                                                   apex_only: Browser) -> None:
    """1. The attacker holds a state cookie of their choosing on bob's host. 2. ann (signed in)
    opens /-/login?next=<bob, on port 9999 or the gateway's own>&state=<that state>. 3. Whatever
    ticket her browser is sent, the attacker (assumed to see the URL before her browser uses
    it) redeems it with their state: they get no session, and bob does not know them.
    4. ann's browser, following on, ends on the sign-in page saying what happened."""
    victim = apex_only
    victim.sign_in(ANN)
    attacker = Browser(gateway)
    try:
        state = "a" * 32
        attacker.cookies[(f"bob.{DOMAIN}", "gateway_state")] = state
        for next_url in (f"http://bob.{DOMAIN}:9999/", f"http://bob.{DOMAIN}:{gateway.port}/",
                         f"http://bob.{DOMAIN}/"):
            victim.cookies.pop((f"bob.{DOMAIN}", "gateway_session"), None)
            link = "/-/login?" + urlencode({"next": next_url, "state": state})
            visits = victim.follow(f"{origin(gateway, None)}{link}", until="ticket=")
            ticket_url = visits[-1][0] if "ticket=" in visits[-1][0] else (
                visits[-1][1].headers.get("location", ""))
            assert "ticket=" in ticket_url, [url for url, _ in visits]
            parts = urlsplit(ticket_url)
            stolen = attacker.get(f"bob.{DOMAIN}", f"{parts.path}?{parts.query}")
            assert stolen.status_code == 303
            assert attacker.cookie("gateway_session", f"bob.{DOMAIN}") is None, ticket_url
            assert attacker.get(f"bob.{DOMAIN}", "/-/actor.json").status_code == 401
            url, page = landed(victim.follow(ticket_url))
            assert url.startswith(f"{origin(gateway, None)}/-/login?")
            assert "Signing in to bob did not finish" in page.text
    finally:
        attacker.close()


def test_a_state_from_the_url_is_never_trusted(gateway: RunningGateway,
                                               apex_only: Browser) -> None:
    """The apex binds a ticket only to a state it has seen vouched for by a pass it made for
    this very session: ann's link with the attacker's state and a pass made for joe's session
    leads to a fresh hand-off, never to a ticket bound to that state."""
    joe = Browser(gateway)
    try:
        joe.sign_in(JOE)
        to_carol = joe.get(DOMAIN, "/-/login?" + urlencode(
            {"next": f"http://carol.{DOMAIN}/"}))
        joes_pass = parse_qs(urlsplit(to_carol.headers["location"]).query)["pass"][0]
    finally:
        joe.close()
    victim = apex_only
    victim.sign_in(ANN)
    for forged_pass in (joes_pass, "", "1.abc", "x" * 80):
        link = "/-/login?" + urlencode({"next": f"http://carol.{DOMAIN}/", "state": "a" * 32,
                                        "pass": forged_pass})
        first = victim.get(DOMAIN, link)
        assert first.status_code == 303
        location = urlsplit(first.headers["location"])
        assert location.path == "/-/gateway-signin"
        assert "ticket" not in parse_qs(location.query), forged_pass


# --- issue 13, item 1: sign-in always lands ---------------------------------------------------


def test_back_to_the_sign_in_page_after_signing_in_lands(gateway: RunningGateway,
                                                         apex_only: Browser) -> None:
    """1. bob sends ann to sign in; she signs in and lands on bob. 2. Back to the sign-in page
    (reloaded: it is no-store): she lands on bob again, signed in."""
    browser = apex_only
    first = browser.follow(f"{origin(gateway, 'bob')}/data")
    login_url = landed(first)[0]
    assert login_url.startswith(f"{origin(gateway, None)}/-/login?")
    signed_in = browser.sign_in(ANN, next_url=parse_qs(urlsplit(login_url).query)["next"][0])
    visits = browser.follow(signed_in.headers["location"])
    assert landed(visits)[0] == f"{origin(gateway, 'bob')}/data"
    again = browser.follow(login_url)
    assert landed(again)[0] == f"{origin(gateway, 'bob')}/data"


def test_two_tabs_waiting_on_sign_in_both_land(gateway: RunningGateway,
                                               apex_only: Browser) -> None:
    """1. Two tabs open bob and are sent to the sign-in page. 2. ann signs in in the first.
    3. The second is reloaded: it lands on bob. 4. Its form (still on screen) is submitted too:
    it lands on bob as well."""
    browser = apex_only
    tab_one = landed(browser.follow(f"{origin(gateway, 'bob')}/data"))[0]
    tab_two = landed(browser.follow(f"{origin(gateway, 'bob')}/data/secrets"))[0]
    next_one = parse_qs(urlsplit(tab_one).query)["next"][0]
    next_two = parse_qs(urlsplit(tab_two).query)["next"][0]
    assert landed(browser.follow(browser.sign_in(ANN, next_url=next_one)
                                 .headers["location"]))[0] == next_one
    assert landed(browser.follow(tab_two))[0] == next_two
    assert landed(browser.follow(browser.sign_in(ANN, next_url=next_two)
                                 .headers["location"]))[0] == next_two


def test_a_used_or_unknown_ticket_leads_to_the_sign_in_page_with_a_sentence(
        gateway: RunningGateway, apex_only: Browser) -> None:
    """A ticket URL opened again (or made up) never ends on a dead end: signed in, the browser
    lands where it was going; with no session, on the sign-in page saying what happened."""
    browser = apex_only
    browser.sign_in(ANN)
    visits = browser.follow(f"{origin(gateway, None)}/-/login?next="
                            f"{origin(gateway, 'bob')}/data")
    used = ticket_urls(visits)
    assert len(used) == 1
    assert landed(browser.follow(used[0]))[0] == f"{origin(gateway, 'bob')}/data"
    stranger = Browser(gateway)
    try:
        visits = stranger.follow(used[0])
        url, page = landed(visits)
        assert url.startswith(f"{origin(gateway, None)}/-/login?")
        assert ("Signing in to bob did not finish: the sign-in link had expired or was used"
                " already. Sign in again to go on." in html.unescape(page.text))
        assert 'name="email"' in page.text
    finally:
        stranger.close()


def test_a_session_that_ended_says_so(gateway: RunningGateway, apex_only: Browser) -> None:
    """1. ann signs in and lands on bob. 2. She signs out on the apex. 3. bob sends her to the
    sign-in page, which says her session has ended; signing in lands her on bob."""
    browser = apex_only
    browser.sign_in(ANN)
    bob = f"{origin(gateway, 'bob')}/data"
    assert landed(browser.follow(bob))[0] == bob
    browser.sign_out()
    url, page = landed(browser.follow(bob))
    assert url.startswith(f"{origin(gateway, None)}/-/login?")
    assert "Your session has ended. Sign in again to see bob." in html.unescape(page.text)
    assert "Sign in to see bob" in html.unescape(page.text)
    next_url = parse_qs(urlsplit(url).query)["next"][0]
    assert landed(browser.follow(browser.sign_in(ANN, next_url=next_url)
                                 .headers["location"]))[0] == bob


def test_the_sign_in_page_names_only_sites_that_exist(gateway: RunningGateway) -> None:
    """A link can put any host in `next`: the page names bob, but not a made-up 'paypal'."""
    stranger = Browser(gateway)
    try:
        for name, heading in (("bob", "Sign in to see bob"), ("paypal", "Sign in")):
            page = stranger.get(DOMAIN, "/-/login?" + urlencode(
                {"next": f"http://{name}.{DOMAIN}/", "reason": "ended"}))
            assert f"<h1>{heading}</h1>" in page.text, name
            assert f"<title>{heading}</title>" in page.text
        assert "paypal" not in page.text.replace(f"paypal.{DOMAIN}", "")
    finally:
        stranger.close()
