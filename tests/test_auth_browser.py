"""Shared login in a real browser: Playwright driving Debian's headless Chromium.

The gateway serves the domain `localhost`, which Chromium resolves (with every *.localhost
name) to loopback by itself. Chromium keeps a `Domain=localhost` cookie on localhost only, so
this also covers the hand-off that brings the session to a tenant host (auth/service.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import RunningGateway, Site, sign_in
from .test_auth import FAST_HASHING, PASSWORD

EMAIL = "ann@example.com"

pytestmark = pytest.mark.browser


@pytest.fixture
def gateway(site: Site, start_gateway: Any) -> RunningGateway:
    site.write_config(domain="localhost", auth=FAST_HASHING)
    site.add_tenant("alice")
    site.add_tenant("bob", public=False, tables={"secrets": [{"id": 1, "word": "bob-only"}]})
    gateway: RunningGateway = start_gateway()
    gateway.cli("user", "add", EMAIL, "--password-stdin", input=PASSWORD + "\n")
    gateway.cli("tenant", "members", "bob", "--add", EMAIL)
    gateway.wait_running("alice", "bob")
    return gateway


def test_sign_in_open_private_tenant_sign_out(chromium: Any, gateway: RunningGateway) -> None:
    """1. Sign in on the apex; the home page lists bob. 2. Open bob: Datasette shows the user,
    and /-/actor.json is the user. 3. Datasette's "Log out" signs out of the gateway.
    4. bob turns the browser away, to the sign-in page."""
    apex = f"http://localhost:{gateway.port}"
    bob = f"http://bob.localhost:{gateway.port}"
    context = chromium.new_context()
    page = context.new_page()
    try:
        sign_in(page, apex, EMAIL, PASSWORD)
        assert page.get_by_role("link", name="bob").get_attribute("href") == f"{bob}/"
        assert EMAIL in page.locator("header").inner_text()

        page.get_by_role("link", name="bob").click()
        page.wait_for_url(f"{bob}/")
        assert page.locator(".actor").inner_text() == EMAIL
        assert "secrets" in page.content()
        page.goto(f"{bob}/-/actor.json")
        assert json.loads(page.locator("body").inner_text()) == {
            "actor": {"id": EMAIL, "role": "member"}}

        page.goto(f"{bob}/")
        page.locator("details.nav-menu summary").click()
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(f"{apex}/-/login?signed_out=1")
        assert "You have signed out." in page.content()

        page.goto(f"{bob}/data/secrets")
        assert page.url.startswith(f"{apex}/-/login?")
        assert page.get_by_role("button", name="Sign in").is_visible()
        assert "bob-only" not in page.content()
    finally:
        context.close()
