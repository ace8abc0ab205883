"""Accounts shared by the edges of a cluster (cluster/accounts.py): a real 3-member etcd, two
`gateway serve` edges (e1 also hosts the tenants), one browser whose requests a load balancer
sends to either edge."""

from __future__ import annotations

import asyncio
import html
import logging
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.auth.store import AccountStore
from gateway.cluster.accounts import (
    BEFORE_CLUSTER_FILE,
    BEFORE_REJOIN_FILE,
    SNAPSHOT_EVERY,
    AccountsUnavailable,
    ReplicatedStore,
)
from gateway.cluster.throttle import SharedThrottle
from gateway.config import AuthSettings
from gateway.errors import AccountError

from .conftest import RunningGateway, wait_until
from .etcd_cluster import free_port
from .test_auth import ANN, DOMAIN, FAST_HASHING, JOE, PASSWORD, Browser
from .test_cluster import Cluster, _etcd_delete_prefix, cluster  # noqa: F401 (a fixture)

pytestmark = pytest.mark.root

SECRETS = "/data/secrets.json?_shape=array"


Edges = tuple[RunningGateway, RunningGateway]


@pytest.fixture
def edges(cluster: Cluster) -> Edges:  # noqa: F811 (the fixture)
    """e1 (edge and host) and e2 (edge), both with alice (public) and bob (private)."""
    edges = []
    for node, role, advertise in (("e1", "both", "127.0.0.2"), ("e2", "edge", "")):
        site = cluster.site(node, role, advertise)
        site.write_config(auth={**FAST_HASHING, "throttle_account_attempts": 3,
                                "throttle_backoff_initial_s": 60.0})
        site.add_tenant("bob", public=False, tables={"secrets": [{"id": 1, "word": "bob-only"}]})
        cluster.nodes[node] = RunningGateway(site)
        edges.append(cluster.nodes[node])
    e1, e2 = edges
    wait_until(lambda: set(e2.status()["cluster"]["endpoints"]) == {"alice", "bob"},
               timeout=60, message="e2 routes alice and bob")
    return e1, e2


def browsers(e1: RunningGateway, e2: RunningGateway) -> tuple[Browser, Browser]:
    """One browser, as seen through each edge: the same cookies."""
    one, two = Browser(e1), Browser(e2)
    two.cookies, two.domain_cookies = one.cookies, one.domain_cookies
    return one, two


def add_user(edge: RunningGateway, email: str) -> None:
    edge.cli("user", "add", email, "--password-stdin", input=PASSWORD + "\n")


def status_of(browser: Browser, path: str = SECRETS, **kwargs: Any) -> int:
    return browser.get(f"bob.{DOMAIN}", path, **kwargs).status_code


def test_a_session_and_a_token_made_on_one_edge_hold_on_the_other_until_ended(
        edges: Edges) -> None:
    """1. ann is added with e1's CLI, made a member of bob with e2's.
    2. She signs in through e1 (with the form e2 made); through e2 her session reads bob's
       private table, and bob's Datasette knows her from the actor e2 signed.
    3. She signs out through e1; e2 refuses the session (401) once its cache asks again.
    4. An API token made with e1's CLI reads bob through e2; revoked with e2's CLI, e1 refuses
       it with the revoked-token message."""
    e1, e2 = edges
    add_user(e1, ANN)
    e2.cli("tenant", "members", "bob", "--add", ANN)
    through_e1, through_e2 = browsers(e1, e2)
    try:
        assert status_of(through_e2) == 401
        fields = through_e2.form("/-/login")  # the form from e2, posted to e1
        fields.update(email=ANN, password=PASSWORD, next="", state="")
        assert through_e1.request("POST", DOMAIN, "/-/login", data=fields).status_code == 303
        response = through_e2.get(f"bob.{DOMAIN}", SECRETS)
        assert response.status_code == 200
        assert response.json() == [{"id": 1, "word": "bob-only"}]
        # e2 signs the actor; bob's Datasette (on e1, the host) accepts it.
        assert through_e2.actor("bob") == {"id": ANN, "role": "member"}

        assert through_e1.sign_out().status_code == 303
        wait_until(lambda: status_of(through_e2) == 401, message="e2 sees the sign-out")
        assert status_of(through_e1) == 401
    finally:
        through_e1.close()
        through_e2.close()

    token = e1.cli("user", "token", ANN, "--name", "export").stdout.strip()
    bearer = {"authorization": f"Bearer {token}"}
    response = e2.get("bob", SECRETS, headers=bearer)
    assert response.status_code == 200, response.text
    token_id = re.search(r'"id": "(\w+)"', e2.cli("user", "tokens", ANN, "--json").stdout)
    assert token_id is not None
    e2.cli("user", "revoke-token", token_id.group(1))
    wait_until(lambda: e1.get("bob", SECRETS, headers=bearer).status_code == 401,
               message="e1 refuses the revoked token")
    refused = e1.get("bob", SECRETS, headers=bearer)
    assert refused.json()["message"] == ("This API token is not valid: it was revoked, or its"
                                       " account was removed.")


def test_team_changes_on_one_edge_are_seen_on_the_other(edges: Edges) -> None:
    """1. ann owns bob; joe has an account (both added on e2).
    2. Signed in through e1, ann adds joe to bob's team on e1's Team page and invites a new
       address there; e2's Team page lists both, and joe (signed in through e2) reads bob.
       The invitation is accepted through e2; the new account reads bob through e1.
    3. On e2's Team page ann removes joe: e1 refuses joe once its cache asks again."""
    e1, e2 = edges
    add_user(e2, ANN)
    add_user(e2, JOE)
    e2.cli("tenant", "members", "bob", "--owner", ANN)
    ann_e1, ann_e2 = browsers(e1, e2)
    joe_e1, joe_e2 = browsers(e1, e2)
    try:
        assert ann_e1.sign_in(ANN).status_code == 303
        added = team_post(ann_e1, "invite", email=JOE)
        assert f"{JOE} already has an account, and is now a member." in html.unescape(added.text)
        invited = team_post(ann_e1, "invite", email="new@example.com")
        link = re.search(r'<code class="secret">http://[^/]+(/[^<]+)</code>', invited.text)
        assert link is not None
        page = ann_e2.get(DOMAIN, "/-/team/bob").text
        assert re.search(rf"{re.escape(JOE)}</td><td>member", page)
        assert "new@example.com" in page
        assert joe_e2.sign_in(JOE).status_code == 303
        assert status_of(joe_e2) == 200

        # The invitation made on e1 is accepted through e2; the new member reads bob on e1.
        new_e1, new_e2 = browsers(e1, e2)
        try:
            fields = new_e2.form(link.group(1))
            accepted = new_e2.request("POST", DOMAIN, link.group(1), data={
                **fields, "password": PASSWORD, "confirm": PASSWORD})
            assert accepted.status_code == 303
            assert status_of(new_e1) == 200
        finally:
            new_e1.close()
            new_e2.close()

        assert team_post(ann_e2, "remove", email=JOE).headers["location"] == (
            "/-/team/bob?done=removed")
        wait_until(lambda: status_of(joe_e1) == 403, message="e1 sees joe removed")
        assert JOE not in ann_e1.get(DOMAIN, "/-/team/bob").text
    finally:
        for browser in (ann_e1, ann_e2, joe_e1, joe_e2):
            browser.close()


def team_post(browser: Browser, action: str, **data: str) -> httpx.Response:
    hidden = browser.form("/-/team/bob")
    return browser.request("POST", DOMAIN, f"/-/team/bob/{action}",
                           data={"csrf_token": hidden["csrf_token"], **data})


def test_failed_sign_ins_are_counted_across_edges(edges: Edges) -> None:
    """1. Three wrong passwords for ann, through e1, e2, e1 (3 are free per account).
    2. The fourth attempt, through e2, must wait (429), even with the right password; so
       must one through e1."""
    e1, e2 = edges
    add_user(e1, ANN)
    through_e1, through_e2 = browsers(e1, e2)
    try:
        for browser in (through_e1, through_e2, through_e1):
            refused = browser.sign_in(ANN, "wrong password")
            assert refused.status_code == 400
            assert "The email address or the password is not right." in refused.text
        for browser in (through_e2, through_e1):
            throttled = browser.sign_in(ANN)
            assert throttled.status_code == 429
            assert re.search(r"Too many failed attempts to sign in\. Try again in \d+ seconds\.",
                             throttled.text)
    finally:
        through_e1.close()
        through_e2.close()


@pytest.mark.drill
def test_without_etcd_quorum_the_signed_in_stay_and_sign_in_says_why_not(
        edges: Edges, cluster: Cluster) -> None:  # noqa: F811 (the fixture)
    """1. ann signs in through e1. 2. Two of three etcd members stop: through e2 her session
    still reads bob (e2 reads its replica, having failed to catch up); a sign-in through e1 is
    answered 503, saying why. 3. Quorum is back: signing in works again."""
    e1, e2 = edges
    add_user(e1, ANN)
    e1.cli("tenant", "members", "bob", "--add", ANN)
    through_e1, through_e2 = browsers(e1, e2)
    other = Browser(e1)
    etcd = cluster.etcd
    initial = ",".join(f"{m.name}={m.peer_url}" for m in etcd.members)
    stopped = etcd.members[1:]
    try:
        assert through_e1.sign_in(ANN).status_code == 303
        assert status_of(through_e2) == 200
        for member in stopped:
            member.stop()

        def served_from_the_replica() -> bool:
            assert status_of(through_e2) == 200
            return any(e.get("event") == "accounts_replica_stale" for e in e2.events)

        wait_until(served_from_the_replica, message="e2 reads its replica")
        refused = other.sign_in(ANN)
        assert refused.status_code == 503
        assert ("Signing in or out and changing accounts is not possible right now: the"
                " cluster's store (etcd) does not answer. Try again in a moment."
                ) in html.unescape(refused.text)
    finally:
        for member in stopped:
            member.start(initial, token=etcd.folder.name)
        etcd.wait_healthy()
        through_e1.close()
        through_e2.close()
    try:
        wait_until(lambda: other.sign_in(ANN).status_code == 303, timeout=30,
                   message="signing in works again")
    finally:
        other.close()


# --- the replicated store itself, in this process -----------------------------------------------

@pytest.fixture
def clean_etcd(etcd_cluster: Any) -> Any:
    _etcd_delete_prefix(etcd_cluster.endpoints[0], "/gateway/")
    return etcd_cluster


def replica(folder: Path, etcd: Any) -> ReplicatedStore:
    return ReplicatedStore(folder / "accounts.db", etcd.endpoints)


def test_replicas_agree_after_writes_from_both_at_once(clean_etcd: Any, tmp_path: Path) -> None:
    """1. Replica a holds ann before joining: it publishes the first snapshot. Replica b held
    joe: it takes the cluster's accounts, the dashboard's admins among them (its own file kept
    aside). 2. Both add users and memberships from 4 threads at once. 3. Each sees every write,
    in the same order (same user ids); an admin made or unmade on one is so on the other."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    AccountStore(tmp_path / "a" / "accounts.db").add_user(ANN, "hash", 1.0)
    AccountStore(tmp_path / "b" / "accounts.db").add_user(JOE, "hash", 1.0)
    AccountStore(tmp_path / "a" / "accounts.db").add_admin(ANN, 1.0)
    AccountStore(tmp_path / "b" / "accounts.db").add_admin(JOE, 1.0)
    a, b = replica(tmp_path / "a", clean_etcd), replica(tmp_path / "b", clean_etcd)
    try:
        assert [user.email for user in a.users()] == [ANN]
        assert [user.email for user in b.users()] == [ANN]
        kept = AccountStore(tmp_path / "b" / BEFORE_CLUSTER_FILE)
        assert [user.email for user in kept.users()] == [JOE]
        assert b.admins() == [ANN] and kept.admins() == [JOE]

        def add(store: ReplicatedStore, number: int) -> None:
            email = f"user{number}@example.com"
            store.add_user(email, "hash", 2.0)
            store.add_member("bob", email)

        threads = [threading.Thread(target=add, args=(store, number))
                   for number, store in enumerate([a, b] * 4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert a.team("bob") == b.team("bob") == [
            (f"user{number}@example.com", "member") for number in range(8)]
        assert a.credentials("user5@example.com") == b.credentials("user5@example.com")
        with pytest.raises(AccountError, match=f"{ANN} already has an account"):
            b.add_user(ANN, "hash", 3.0)
        a.add_admin("user5@example.com", 4.0)
        assert b.is_admin("user5@example.com")
        assert b.remove_admin(ANN)
        assert a.admins() == ["user5@example.com"] and not a.is_admin(ANN)
    finally:
        a.close()
        b.close()


def test_a_replica_without_etcd_reads_what_it_has(clean_etcd: Any, tmp_path: Path) -> None:
    """A replica whose etcd does not answer serves its accounts as they are; writes fail."""
    joined = replica(tmp_path, clean_etcd)
    joined.add_user(ANN, "hash", 1.0)
    joined.close()
    cut_off = ReplicatedStore(tmp_path / "accounts.db", [f"http://127.0.0.1:{free_port()}"])
    try:
        assert cut_off.credentials(ANN) == (1, "hash")
        with pytest.raises(AccountsUnavailable) as refused:
            cut_off.add_user(JOE, "hash", 2.0)
        assert str(refused.value) == (
            "Signing in or out and changing accounts is not possible right now: the cluster's"
            " store (etcd) does not answer. Try again in a moment.")
        assert refused.value.status == 503
    finally:
        cut_off.close()


def test_replicas_start_again_from_one_of_them_when_etcd_lost_the_log(clean_etcd: Any,
                                                                      tmp_path: Path) -> None:
    """1. Replicas a and b follow the log; ann is added. 2. etcd loses every accounts key (a
    wipe, or a restore from an older backup). 3. b's next read finds the log is not the one it
    followed: it publishes itself as the new beginning (keeping a copy of what it had); a's
    next write lands on top of it, and both have ann and joe."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = replica(tmp_path / "a", clean_etcd), replica(tmp_path / "b", clean_etcd)
    try:
        a.add_user(ANN, "hash", 1.0)
        assert b.credentials(ANN) == (1, "hash")
        _etcd_delete_prefix(clean_etcd.endpoints[0], "/gateway/accounts/")
        assert b.credentials(ANN) == (1, "hash")
        assert (tmp_path / "b" / BEFORE_REJOIN_FILE).exists()
        a.add_user(JOE, "hash", 2.0)
        assert [user.email for user in b.users()] == [ANN, JOE]
        assert [user.email for user in a.users()] == [ANN, JOE]
    finally:
        a.close()
        b.close()


def test_the_shared_throttle_counts_for_every_edge_and_outlives_its_lease(
        clean_etcd: Any, tmp_path: Path) -> None:
    """Two edges' throttles (2 free failures per account, then 60 s): 1. one counts a failure;
    etcd drops every lease (and the counts with them): the next failure still counts, on a new
    lease. 2. The other edge's failure is the second free one; the third waits 59 s, on either
    edge. 3. A success forgives the account."""
    store = replica(tmp_path, clean_etcd)
    settings = AuthSettings(throttle_account_attempts=2, throttle_address_attempts=100,
                            throttle_backoff_initial_s=60.0)
    one, two = (SharedThrottle.for_store(store, settings, "sign-in") for _ in range(2))

    async def attempts() -> None:
        assert await one.admit(ANN, "10.0.0.1", 1.0) == 0.0
        endpoint = clean_etcd.endpoints[0]
        for lease in httpx.post(f"{endpoint}/v3/lease/leases", json={}).json()["leases"]:
            httpx.post(f"{endpoint}/v3/lease/revoke", json={"ID": lease["ID"]})
        assert await one.admit(ANN, "10.0.0.1", 2.0) == 0.0
        assert await two.admit(ANN, "10.0.0.2", 3.0) == 0.0
        assert await one.admit(ANN, "10.0.0.1", 4.0) == 59.0
        assert await two.admit(ANN, "10.0.0.3", 4.0) == 59.0
        await two.forgive(ANN, "10.0.0.2")
        assert await one.admit(ANN, "10.0.0.1", 5.0) == 0.0

    try:
        asyncio.run(attempts())
    finally:
        store.close()


@pytest.mark.slow
def test_a_new_replica_starts_from_the_newest_snapshot(clean_etcd: Any, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """1. Replica a makes SNAPSHOT_EVERY + 5 writes: it publishes a snapshot at SNAPSHOT_EVERY.
    2. A new replica b restores that snapshot and replays the 5 after it: it has them all."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = replica(tmp_path / "a", clean_etcd)
    try:
        a.add_user(ANN, "hash", 1.0)
        for number in range(SNAPSHOT_EVERY):
            a.touch_token("none", float(number))
        a.add_member("bob", ANN)
        b = replica(tmp_path / "b", clean_etcd)
        try:
            with caplog.at_level(logging.INFO, "gateway.cluster.accounts"):
                assert b.team("bob") == [(ANN, "member")]
            (restored,) = [record for record in caplog.records
                           if record.msg == "accounts_snapshot_restored"]
            assert restored.index == SNAPSHOT_EVERY  # type: ignore[attr-defined]
        finally:
            b.close()
    finally:
        a.close()
