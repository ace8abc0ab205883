"""The dashboard, /-/admin, in a real browser (Playwright, Debian's headless Chromium)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import RunningGateway, Site, sign_in
from .test_auth import FAST_HASHING, PASSWORD

ADMIN, OTHER = "ann@example.com", "joe@example.com"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"

pytestmark = pytest.mark.browser


@pytest.fixture
def gateway(site: Site, start_gateway: Any) -> RunningGateway:
    site.write_config(domain="localhost", auth=FAST_HASHING)
    for name in ("alice", "bob", "carol"):
        site.add_tenant(name)
    (site.tenants_dir / "carol" / "metadata.json").write_text("{not json")
    gateway: RunningGateway = start_gateway()
    for email in (ADMIN, OTHER):
        gateway.cli("user", "add", email, "--password-stdin", input=PASSWORD + "\n")
    gateway.wait_running("alice", "bob")
    return gateway


def test_admin_command(gateway: RunningGateway) -> None:
    assert gateway.cli("user", "admin", ADMIN).stdout == (
        f"{ADMIN} is an admin: the dashboard is at /-/admin on the apex domain.\n")
    result = gateway.cli("user", "admin", "nobody@example.com", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: no account for nobody@example.com")
    assert gateway.cli("user", "admin", ADMIN, "--remove").stdout == (
        f"{ADMIN} is no longer an admin.\n")
    result = gateway.cli("user", "admin", ADMIN, "--remove", check=False)
    assert result.stderr == f"Error: {ADMIN} is not an admin\n"


def test_dashboard_for_admins_on_a_desktop_and_a_phone(chromium: Any,
                                                        gateway: RunningGateway) -> None:
    """1. Signed out: /-/admin sends to the sign-in page. 2. A signed-in account that is not an
    admin gets 403 and what to do. 3. An admin sees every tenant with its state, charts and
    last error (carol's broken metadata), the isolation and a failed reload; search narrows
    the table. 4. On a phone-sized screen each tenant is a card that fits the width.
    Screenshots go to test-artifacts/."""
    gateway.cli("user", "admin", ADMIN)
    for _ in range(5):
        gateway.get("alice", "/data/items.json")
    (gateway.site.tenants_dir / "carol" / "metadata.json").write_text("{still not json")
    assert gateway.cli("reload", check=False).returncode == 1  # a failed reload to show
    apex = f"http://localhost:{gateway.port}"
    ARTIFACTS.mkdir(exist_ok=True)
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{apex}/-/admin")
        assert page.url == f"{apex}/-/login?next=/-/admin"
        sign_in(page, apex, OTHER, PASSWORD, then=f"{apex}/-/admin")
        assert f"{OTHER} is not an admin." in page.locator("main").inner_text()
        context.clear_cookies()

        sign_in(page, apex, ADMIN, PASSWORD, then=f"{apex}/-/admin")
        rows = page.locator("table.tenants tbody tr")
        assert rows.count() == 3
        alice = rows.filter(has_text="alice")
        assert alice.locator("td[data-label=State]").inner_text() == "running"
        assert alice.locator("svg.spark").count() == 2
        chart = alice.locator("svg.spark").first.get_attribute("aria-label") or ""
        assert chart.startswith("requests a minute: last 5,")
        carol = rows.filter(has_text="carol")
        assert "tenant 'carol' exited with status 1" in carol.locator(
            "td[data-label='Last error']").inner_text()
        summary = page.locator(".summary").inner_text()
        assert "Tenants 3:" in summary and "Certificate none: tls.mode is off" in summary
        assert "failed; carol: tenant 'carol' exited" in page.locator("ul.reloads").inner_text()
        page.screenshot(path=str(ARTIFACTS / "admin-desktop.png"), full_page=True)

        page.get_by_label("Find a tenant").fill("bo")
        page.get_by_role("button", name="Search").click()
        page.wait_for_url(f"{apex}/-/admin?q=bo")
        assert [r.strip() for r in page.locator("table.tenants tbody td[data-label=Tenant]")
                .all_inner_texts()] == ["bob"]

        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(f"{apex}/-/admin")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert page.locator("table.tenants thead").is_hidden()
        page.screenshot(path=str(ARTIFACTS / "admin-phone.png"), full_page=True)
    finally:
        context.close()
