"""Sign-in always lands, in a real browser (issue 13, items 1 and 2): Chromium on `localhost`,
where the apex's cookie stays on the apex, so every tenant page goes through the hand-off.

Each path runs at desktop (1280x800) and phone (390x844) size, and leaves a screenshot of where
it ended in test-artifacts/. One gateway serves the whole module: each test has its own browser
context (its own cookies), so tests do not see each other's sessions.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import RunningGateway, Site, sign_in
from .test_auth import FAST_HASHING, PASSWORD

EMAIL = "ann@example.com"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def gateway() -> Iterator[RunningGateway]:
    """alice public, bob private; ann a member of both."""
    root = Path(tempfile.mkdtemp(prefix="gw-", dir="/tmp"))
    os.chmod(root, 0o755)
    site = Site(root)
    site.write_config(domain="localhost", auth=FAST_HASHING)
    site.add_tenant("alice")
    site.add_tenant("bob", public=False, tables={"secrets": [{"id": 1, "word": "bob-only"}]})
    running = RunningGateway(site)
    try:
        running.cli("user", "add", EMAIL, "--password-stdin", input=PASSWORD + "\n")
        for tenant in ("alice", "bob"):
            running.cli("tenant", "members", tenant, "--add", EMAIL)
        running.wait_running("alice", "bob")
        yield running
    finally:
        running.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=sorted(VIEWPORTS))
def context(request: pytest.FixtureRequest, chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport=VIEWPORTS[request.param])
    context.viewport_name = request.param
    yield context
    context.close()


def shot(page: Any, context: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"signin-{name}-{context.viewport_name}.png"),
                    full_page=True)


def urls(gateway: RunningGateway) -> tuple[str, str, str]:
    port = gateway.port
    return (f"http://localhost:{port}", f"http://alice.localhost:{port}",
            f"http://bob.localhost:{port}")


def fill_and_submit(page: Any) -> None:
    page.get_by_label("Email address").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def actor(page: Any, origin: str) -> Any:
    page.goto(f"{origin}/-/actor.json")
    return json.loads(page.locator("body").inner_text())["actor"]


def test_sign_in_from_a_private_page_lands_there(gateway: RunningGateway, context: Any) -> None:
    """1. Open a bob table: the sign-in page names bob. 2. Sign in: back on that table, where
    Datasette shows ann."""
    apex, _, bob = urls(gateway)
    page = context.new_page()
    page.goto(f"{bob}/data/secrets")
    assert page.url.startswith(f"{apex}/-/login?")
    assert page.get_by_role("heading").inner_text() == "Sign in to see bob"
    assert page.title() == "Sign in to see bob"
    fill_and_submit(page)
    page.wait_for_url(f"{bob}/data/secrets")
    assert page.locator(".actor").inner_text() == EMAIL
    assert "bob-only" in page.content()
    shot(page, context, "landed")


def test_back_after_signing_in_lands(gateway: RunningGateway, context: Any) -> None:
    """1. Open bob, sign in, land on bob. 2. Back (to the sign-in page): the browser goes on
    to bob, signed in, instead of a "link not valid" page."""
    _, _, bob = urls(gateway)
    page = context.new_page()
    page.goto(f"{bob}/data")
    fill_and_submit(page)
    page.wait_for_url(f"{bob}/data")
    page.go_back()
    page.wait_for_url(f"{bob}/data")
    assert page.locator(".actor").inner_text() == EMAIL
    page.reload()
    assert page.url == f"{bob}/data"
    shot(page, context, "back")


def test_a_second_tab_waiting_on_sign_in_lands_when_reloaded(gateway: RunningGateway,
                                                             context: Any) -> None:
    """1. Two tabs open bob and show the sign-in page. 2. Sign in in the first. 3. Reload the
    second: it lands on its own bob page, signed in."""
    apex, _, bob = urls(gateway)
    first, second = context.new_page(), context.new_page()
    first.goto(f"{bob}/data")
    second.goto(f"{bob}/data/secrets")
    assert second.url.startswith(f"{apex}/-/login?")
    fill_and_submit(first)
    first.wait_for_url(f"{bob}/data")
    second.reload()
    second.wait_for_url(f"{bob}/data/secrets")
    assert second.locator(".actor").inner_text() == EMAIL
    shot(second, context, "second-tab-reloaded")


def test_a_second_tabs_form_lands_too(gateway: RunningGateway, context: Any) -> None:
    """1. Two tabs show the sign-in page for bob. 2. Sign in in both, one after the other: each
    lands on its own bob page, and the first tab's page still works."""
    _, _, bob = urls(gateway)
    first, second = context.new_page(), context.new_page()
    first.goto(f"{bob}/data")
    second.goto(f"{bob}/data/secrets")
    fill_and_submit(first)
    first.wait_for_url(f"{bob}/data")
    fill_and_submit(second)
    second.wait_for_url(f"{bob}/data/secrets")
    assert second.locator(".actor").inner_text() == EMAIL
    first.reload()
    first.wait_for_url(f"{bob}/data")
    assert first.locator(".actor").inner_text() == EMAIL
    shot(second, context, "second-tab-form")


def test_a_used_hand_off_link_lands_or_says_what_happened(gateway: RunningGateway, chromium: Any,
                                                         context: Any) -> None:
    """1. Sign in through bob, noting the one-time link the browser passed through. 2. Open
    that link again: still lands on bob. 3. Opened in another browser (no session there): the
    sign-in page says what happened, and signing in goes on to bob."""
    apex, _, bob = urls(gateway)
    page = context.new_page()
    tickets: list[str] = []
    page.on("request", lambda request: tickets.append(request.url)
            if "ticket=" in request.url else None)
    page.goto(f"{bob}/data")
    fill_and_submit(page)
    page.wait_for_url(f"{bob}/data")
    assert len(tickets) == 1
    page.goto(tickets[0])
    page.wait_for_url(f"{bob}/data")
    assert page.locator(".actor").inner_text() == EMAIL
    other = chromium.new_context(viewport=VIEWPORTS[context.viewport_name])
    try:
        stranger = other.new_page()
        stranger.goto(tickets[0])
        assert stranger.url.startswith(f"{apex}/-/login?")
        assert stranger.get_by_role("status").inner_text() == (
            "Signing in to bob did not finish: the sign-in link had expired or was used already."
            " Sign in again to go on.")
        other.viewport_name = context.viewport_name
        shot(stranger, other, "used-link")
        fill_and_submit(stranger)
        stranger.wait_for_url(f"{bob}/data")
    finally:
        other.close()


def test_a_session_that_ended_says_so(gateway: RunningGateway, context: Any) -> None:
    """1. Sign in, land on bob. 2. Sign out in another tab. 3. Reload bob: the sign-in page
    says the session has ended. 4. Sign in again: back on bob."""
    apex, _, bob = urls(gateway)
    page = context.new_page()
    page.goto(f"{bob}/data")
    fill_and_submit(page)
    page.wait_for_url(f"{bob}/data")
    other_tab = context.new_page()
    other_tab.goto(f"{apex}/-/logout")
    other_tab.get_by_role("button", name="Sign out").click()
    other_tab.wait_for_url(f"{apex}/-/login?signed_out=1")
    page.reload()
    assert page.url.startswith(f"{apex}/-/login?")
    assert page.get_by_role("status").inner_text() == (
        "Your session has ended. Sign in again to see bob.")
    shot(page, context, "session-ended")
    fill_and_submit(page)
    page.wait_for_url(f"{bob}/data")


def test_a_public_tenant_knows_its_signed_in_members(gateway: RunningGateway,
                                                     context: Any) -> None:
    """Issue 13, item 2 (`make demo`). 1. Sign in on the apex. 2. Follow the home page's link to
    public alice: Datasette shows ann, and /-/actor.json is ann. 3. In another browser, with no
    sign-in, alice answers anonymously (and at once, with no loop)."""
    apex, alice, _ = urls(gateway)
    page = context.new_page()
    sign_in(page, apex, EMAIL, PASSWORD)
    page.get_by_role("link", name="alice").click()
    page.wait_for_url(f"{alice}/")
    assert page.locator(".actor").inner_text() == EMAIL
    shot(page, context, "public-member")
    assert actor(page, alice) == {"id": EMAIL, "role": "member"}
    page.goto(f"{alice}/data/items")
    assert page.url == f"{alice}/data/items"


def test_a_public_tenant_serves_anonymous_visitors(gateway: RunningGateway,
                                                   context: Any) -> None:
    """No sign-in anywhere: 1. alice's pages open where asked, with no user; the check for a
    sign-in on the apex is made once, not on every page. 2. Back returns to the page before,
    not to the check. 3. A browser that keeps no cookie of alice's is checked once per arrival
    too, and is never caught in a loop."""
    _, alice, _ = urls(gateway)
    page = context.new_page()
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    page.goto(f"{alice}/data/items")
    page.wait_for_url(f"{alice}/data/items")
    assert page.locator(".actor").count() == 0
    shot(page, context, "public-anonymous")
    page.get_by_role("link", name="data", exact=True).first.click()
    page.wait_for_url(f"{alice}/data")
    page.go_back()
    page.wait_for_url(f"{alice}/data/items")
    page.go_back()  # past the check: it left nothing in the history to be caught by
    assert page.url == "about:blank"
    assert actor(page, alice) is None
    assert len([url for url in seen if "/-/login?" in url]) == 1

    def keep_no_cookies(route: Any) -> None:
        response = route.fetch(max_redirects=0)
        headers = {k: v for k, v in response.headers.items() if k != "set-cookie"}
        route.fulfill(response=response, headers=headers)

    page.route(f"{alice}/-/gateway-signin*", keep_no_cookies)
    page.context.clear_cookies()
    seen.clear()
    page.goto(f"{alice}/data")
    page.wait_for_url(f"{alice}/data")
    assert page.locator(".actor").count() == 0
    assert len([url for url in seen if "/-/login?" in url]) == 1
