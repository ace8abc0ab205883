"""Teams, accounts, password resets and the way around, in a real browser (Playwright driving
Debian's headless Chromium), at desktop (1280x800) and phone (390x844) sizes. Emails go
through a real SMTP server (aiosmtpd) started by the tests; screenshots go to test-artifacts/.

The site's domain is gw.test, which Chromium is told to resolve to loopback: a domain like a
real one, whose cookies reach every tenant host (on `localhost` they do not: that is the
sign-in hand-off's business, test_auth_browser.py).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import CHROMIUM, CHROMIUM_ARGS, RunningGateway, Site, sign_in, wait_until
from .smtp_server import Mailbox, link_in, smtp_server
from .test_accounts import NEW_PASSWORD, start
from .test_auth import ANN, JOE, PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(params=sorted(VIEWPORTS))
def viewport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    with smtp_server() as box:
        yield box


@pytest.fixture
def chromium() -> Iterator[Any]:
    """Chromium resolving gw.test and its subdomains to loopback."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip("Chromium is not installed (`make test` installs it with apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            *CHROMIUM_ARGS, "--host-resolver-rules=MAP gw.test 127.0.0.1,"
            " MAP *.gw.test 127.0.0.1"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def gateway(site: Site, start_gateway: Any, mailbox: Mailbox) -> RunningGateway:
    """test_accounts' site (alice public with a title, bob private owned by ann with joe a
    member, empty owned by ann), with SMTP through the test's mailbox."""
    return start(site, start_gateway, mailbox.port)


class Session:
    """A browser context at one viewport, and its screenshots."""

    def __init__(self, chromium: Any, viewport: str, test: str) -> None:
        self.context = chromium.new_context(viewport=VIEWPORTS[viewport])
        self.page = self.context.new_page()
        self.prefix = f"{test}-{viewport}"

    def shot(self, step: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{self.prefix}-{step}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def browse(chromium: Any, viewport: str, request: pytest.FixtureRequest
           ) -> Iterator[Any]:
    sessions: list[Session] = []

    def open_session(who: str = "") -> Session:
        name = request.node.originalname.removeprefix("test_") + (f"-{who}" if who else "")
        session = Session(chromium, viewport, name)
        sessions.append(session)
        return session

    yield open_session
    for session in sessions:
        session.close()


def urls(gateway: RunningGateway) -> tuple[str, str, str]:
    port = gateway.port
    return (f"http://gw.test:{port}", f"http://bob.gw.test:{port}",
            f"http://alice.gw.test:{port}")


def open_menu(page: Any) -> None:
    page.locator("details.nav-menu summary").click()


def test_owner_invites_a_teammate(browse: Any, gateway: RunningGateway,
                                  mailbox: Mailbox) -> None:
    """1. ann signs in; bob's menu has Team; the Team page lists ann (owner) and joe.
    2. She invites new@example.com: an email arrives with a link. 3. In another browser the
    link creates the account and lands on bob. 4. ann makes the newcomer an owner, then
    removes them."""
    apex, bob, _ = urls(gateway)
    ann = browse()
    page = ann.page
    sign_in(page, apex, ANN, PASSWORD, then=f"{bob}/")
    open_menu(page)
    page.get_by_role("link", name="Team").click()
    page.wait_for_url(f"{apex}/-/team/bob")
    assert page.get_by_role("heading", level=1).inner_text() == "Team of bob"
    assert page.get_by_role("row", name=f"{ANN} (you) owner").is_visible()
    page.get_by_label("Email address").fill("new@example.com")
    page.get_by_role("button", name="Invite").click()
    assert page.get_by_role("status").inner_text() == (
        "Invitation made for new@example.com. We have emailed them.")
    ann.shot("invited")
    [message] = wait_until(lambda: mailbox.to("new@example.com"), timeout=10,
                           message="the invitation email")

    newcomer = browse("newcomer")
    other = newcomer.page
    other.goto(link_in(message))
    assert other.get_by_role("heading", level=1).inner_text() == "Create your account"
    other.get_by_label("Password", exact=True).fill(PASSWORD)
    other.get_by_label("The same password again").fill(PASSWORD)
    newcomer.shot("create-account")
    other.get_by_role("button", name="Create account").click()
    other.wait_for_url(f"{bob}/")
    assert other.locator(".actor").inner_text() == "new@example.com"
    newcomer.shot("landed")

    page.reload()
    page.get_by_role("button", name="Make new@example.com an owner").click()
    page.wait_for_url(f"{apex}/-/team/bob?done=role")
    assert page.get_by_role("row", name="new@example.com owner").is_visible()
    ann.shot("promoted")
    page.get_by_role("button", name="Remove new@example.com").click()
    page.wait_for_url(f"{apex}/-/team/bob?done=removed")
    assert page.get_by_role("status").inner_text() == "The member has been removed."
    assert "new@example.com" not in page.locator("table").inner_text()


def test_account_page_password_and_tokens(browse: Any, gateway: RunningGateway) -> None:
    """1. joe opens his account page from the menu of a tenant. 2. He changes his password.
    3. He creates an API token (shown once), which then works; he revokes it."""
    apex, bob, _ = urls(gateway)
    joe = browse()
    page = joe.page
    sign_in(page, apex, JOE, PASSWORD, then=f"{bob}/")
    open_menu(page)
    page.get_by_role("link", name="Your account").click()
    page.wait_for_url(f"{apex}/-/account")
    assert page.get_by_role("row", name=re.compile(r"\(this browser\)")).is_visible()
    joe.shot("account")
    page.get_by_label("Current password").fill(PASSWORD)
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("The new password again").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Change password").click()
    page.wait_for_url(f"{apex}/-/account?done=password")
    assert page.get_by_role("status").first.inner_text() == (
        "Your password has been changed. Your other sessions have ended.")

    page.get_by_label("Name of a new token").fill("nightly export")
    page.get_by_label("Expires").select_option("90")
    page.get_by_role("button", name="Create token").click()
    token = page.locator("#token-value").inner_text()
    assert token.startswith("gwt_")
    joe.shot("token")
    headers = {"authorization": f"Bearer {token}", "host": "bob.gw.test"}
    assert gateway.client.get("/-/actor.json", headers=headers).json() == {
        "actor": {"id": JOE, "role": "member"}}
    page.goto(f"{apex}/-/account")
    assert token not in page.content()
    page.get_by_role("button", name="Revoke nightly export").click()
    page.wait_for_url(f"{apex}/-/account?done=revoked")
    assert page.get_by_text("You have no API tokens.").is_visible()
    wait_until(lambda: gateway.client.get("/-/actor.json", headers=headers).status_code == 401,
               timeout=10, message="the revoked token refused")


def test_forgot_password_by_email(browse: Any, gateway: RunningGateway,
                                  mailbox: Mailbox) -> None:
    """1. From the sign-in page, "Forgot your password?". 2. The answer is the same for any
    address. 3. The emailed link, opened in Chromium, sets a new password and signs in.
    4. The link is used up."""
    apex, _, _ = urls(gateway)
    joe = browse()
    page = joe.page
    page.goto(f"{apex}/-/login")
    page.get_by_role("link", name="Forgot your password?").click()
    page.wait_for_url(f"{apex}/-/forgot")
    page.get_by_label("Email address").fill(JOE)
    joe.shot("forgot")
    page.get_by_role("button", name="Send me a link").click()
    assert page.get_by_role("status").inner_text() == (
        f"If {JOE} has an account here, we have sent it a link to choose a new password. It"
        " can take a few minutes to arrive; check your spam folder too.")
    joe.shot("sent")
    [message] = wait_until(lambda: mailbox.to(JOE), timeout=10, message="the reset email")
    link = link_in(message)
    page.goto(link)
    page.get_by_label("New password").fill(NEW_PASSWORD)
    page.get_by_label("The same password again").fill(NEW_PASSWORD)
    joe.shot("reset")
    page.get_by_role("button", name="Set password").click()
    page.wait_for_url(f"{apex}/-/account?done=password")
    assert JOE in page.locator("header").inner_text()
    page.goto(link)
    assert page.get_by_role("heading", level=1).inner_text() == "Link not valid"
    gateway.wait_for_event("password_reset_done", user=JOE)


def test_a_way_around(browse: Any, gateway: RunningGateway) -> None:
    """1. The apex lists sites with title, description and size. 2. An anonymous visitor on
    alice finds "Sign in" in the menu, and it brings them back. 3. The empty tenant welcomes
    its owner with an upload button. 4. A 403 says "Members only" and leads on."""
    apex, _, alice = urls(gateway)
    visitor = browse()
    page = visitor.page
    page.goto(f"{apex}/")
    site = page.get_by_role("listitem").filter(has_text="Alice's data")
    assert "Rainfall by month." in site.inner_text()
    assert re.search(r"\d+(\.\d)? KB", site.inner_text())
    visitor.shot("home")
    site.get_by_role("link", name="Alice's data").click()
    page.wait_for_url(f"{alice}/")
    open_menu(page)
    visitor.shot("menu")
    page.get_by_role("link", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(f"{apex}/-/login?")))
    page.get_by_label("Email address").fill(ANN)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{alice}/")

    empty = f"http://empty.gw.test:{gateway.port}"
    page.goto(f"{empty}/")
    assert page.get_by_role("heading", level=1).inner_text() == "empty"
    assert page.get_by_text("Welcome! This site has no data yet.").is_visible()
    visitor.shot("welcome")
    page.locator("section.content").get_by_role("link", name="Upload CSV files").click()
    page.wait_for_url(f"{empty}/-/upload")

    page.goto(f"{alice}/-/upload")
    assert page.title() == "Members only"
    visitor.shot("members-only")
    page.get_by_role("link", name="All sites").click()
    page.wait_for_url(f"{apex}/")
