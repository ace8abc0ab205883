"""Teams, the account page, password resets by email, the gateway's menu in Datasette: over
HTTP against a real gateway, real tenants, and a real SMTP server (aiosmtpd) started here."""

from __future__ import annotations

import html
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway import tenant_menu
from gateway.auth.schema import _STEPS
from gateway.auth.store import AccountStore
from gateway.auth.web import TENANT_SIGNIN_PATH
from gateway.errors import AccountError

from .conftest import RunningGateway, Site, wait_until
from .smtp_server import Mailbox, link_in, smtp_server
from .test_auth import ANN, DOMAIN, FAST_HASHING, JOE, PASSWORD, Browser, add_user

NEW_PASSWORD = "another long passphrase"


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    with smtp_server() as box:
        yield box


def start(site: Site, start_gateway: Any, smtp_port: int | None = None) -> RunningGateway:
    """alice public, bob private (ann owns it, joe is a member), empty an empty public tenant
    owned by ann; with an SMTP server when `smtp_port` is given."""
    if smtp_port is not None:
        site.write_config(smtp={"host": "127.0.0.1", "port": smtp_port, "security": "none",
                                "from_address": "Data <noreply@gw.test>"})
    site.write_config(auth=FAST_HASHING)
    alice = site.add_tenant("alice")
    (alice / "metadata.json").write_text(json.dumps(
        {"title": "Alice's data", "description": "Rainfall by month."}))
    site.add_tenant("bob", public=False, tables={"secrets": [{"id": 1, "word": "bob-only"}]})
    site.add_tenant("empty", tables={})
    gateway: RunningGateway = start_gateway()
    add_user(gateway, ANN)
    add_user(gateway, JOE, "bob")
    gateway.cli("tenant", "members", "bob", "--owner", ANN)
    gateway.cli("tenant", "members", "empty", "--owner", ANN)
    gateway.wait_running("alice", "bob", "empty")
    return gateway


@pytest.fixture
def gateway(site: Site, start_gateway: Any) -> RunningGateway:
    return start(site, start_gateway)


@pytest.fixture
def browser(gateway: RunningGateway) -> Iterator[Browser]:
    browser = Browser(gateway)
    yield browser
    browser.close()


def post(browser: Browser, page: str, action: str, **fields: str) -> Any:
    """Submit one of `page`'s forms (to `action`) with its CSRF token."""
    hidden = browser.form(page)
    return browser.request("POST", DOMAIN, action,
                           data={"csrf_token": hidden["csrf_token"], **fields})


def text(response: Any) -> str:
    return html.unescape(response.text)


# --- the accounts database --------------------------------------------------------------------


def test_a_version_1_database_keeps_its_data_and_gains_roles(tmp_path: Path) -> None:
    """1. A database made by the previous schema (version 1) with a user, a membership and a
    token. 2. Opening it upgrades it: the member is a member, the token never expires.
    3. Opening it again changes nothing; a newer file than the code is refused."""
    path = tmp_path / "accounts.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(_STEPS[0] + "PRAGMA user_version = 1;")
    db.execute("INSERT INTO users (email, password_hash, created) VALUES ('a@x.org', 'h', 0)")
    db.execute("INSERT INTO memberships (user_id, tenant) VALUES (1, 'bob')")
    db.execute("INSERT INTO tokens (id, token_hash, user_id, name, created)"
               " VALUES ('t1', 'th', 1, 'old', 0)")
    db.close()
    store = AccountStore(path)
    assert store.team("bob") == [("a@x.org", "member")]
    assert [t.expires for t in store.tokens()] == [None]
    assert store.token("th", 10**10) is not None
    store = AccountStore(path)
    assert store.team("bob") == [("a@x.org", "member")]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(_STEPS)
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(AccountError, match="schema version 99, newer than this gateway's"):
        AccountStore(path)


def test_admins_made_before_they_were_part_of_the_schema_stay_admins(tmp_path: Path) -> None:
    """A version-2 file whose admins table the dashboard made itself (as gateways before
    schema step 3 did) upgrades with its admins kept; admins are added and removed by email."""
    path = tmp_path / "accounts.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(_STEPS[0] + _STEPS[1] + "PRAGMA user_version = 2;"
                     "CREATE TABLE admins (email TEXT PRIMARY KEY, added REAL NOT NULL);"
                     "INSERT INTO admins VALUES ('ann@x.org', 1.0);")
    db.close()
    store = AccountStore(path)
    assert store.admins() == ["ann@x.org"] and store.is_admin("ann@x.org")
    store.add_admin("joe@x.org", 2.0)
    store.add_admin("joe@x.org", 3.0)  # twice: still one
    assert store.remove_admin("ann@x.org") and not store.remove_admin("ann@x.org")
    assert store.admins() == ["joe@x.org"] and not store.is_admin("ann@x.org")


def test_a_tenant_keeps_an_owner_and_tokens_expire(tmp_path: Path) -> None:
    store = AccountStore(tmp_path / "accounts.db")
    store.add_user("a@x.org", "h", 0.0)
    store.add_member("bob", "a@x.org", "owner")
    for change in (lambda: store.set_role("bob", "a@x.org", "member", keep_an_owner=True),
                   lambda: store.remove_member("bob", "a@x.org", keep_an_owner=True)):
        with pytest.raises(AccountError, match=r"a@x\.org is the last owner of 'bob'"):
            change()
    assert store.team("bob") == [("a@x.org", "owner")]
    store.add_member("bob", "a@x.org")  # adding again keeps the role
    assert store.team("bob") == [("a@x.org", "owner")]
    store.add_token("a@x.org", "t", "hash", "x", 0.0, expires=100.0)
    principal = store.token("hash", 99.0)
    assert principal is not None and principal.owner_of == frozenset({"bob"})
    assert store.token("hash", 100.0) is None


# --- teams ------------------------------------------------------------------------------------


def test_owner_invites_promotes_and_removes(browser: Browser, gateway: RunningGateway) -> None:
    """1. ann (owner of bob) opens bob's Team page: ann is owner, joe a member. 2. She invites
    new@example.com; with no SMTP the page shows the link. 3. The invitee accepts it and sees
    bob as a member. 4. ann makes them an owner (the actor says so), then removes them.
    5. ann, the last owner, cannot make herself a member."""
    browser.sign_in(ANN)
    team = browser.get(DOMAIN, "/-/team/bob")
    assert team.status_code == 200
    assert re.search(rf"{re.escape(ANN)} \(you\)</td><td>owner", team.text)
    assert re.search(rf"{re.escape(JOE)}</td><td>member", team.text)
    invited = post(browser, "/-/team/bob", "/-/team/bob/invite", email="New@Example.com ")
    assert invited.status_code == 200
    assert "Invitation made for new@example.com." in text(invited)
    link = re.search(r'<code class="secret">(http://[^<]+)</code>', invited.text)
    assert link and "Send this link to new@example.com" in invited.text
    assert "Invitations not yet accepted" in invited.text
    gateway.wait_for_event("invite_sent", tenant="bob", invitee="new@example.com")

    invitee = Browser(gateway)
    try:
        path = link.group(1).removeprefix(f"http://{DOMAIN}")
        # A second invitation, cancelled: its link no longer works, the first one does.
        second = post(browser, "/-/team/bob", "/-/team/bob/invite", email="oops@example.com")
        oops = re.search(r'<code class="secret">http://[^/]+(/[^<]+)</code>', second.text)
        assert oops
        cancelled = post(browser, "/-/team/bob", "/-/team/bob/cancel", email="oops@example.com")
        assert cancelled.headers["location"] == "/-/team/bob?done=cancelled"
        assert invitee.get(DOMAIN, oops.group(1)).status_code == 404
        assert "oops@example.com" not in browser.get(DOMAIN, "/-/team/bob").text
        fields = invitee.form(path)
        accepted = invitee.request("POST", DOMAIN, path, data={
            **fields, "password": PASSWORD, "confirm": PASSWORD})
        assert urlsplit(accepted.headers["location"]).hostname == f"bob.{DOMAIN}"
        gateway.wait_for_event("invite_accepted", user="new@example.com")
        assert invitee.actor("bob") == {"id": "new@example.com", "role": "member"}

        promoted = post(browser, "/-/team/bob", "/-/team/bob/role", email="new@example.com",
                        role="owner")
        assert promoted.status_code == 303
        wait_until(lambda: invitee.actor("bob") == {"id": "new@example.com", "role": "owner"},
                   timeout=10, message="the new owner's actor")
        removed = post(browser, "/-/team/bob", "/-/team/bob/remove", email="new@example.com")
        assert removed.headers["location"] == "/-/team/bob?done=removed"
        wait_until(lambda: invitee.actor("bob") == 403, timeout=10, message="removed")
    finally:
        invitee.close()
    demoted = post(browser, "/-/team/bob", "/-/team/bob/role", email=ANN, role="member")
    assert demoted.status_code == 400
    assert f"{ANN} is the last owner of 'bob': make someone else an owner first." in text(
        demoted)


def test_an_existing_account_is_added_at_once(browser: Browser) -> None:
    browser.sign_in(ANN)
    added = post(browser, "/-/team/empty", "/-/team/empty/invite", email=JOE)
    assert f"{JOE} already has an account, and is now a member." in text(added)
    assert "/-/invite/" not in added.text
    again = post(browser, "/-/team/empty", "/-/team/empty/invite", email=JOE)
    assert f"{JOE} is a member already." in text(again)


def test_only_owners_manage_a_team(browser: Browser, gateway: RunningGateway) -> None:
    """Anonymous: to sign in. joe (a member of bob): 403 on the page and on every form.
    A form without its CSRF token: 403, nothing changes. An unknown tenant: 404."""
    anonymous = browser.get(DOMAIN, "/-/team/bob")
    assert anonymous.headers["location"] == "/-/login?next=/-/team/bob"
    browser.sign_in(JOE)
    refused = browser.get(DOMAIN, "/-/team/bob")
    assert refused.status_code == 403
    assert (f"Only the owners of 'bob' may manage its team. You are signed in as {JOE}."
            in text(refused))
    assert post(browser, "/-/account", "/-/team/bob/remove", email=ANN).status_code == 403
    assert browser.get(DOMAIN, "/-/team/nope").status_code == 404
    owner = Browser(gateway)
    try:
        owner.sign_in(ANN)
        forged = owner.request("POST", DOMAIN, "/-/team/bob/remove",
                               data={"email": JOE, "csrf_token": "0" * 64})
        assert forged.status_code == 403
    finally:
        owner.close()
    assert [m["email"] for m in json.loads(
        gateway.cli("tenant", "members", "bob", "--json").stdout)] == [ANN, JOE]


def test_owner_check_for_the_upload_endpoint(gateway: RunningGateway) -> None:
    """The actor carries the role on every tenant; the CLI lists owners first."""
    assert gateway.cli("tenant", "members", "bob").stdout.split() == [ANN, "(owner)", JOE]
    browser = Browser(gateway)
    try:
        browser.sign_in(ANN)
        assert browser.actor("bob") == {"id": ANN, "role": "owner"}
        assert browser.actor("alice") == {"id": ANN}
    finally:
        browser.close()


# --- the account page -------------------------------------------------------------------------


def test_change_password_ends_the_other_sessions(browser: Browser,
                                                 gateway: RunningGateway) -> None:
    """1. ann is signed in twice. 2. A wrong current password is refused. 3. The right one
    changes it: this session goes on, the other ends. 4. The new password signs in."""
    other = Browser(gateway)
    try:
        other.sign_in(ANN)
        browser.sign_in(ANN)
        page = browser.get(DOMAIN, "/-/account")
        assert page.text.count("<tr><td>") == 2 and "(this browser)" in page.text
        wrong = post(browser, "/-/account", "/-/account/password", password="nope",
                     new_password=NEW_PASSWORD, confirm=NEW_PASSWORD)
        assert wrong.status_code == 400
        assert "Your current password is not right." in text(wrong)
        changed = post(browser, "/-/account", "/-/account/password", password=PASSWORD,
                       new_password=NEW_PASSWORD, confirm=NEW_PASSWORD)
        assert changed.headers["location"] == "/-/account?done=password"
        done = browser.get(DOMAIN, "/-/account?done=password")
        assert "Your password has been changed. Your other sessions have ended." in done.text
        assert browser.actor("bob") == {"id": ANN, "role": "owner"}
        wait_until(lambda: other.actor("bob") == 401, timeout=10, message="other session")
        assert other.sign_in(ANN).status_code == 400
        assert other.sign_in(ANN, NEW_PASSWORD).status_code == 303
    finally:
        other.close()


def test_end_another_session(browser: Browser, gateway: RunningGateway) -> None:
    other = Browser(gateway)
    try:
        other.sign_in(JOE)
        browser.sign_in(JOE)
        page = browser.get(DOMAIN, "/-/account")
        sessions = re.findall(r'name="session" value="(\w+)">\s*<button type="submit">End',
                              page.text)
        assert len(sessions) == 1
        ended = post(browser, "/-/account", "/-/account/sessions/end", session=sessions[0])
        assert ended.headers["location"] == "/-/account?done=session"
        assert other.actor("bob") == 401
        assert browser.actor("bob") == {"id": JOE, "role": "member"}
        # Someone else's session cannot be ended from here.
        ann = Browser(gateway)
        ann.sign_in(ANN)
        mine = re.findall(r'name="session" value="(\w+)"', browser.get(DOMAIN, "/-/account").text)
        post(ann, "/-/account", "/-/account/sessions/end", session=mine[0])
        assert browser.actor("bob") == {"id": JOE, "role": "member"}
        ann.close()
    finally:
        other.close()


def test_api_tokens_from_the_account_page(browser: Browser, gateway: RunningGateway) -> None:
    """1. A token needs a name. 2. Created, it is shown once and works on bob. 3. The list shows
    its expiry; the CLI lists it. 4. Revoked, it answers 401. joe cannot revoke ann's tokens."""
    browser.sign_in(ANN)
    unnamed = post(browser, "/-/account", "/-/account/tokens", name=" ", expires_days="30")
    assert unnamed.status_code == 400
    assert "Give the token a name" in unnamed.text
    created = post(browser, "/-/account", "/-/account/tokens", name="nightly export",
                   expires_days="7")
    assert created.status_code == 200
    token = re.search(r'<code class="secret" id="token-value">(gwt_[\w-]+)</code>',
                      created.text)
    assert token and "Copy it now: it is shown only once." in created.text
    bearer = {"authorization": f"Bearer {token.group(1)}", "host": f"bob.{DOMAIN}"}
    assert gateway.client.get("/-/actor.json", headers=bearer).json() == {
        "actor": {"id": ANN, "role": "owner"}}
    page = browser.get(DOMAIN, "/-/account")
    assert token.group(1) not in page.text and "nightly export" in page.text
    expires = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 7 * 86400))
    assert expires in page.text
    [listed] = json.loads(gateway.cli("user", "tokens", ANN, "--json").stdout)
    token_id = listed["id"]
    joe = Browser(gateway)
    try:
        joe.sign_in(JOE)
        assert post(joe, "/-/account", "/-/account/tokens/revoke",
                    token=token_id).status_code == 404
    finally:
        joe.close()
    revoked = post(browser, "/-/account", "/-/account/tokens/revoke", token=token_id)
    assert revoked.headers["location"] == "/-/account?done=revoked"
    wait_until(lambda: gateway.client.get("/-/actor.json", headers=bearer).status_code == 401,
               timeout=10, message="revoked token refused")


# --- forgot password --------------------------------------------------------------------------


def test_without_smtp_the_page_says_to_ask_the_operator(browser: Browser) -> None:
    for method in ("GET", "POST"):
        page = browser.request(method, DOMAIN, "/-/forgot")
        assert "This site cannot send emails. Ask the person who runs it" in page.text


def test_reset_link_by_email(site: Site, start_gateway: Any,
                             mailbox: Mailbox) -> None:
    """1. Asking for ann and for an unknown address gives the same answer; only ann gets an
    email. 2. Its link sets a new password, signs her in, ends her other sessions. 3. It works
    once. 4. Asking too often is throttled."""
    box, port = mailbox, mailbox.port
    site.write_config(auth={"throttle_backoff_initial_s": 600.0})  # no race with the clock
    gateway = start(site, start_gateway, smtp_port=port)
    browser, other = Browser(gateway), Browser(gateway)
    try:
        other.sign_in(ANN)
        answers = [post(browser, "/-/forgot", "/-/forgot", email=address)
                   for address in (ANN, "nobody@example.com")]
        for answer, address in zip(answers, (ANN, "nobody@example.com"), strict=True):
            assert answer.status_code == 200
            assert (f"If {address} has an account here, we have sent it a link"
                    in re.sub(r"</?strong>", "", answer.text))
        wait_until(lambda: box.to(ANN), timeout=10, message="the reset email")
        gateway.wait_for_event("password_reset_requested", user="nobody@example.com")
        assert box.to("nobody@example.com") == []
        [message] = box.to(ANN)
        assert message["Subject"] == f"Choose a new password for {DOMAIN}"
        assert message["From"] == "Data <noreply@gw.test>"
        link = link_in(message)
        path = link.removeprefix(f"http://{DOMAIN}")
        assert path.startswith("/-/reset/")
        page = browser.get(DOMAIN, path)
        assert f"For the account <strong>{ANN}</strong>" in page.text
        fields = browser.form(path)
        done = browser.request("POST", DOMAIN, path, data={
            **fields, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
        assert done.headers["location"] == "/-/account?done=password"
        gateway.wait_for_event("password_reset_done", user=ANN)
        assert browser.actor("bob") == {"id": ANN, "role": "owner"}
        wait_until(lambda: other.actor("bob") == 401, timeout=10, message="old session gone")
        used = browser.get(DOMAIN, path)
        assert used.status_code == 404 and "Link not valid" in used.text
        for _ in range(5):  # auth.throttle_account_attempts
            assert post(browser, "/-/forgot", "/-/forgot", email=JOE).status_code == 200
        throttled = post(browser, "/-/forgot", "/-/forgot", email=JOE)
        assert throttled.status_code == 429
        assert re.search(r"Too many requests for a new password. Try again in \d+ seconds?\.",
                         throttled.text)
        # Every email sent (none in flight when the server stops: the gateway would wait).
        wait_until(lambda: len(box.to(JOE)) == 5, timeout=10, message="joe's five emails")
    finally:
        browser.close()
        other.close()


def test_invitation_by_email(site: Site, start_gateway: Any,
                             mailbox: Mailbox) -> None:
    box, port = mailbox, mailbox.port
    gateway = start(site, start_gateway, smtp_port=port)
    browser = Browser(gateway)
    try:
        browser.sign_in(ANN)
        invited = post(browser, "/-/team/bob", "/-/team/bob/invite", email="new@example.com")
        assert "Invitation made for new@example.com. We have emailed them." in invited.text
        assert "/-/invite/" not in invited.text
        [message] = wait_until(lambda: box.to("new@example.com"), timeout=10,
                               message="the invitation")
        assert message["Subject"] == "You are invited to bob"
        assert f"{ANN} has invited you to bob on {DOMAIN}." in message.get_payload()
        assert link_in(message).startswith(f"http://{DOMAIN}/-/invite/")
    finally:
        browser.close()


# --- the way around: home page, menu, welcome page --------------------------------------------


def test_home_lists_title_description_and_size(browser: Browser) -> None:
    home = browser.get(DOMAIN, "/")
    assert "Alice&#39;s data" in home.text and "Rainfall by month." in home.text
    assert re.search(r"<p class=\"meta\">\d+(\.\d)? KB</p>", home.text)
    assert "bob" not in home.text
    assert re.search(r'<a class="title" href="http://empty\.gw\.test/">empty</a>\s*'
                     r'<p class="meta">no data yet</p>', home.text)
    browser.sign_in(ANN)
    mine = browser.get(DOMAIN, "/")
    assert '<a href="/-/team/bob">Team</a>' in mine.text


def test_error_pages_have_the_right_title_and_a_way_on(browser: Browser) -> None:
    """joe, not a member of public alice, opens its upload page: "Members only", not "Private
    site", with links to all sites and to sign in as someone else."""
    browser.sign_in(JOE)
    page = browser.get(f"alice.{DOMAIN}", "/-/upload")
    assert page.status_code == 403
    assert "<title>Members only</title>" in page.text
    assert (f'<p><a href="http://{DOMAIN}/">All sites</a> · <a href="http://{DOMAIN}/-/login">'
            "Sign in as someone else</a></p>") in page.text
    unknown = browser.get(f"nope.{DOMAIN}", "/")
    assert unknown.status_code == 404
    assert f'<a href="http://{DOMAIN}/">All sites</a>' in unknown.text


def test_datasette_menu_follows_the_role(browser: Browser, gateway: RunningGateway) -> None:
    """Anonymous on alice: all sites and sign in (back here). ann on alice (not a member):
    account, no upload. ann on bob (owner): upload and team."""
    apex = f"http://{DOMAIN}"
    anonymous = browser.get(f"alice.{DOMAIN}", "/data/items")
    assert f'<li><a href="{apex}/">All sites</a></li>' in anonymous.text
    assert ('<li><a href="/-/gateway-signin?next=%2Fdata%2Fitems">Sign in</a></li>'
            in anonymous.text)
    assert tenant_menu.SIGN_IN_PATH == TENANT_SIGNIN_PATH
    signin = browser.get(f"alice.{DOMAIN}", "/-/gateway-signin?next=%2Fdata%2Fitems")
    to_login = urlsplit(signin.headers["location"])
    assert (to_login.hostname, to_login.path) == (DOMAIN, "/-/login")
    browser.sign_in(ANN)
    alice = browser.get(f"alice.{DOMAIN}", "/")
    assert f'<li><a href="{apex}/-/account">Your account</a></li>' in alice.text
    assert "/-/upload" not in alice.text and "Sign in</a>" not in alice.text
    bob = browser.get(f"bob.{DOMAIN}", "/")
    assert '<li><a href="/-/upload">Upload CSV files</a></li>' in bob.text
    assert f'<li><a href="{apex}/-/team/bob">Team</a></li>' in bob.text


def test_an_empty_tenant_welcomes_with_an_upload_button(browser: Browser) -> None:
    anonymous = browser.get(f"empty.{DOMAIN}", "/")
    assert anonymous.status_code == 200
    assert "<title>empty</title>" in anonymous.text
    assert "Welcome! This site has no data yet." in anonymous.text
    assert "_memory" not in anonymous.text and "Upload CSV files</a>" not in anonymous.text
    browser.sign_in(ANN)
    owner = browser.get(f"empty.{DOMAIN}", "/")
    assert re.search(r'<a class="button" href="/-/upload"[^>]*>Upload CSV\s+files</a>',
                     owner.text)
