"""Uploading in a real browser: Playwright driving Debian's headless Chromium."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import RunningGateway, Site, sign_in
from .test_auth import FAST_HASHING, PASSWORD
from .test_auth_browser import EMAIL

pytestmark = pytest.mark.browser
ROWS = 1_000_000  # ~20 MB: enough for the bar to be seen moving


@pytest.fixture
def gateway(site: Site, start_gateway: Any) -> RunningGateway:
    site.write_config(domain="localhost", auth=FAST_HASHING)
    site.add_tenant("bob", public=False)
    gateway: RunningGateway = start_gateway()
    gateway.cli("user", "add", EMAIL, "--password-stdin", input=PASSWORD + "\n")
    gateway.cli("tenant", "members", "bob", "--add", EMAIL)
    gateway.wait_running("bob")
    return gateway


def test_upload_a_csv_watch_progress_open_the_table(chromium: Any,
                                                    gateway: RunningGateway,
                                                    tmp_path: Path) -> None:
    """1. Sign in; open bob; Datasette's menu links to the upload page. 2. Pick a CSV file of
    1,000,000 rows and upload it. 3. The progress bar moves and reaches its end, the rows are
    counted, and a link to the new table appears. 4. The link opens the table in Datasette."""
    csv = tmp_path / "Election results.csv"
    csv.write_text("precinct,votes,share\n" + "".join(
        f"P{i},{i % 977},{(i % 100) / 100}\n" for i in range(ROWS)))
    apex = f"http://localhost:{gateway.port}"
    bob = f"http://bob.localhost:{gateway.port}"
    context = chromium.new_context()
    page = context.new_page()
    try:
        sign_in(page, apex, EMAIL, PASSWORD, then=f"{bob}/")
        page.locator("details.nav-menu summary").click()
        page.get_by_role("link", name="Upload CSV files").click()
        page.wait_for_url(f"{bob}/-/upload")

        page.get_by_label("Files").set_input_files(str(csv))
        page.get_by_role("button", name="Upload").click()
        bar = page.get_by_role("progressbar", name="Upload of Election results.csv")
        seen = page.evaluate("""() => new Promise((resolve) => {
            const values = [];
            const timer = setInterval(() => {
                const bar = document.querySelector("ol.uploads progress");
                if (bar) values.push(bar.value);
                if (document.querySelector("ol.uploads a")) {
                    clearInterval(timer);
                    resolve(values);
                }
            }, 5);
        })""")
        assert any(0 < value < 1 for value in seen) and seen[-1] == 1
        assert bar.get_attribute("value") == "1"
        status = page.get_by_role("status")
        assert status.inner_text() == (
            f"Imported {ROWS:,} rows into data / election_results.")

        status.get_by_role("link").click()
        page.wait_for_url(f"{bob}/data/election_results")
        assert f"{ROWS:,} rows" in page.locator("h3").first.inner_text()
        assert page.locator("th.col-votes").is_visible()
    finally:
        context.close()
