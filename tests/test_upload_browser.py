"""Uploading in a real browser: Playwright driving Debian's headless Chromium, on a desktop
(1280x800) and a phone (390x844) screen. Screenshots go to test-artifacts/."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import RunningGateway, Site, sign_in
from .test_auth import FAST_HASHING, PASSWORD
from .test_auth_browser import EMAIL

pytestmark = pytest.mark.browser
ROWS = 1_000_000  # ~20 MB: enough for the bar to be seen moving
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
SCREENS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
RED, GREY = "rgb(198, 40, 40)", "rgb(154, 165, 173)"


@pytest.fixture
def gateway(site: Site, start_gateway: Any) -> RunningGateway:
    site.write_config(domain="localhost", auth=FAST_HASHING)
    site.add_tenant("bob", public=False)
    gateway: RunningGateway = start_gateway()
    gateway.cli("user", "add", EMAIL, "--password-stdin", input=PASSWORD + "\n")
    gateway.cli("tenant", "members", "bob", "--owner", EMAIL)  # owners delete tables
    gateway.wait_running("bob")
    return gateway


@pytest.fixture(params=list(SCREENS))
def screen(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def page(chromium: Any, gateway: RunningGateway, screen: str) -> Iterator[Any]:
    """bob's upload page, signed in, at the screen's size."""
    context = chromium.new_context(viewport=SCREENS[screen])
    page = context.new_page()
    bob = f"http://bob.localhost:{gateway.port}"
    try:
        sign_in(page, f"http://localhost:{gateway.port}", EMAIL, PASSWORD, then=f"{bob}/")
        page.goto(f"{bob}/-/upload")
        yield page
    finally:
        context.close()


def screenshot(page: Any, name: str, screen: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"upload-{name}-{screen}.png"), full_page=True)


def bar_colour(page: Any, index: int = 0) -> str:
    """The colour Chromium paints at the start of a bar (its filled part), read from a
    screenshot of the bar in the page's own canvas."""
    png = page.locator("ol.uploads progress").nth(index).screenshot()
    colour: str = page.evaluate("""async (data) => {
        const image = new Image();
        image.src = "data:image/png;base64," + data;
        await image.decode();
        const canvas = document.createElement("canvas");
        canvas.width = image.width;
        canvas.height = image.height;
        const context = canvas.getContext("2d");
        context.drawImage(image, 0, 0);
        const [r, g, b] = context.getImageData(4, image.height >> 1, 1, 1).data;
        return `rgb(${r}, ${g}, ${b})`;
    }""", base64.b64encode(png).decode())
    return colour


def big_csv(tmp_path: Path, name: str, rows: int) -> Path:
    csv = tmp_path / name
    csv.write_text("precinct,votes,share\n" + "".join(
        f"P{i},{i % 977},{(i % 100) / 100}\n" for i in range(rows)))
    return csv


def test_upload_a_csv_watch_progress_open_the_table(page: Any, gateway: RunningGateway,
                                                    screen: str, tmp_path: Path) -> None:
    """1. Datasette's menu links to the upload page. 2. Pick a CSV file of 1,000,000 rows and
    upload it. 3. While it goes, the button is disabled (and looks it) and Cancel shows. 4. The
    bar moves and reaches its end, the rows are counted, and a link to the new table appears.
    5. The link opens the table in Datasette."""
    bob = f"http://bob.localhost:{gateway.port}"
    page.goto(f"{bob}/")
    page.locator("details.nav-menu summary").click()
    page.get_by_role("link", name="Upload CSV files").click()
    page.wait_for_url(f"{bob}/-/upload")

    page.get_by_label("Files").set_input_files(str(big_csv(tmp_path, "Election results.csv",
                                                           ROWS)))
    page.get_by_role("button", name="Upload").click()
    seen = page.evaluate("""() => new Promise((resolve) => {
        const values = [], buttons = [];
        const timer = setInterval(() => {
            const bar = document.querySelector("ol.uploads progress");
            const start = document.getElementById("start");
            if (bar) values.push(bar.value);
            buttons.push([start.disabled, start.textContent,
                          getComputedStyle(start).backgroundColor,
                          document.getElementById("cancel").hidden]);
            if (document.querySelector("ol.uploads a")) {
                clearInterval(timer);
                resolve({values, buttons});
            }
        }, 5);
    })""")
    assert any(0 < value < 1 for value in seen["values"]) and seen["values"][-1] == 1
    assert [True, "Uploading…", GREY, False] in seen["buttons"]
    status = page.get_by_role("status").first
    assert status.inner_text() == f"Imported {ROWS:,} rows into data / election_results."
    bar = page.get_by_role("progressbar", name="Upload of Election results.csv")
    assert bar.get_attribute("value") == "1"
    assert page.get_by_role("button", name="Upload").is_enabled()
    assert page.get_by_role("button", name="Cancel").is_hidden()
    screenshot(page, "done", screen)

    status.get_by_role("link").click()
    page.wait_for_url(f"{bob}/data/election_results")
    assert f"{ROWS:,} rows" in page.locator("h3").first.inner_text()


def test_cancel_and_the_leave_page_warning(page: Any, gateway: RunningGateway, screen: str,
                                           tmp_path: Path) -> None:
    """1. Upload two files over a slow link (200 KB/s). 2. Closing the page asks first; stay.
    3. Cancel: the first stops ("Cancelled: nothing was imported.", a grey bar), the second is
    never sent. 4. No table was made; the button is back."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1,
        "uploadThroughput": 200 * 1024})
    first, second = big_csv(tmp_path, "first.csv", 200_000), big_csv(tmp_path, "second.csv", 10)
    page.get_by_label("Files").set_input_files([str(first), str(second)])
    page.get_by_role("button", name="Upload").click()
    page.wait_for_function("() => document.querySelector('ol.uploads progress').value > 0")
    dialogs: list[str] = []

    def stay(dialog: Any) -> None:
        dialogs.append(dialog.type)
        dialog.dismiss()

    page.on("dialog", stay)
    with page.expect_event("dialog"):
        page.close(run_before_unload=True)
    assert not page.is_closed()
    assert dialogs == ["beforeunload"]
    screenshot(page, "uploading", screen)

    page.get_by_role("button", name="Cancel").click()
    statuses = page.locator("ol.uploads p[role=status]")
    page.wait_for_function(
        "() => document.querySelectorAll('ol.uploads progress.cancelled').length === 2")
    assert statuses.all_inner_texts() == ["Cancelled: nothing was imported.",
                                          "Not uploaded: you cancelled."]
    assert bar_colour(page) == "rgb(138, 143, 152)"
    assert page.get_by_role("button", name="Upload").is_enabled()
    screenshot(page, "cancelled", screen)
    tables = page.evaluate("fetch('/data.json').then(r => r.json()).then(d => d.tables)")
    assert [t["name"] for t in tables] == ["items"]


def test_a_failed_upload_turns_red_and_speaks_the_forms_words(page: Any, screen: str,
                                                              tmp_path: Path) -> None:
    """1. A file with an unclosed quote: its bar turns red, and the line is named. 2. A file
    for a table that exists, with "Stop, and keep it as it is": the message names the form's
    choices."""
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b'a,b\n1,x\n2,"open\n3,y\n')
    exists = tmp_path / "items.csv"
    exists.write_text("id,name\n99,new\n")
    page.get_by_label("Files").set_input_files([str(broken), str(exists)])
    page.get_by_role("button", name="Upload").click()
    page.wait_for_function(
        "() => document.querySelectorAll('ol.uploads progress.failed').length === 2")
    assert page.locator("ol.uploads p.error").all_inner_texts() == [
        'Line 3: a quoted field starts here, but its closing quote (") is missing.',
        "A table named 'items' already exists in 'data'. Choose “Replace it with this file”"
        " or “Add this file's rows to it” above, and upload it again."]
    assert [bar_colour(page, 0), bar_colour(page, 1)] == [RED, RED]
    screenshot(page, "failed", screen)


def test_an_owner_deletes_a_table(page: Any, screen: str, tmp_path: Path) -> None:
    """1. The Tables section lists bob's tables with a Delete button each. 2. Upload a file:
    its table joins the list. 3. Delete it and confirm: it goes, and the page says so."""
    listed = page.locator("#tables").get_by_role("link")
    listed.first.wait_for()
    assert listed.all_inner_texts() == ["data / items"]
    unwanted = tmp_path / "Unwanted.csv"
    unwanted.write_text("a\n1\n")
    page.get_by_label("Files").set_input_files(str(unwanted))
    page.get_by_role("button", name="Upload").click()
    delete = page.get_by_role("button", name="Delete data / unwanted")
    delete.wait_for()
    assert listed.all_inner_texts() == ["data / items", "data / unwanted"]
    confirmations: list[str] = []

    def confirm(dialog: Any) -> None:
        confirmations.append(dialog.message)
        dialog.accept()

    page.on("dialog", confirm)
    delete.click()
    tables_status = page.locator("#tables-status")
    tables_status.filter(has_text="Deleted").wait_for()
    assert confirmations == ["Delete the table unwanted from data? Its rows are gone for good."]
    assert tables_status.inner_text() == "Deleted the table unwanted from data."
    assert page.locator("#tables").get_by_role("link").all_inner_texts() == ["data / items"]
    screenshot(page, "deleted", screen)
    tables = page.evaluate("fetch('/data.json').then(r => r.json()).then(d => d.tables)")
    assert [t["name"] for t in tables] == ["items"]
