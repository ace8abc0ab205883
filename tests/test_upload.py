"""/-/upload end to end: a real gateway, the importer in the tenant's sandbox, real Datasette.

Members upload with an API token here (`curl -H 'Authorization: Bearer …' -F file=@x.csv`);
test_upload_browser.py does it with a session, in Chromium.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.words import duration

from .conftest import UID_BASE, RunningGateway, Site, wait_until
from .test_auth import FAST_HASHING, PASSWORD
from .test_streaming import RssSampler

FIXTURES = Path(__file__).parent / "fixtures" / "csv"
MEMBER, OUTSIDER = "ann@example.com", "joe@example.com"


def add_user(gateway: RunningGateway, email: str, *tenants: str) -> str:
    """An account, member of `tenants`; returns an API token for it."""
    gateway.cli("user", "add", email, "--password-stdin", input=PASSWORD + "\n")
    for tenant in tenants:
        gateway.cli("tenant", "members", tenant, "--add", email)
    token: str = gateway.cli("user", "token", email).stdout.strip()
    return token


class Uploader:
    """POSTs files to a tenant's /-/upload as one account."""

    def __init__(self, gateway: RunningGateway, token: str, tenant: str = "alice") -> None:
        self.gateway = gateway
        self.tenant = tenant
        self.headers = {"host": gateway.host(tenant), "authorization": f"Bearer {token}"}

    def post(self, content: bytes | Any, filename: str = "data.csv", *,
             headers: dict[str, str] | None = None, **fields: str) -> httpx.Response:
        return self.gateway.client.post(
            "/-/upload", data=fields, files={"file": (filename, content, "text/csv")},
            headers={**self.headers, **(headers or {})}, timeout=300,
        )

    def rows(self, database: str, table: str) -> Any:
        response = self.gateway.client.get(f"/{database}/{table}.json?_shape=array&_size=max",
                                           headers=self.headers)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def gateway(site: Site, start_gateway: Any) -> RunningGateway:
    site.write_config(auth=FAST_HASHING)
    site.add_tenant("alice", tables={"keep": [{"id": 1, "name": "unchanged"}]})
    site.add_tenant("bob", public=False)
    gateway: RunningGateway = start_gateway()
    gateway.wait_running("alice", "bob")
    return gateway


@pytest.fixture
def member(gateway: RunningGateway) -> Uploader:
    return Uploader(gateway, add_user(gateway, MEMBER, "alice", "bob"))


def test_member_uploads_a_csv_and_datasette_shows_the_typed_table(member: Uploader) -> None:
    """1. POST a file with curl's form fields. 2. The answer names the table, rows and types.
    3. Datasette serves the table at once."""
    response = member.post((FIXTURES / "utf8.csv").read_bytes(), "Cities 2024.csv")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "ok": True, "database": "data", "table": "cities_2024", "rows": 3, "mode": "create",
        "url": "/data/cities_2024", "notes": [],
        "columns": [{"name": "city", "type": "TEXT"}, {"name": "population", "type": "INTEGER"},
                    {"name": "area_km2", "type": "REAL"}, {"name": "note", "type": "TEXT"}],
    }
    assert member.rows("data", "cities_2024")[2] == {
        "rowid": 3, "city": "São Paulo", "population": 12330000, "area_km2": None,
        "note": "🙂 emoji"}


def test_new_database_is_served_after_a_hot_swap(member: Uploader,
                                                 gateway: RunningGateway) -> None:
    """1. Upload into a database that does not exist. 2. By the answer, the tenant has been
    swapped to a process serving it. 3. The file belongs to the tenant's user, not root."""
    generation = gateway.tenant("alice")["generation"]
    response = member.post(b"a,b\n1,x\n2,y\n", database="newsroom", table="t")
    assert response.status_code == 200, response.text
    assert member.rows("newsroom", "t") == [{"rowid": 1, "a": 1, "b": "x"},
                                            {"rowid": 2, "a": 2, "b": "y"}]
    assert gateway.tenant("alice")["generation"] > generation
    data_dir = gateway.site.tenants_dir / "alice" / "data"
    assert (data_dir / "newsroom.db").stat().st_uid == data_dir.stat().st_uid


def test_broken_file_is_refused_with_its_line_and_changes_nothing(member: Uploader) -> None:
    response = member.post((FIXTURES / "unterminated-quote.csv").read_bytes(),
                           table="keep", mode="replace")
    assert response.status_code == 422
    answer = response.json()
    assert answer["error"] == "Cannot import this file"
    assert answer["message"] == ('Line 3: a quoted field starts here, but its closing quote (")'
                                 " is missing.")
    assert member.rows("data", "keep") == [{"id": 1, "name": "unchanged"}]
    event = member.gateway.wait_for_event("upload_failed", tenant="alice")
    assert (event["status"], event["reason"]) == (422, answer["message"])


def test_create_replace_append(member: Uploader) -> None:
    assert member.post(b"id,name\n2,two\n", table="keep").json()["message"] == (
        "A table named 'keep' already exists in 'data'. Choose replace to overwrite it, or"
        " append to add these rows to it.")
    assert member.post(b"id,name\n2,two\n", table="keep", mode="append").status_code == 200
    assert [r["name"] for r in member.rows("data", "keep")] == ["unchanged", "two"]
    assert member.post(b"n\n1.5\n", table="keep", mode="replace").json()["columns"] == [
        {"name": "n", "type": "REAL"}]


def test_progress_is_streamed_as_json_lines(member: Uploader) -> None:
    data = b"n,text\n" + b"".join(b"%d,row %d\n" % (i, i) for i in range(200_000))
    response = member.post(data, headers={"accept": "application/x-ndjson"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    events = [json.loads(line) for line in response.text.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["rows"] == 200_000
    progress = [e["rows"] for e in events if e["event"] == "progress"]
    assert progress == sorted(progress) and progress and progress[-1] <= 200_000


def test_errors_after_the_upload_arrive_as_a_json_line(member: Uploader) -> None:
    response = member.post(b"a\n1\n", table="keep", headers={"accept": "application/x-ndjson"})
    last = json.loads(response.text.splitlines()[-1])
    assert last == {"event": "error", "status": 422, "message": (
        "A table named 'keep' already exists in 'data'. Choose replace to overwrite it, or"
        " append to add these rows to it.")}


def test_size_limit_answers_413(site: Site, member: Uploader, gateway: RunningGateway) -> None:
    """1. A 1 MB limit (applied by reload). 2. A bigger file with a Content-Length: 413 before
    any of it is read. 3. The same sent chunked (no length): 413 once 1 MB has gone by, and
    nothing is imported either way."""
    site.write_config(upload={"max_file_mb": 1})
    gateway.cli("reload")
    big = b"n\n" + b"12345\n" * 400_000
    response = member.post(big, table="big")
    assert response.status_code == 413
    assert response.json()["message"] == "The file is larger than this site's limit of 1 MB."

    def chunked() -> Iterator[bytes]:
        yield (b'--b\r\ncontent-disposition: form-data; name="file"; filename="big.csv"\r\n'
               b"content-type: text/csv\r\n\r\n")
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]
        yield b"\r\n--b--\r\n"

    try:
        response = gateway.client.post(
            "/-/upload", content=chunked(), timeout=60,
            headers={**member.headers, "content-type": "multipart/form-data; boundary=b"})
        assert response.status_code == 413
    except httpx.TransportError:
        pass  # the gateway may close the connection while the client is still sending
    data_dir = gateway.site.tenants_dir / "alice" / "data"
    assert sorted(p.name for p in data_dir.iterdir() if not p.name.endswith(("-wal", "-shm"))
                  ) == ["data.db"]


@pytest.mark.parametrize(("fields", "message"), [
    ({"mode": "merge"}, "Unknown mode 'merge': use create, replace or append."),
    ({"database": "../etc"}, "'../etc' cannot name a new database: use up to 64 letters,"
                             " digits, '_' and '-', starting with a letter or digit."),
    ({"table": "sqlite_master"}, "Table names starting with sqlite_ are reserved by SQLite."),
])
def test_bad_choices_are_refused_before_the_upload(member: Uploader, fields: dict[str, str],
                                                   message: str) -> None:
    response = member.post(b"a\n1\n", **fields)
    assert (response.status_code, response.json()["message"]) == (400, message)


def test_not_multipart_or_no_file(member: Uploader, gateway: RunningGateway) -> None:
    raw = gateway.client.post("/-/upload", content=b"a,b\n", headers={
        **member.headers, "content-type": "text/csv"})
    assert raw.status_code == 400
    assert raw.json()["message"] == ("Send the file as multipart/form-data, in a field named"
                                     " 'file' (curl: -F file=@data.csv).")
    no_file = gateway.client.post("/-/upload", data={"table": "x"}, files={"other": b""},
                                  headers=member.headers)
    assert no_file.json()["message"] == "Unexpected file in the field 'other'; send it as 'file'."


def test_only_members_may_upload(gateway: RunningGateway, member: Uploader) -> None:
    """Anonymous: 401 for an upload, the page sends a browser to sign in. A signed-in
    non-member: 403, on a public tenant too. Another site's page posting with the member's
    credentials: 403."""
    anonymous = gateway.client.post("/-/upload", files={"file": ("a.csv", b"a\n1\n")},
                                    headers={"host": gateway.host("alice")})
    assert anonymous.status_code == 401
    assert anonymous.json()["message"] == (
        "Only members of 'alice' may change its data. Sign in at"
        f" http://gw.test:{gateway.port}/-/login, or send an API token (`gateway user token"
        " EMAIL`) as 'Authorization: Bearer <token>'.")
    page = gateway.client.get("/-/upload", headers={"host": gateway.host("alice")})
    assert page.status_code == 303
    assert page.headers["location"].startswith(f"http://gw.test:{gateway.port}/-/login?next=")
    outsider = Uploader(gateway, add_user(gateway, OUTSIDER))
    refused = outsider.post(b"a\n1\n")
    assert refused.status_code == 403
    assert refused.json()["message"] == (
        "You are signed in as joe@example.com, who is not a member of 'alice': only its members"
        " may change its data.")
    forged = member.post(b"a\n1\n", headers={"origin": "http://evil.example",
                                             "sec-fetch-site": "cross-site"})
    assert forged.status_code == 403
    assert forged.json()["message"] == ("Uploads are accepted only from this site's own upload"
                                        " page.")


def test_page_and_menu_link_for_members(member: Uploader, gateway: RunningGateway) -> None:
    page = gateway.client.get("/-/upload", headers=member.headers)
    assert page.status_code == 200
    assert '<input type="file" id="file" name="file" multiple required' in page.text
    assert '<option value="data">' in page.text
    script = gateway.client.get("/-/upload.js", headers={"host": gateway.host("alice")})
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    datasette = gateway.client.get("/", headers=member.headers)
    assert '<a href="/-/upload">Upload CSV files</a>' in datasette.text
    anonymous = gateway.client.get("/", headers={"host": gateway.host("alice")})
    assert "/-/upload" not in anonymous.text


def test_two_uploads_at_once_during_a_hot_swap(member: Uploader,
                                               gateway: RunningGateway) -> None:
    """1. Two uploads to alice start together, one into a new database. 2. While they run,
    alice is restarted (blue/green). 3. Both end with their tables complete."""
    rows = 150_000
    data = b"n,word\n" + b"".join(b"%d,w%d\n" % (i, i) for i in range(rows))
    results: dict[str, httpx.Response] = {}

    def upload(name: str, **fields: str) -> None:
        results[name] = member.post(data, f"{name}.csv", **fields)

    threads = [threading.Thread(target=upload, args=("first",)),
               threading.Thread(target=upload, args=("second",), kwargs={"database": "other"})]
    for thread in threads:
        thread.start()
    gateway.cli("tenant", "restart", "alice")
    for thread in threads:
        thread.join(120)
    assert results["first"].status_code == 200, results["first"].text
    assert results["second"].status_code == 200, results["second"].text
    for database, table in (("data", "first"), ("other", "second")):
        count = gateway.client.get(f"/{database}.json?sql=select+count(*)+from+{table}"
                                   "&_shape=array", headers=member.headers).json()
        assert count == [{"count(*)": rows}]


@pytest.mark.root
def test_importer_runs_as_the_tenant_in_its_sandbox(member: Uploader,
                                                    gateway: RunningGateway) -> None:
    """The file is written by the tenant's uid; the gateway (root) never creates it."""
    response = member.post(b"a\n1\n", database="owned")
    assert response.status_code == 200
    data_dir = gateway.site.tenants_dir / "alice" / "data"
    owner = data_dir.stat().st_uid
    assert owner >= UID_BASE
    for path in data_dir.iterdir():
        assert path.stat().st_uid == owner, path


@pytest.mark.slow
def test_500_mb_upload_keeps_gateway_memory_flat(member: Uploader, gateway: RunningGateway,
                                                 tmp_path: Path) -> None:
    """A 500 MB file streams through: the gateway's RSS grows by less than 50 MB."""
    path = tmp_path / "big.csv"
    line = b"%d,some text for the row,%d.25,more words here and there\n"
    with open(path, "wb") as f:
        f.write(b"id,text,value,other\n")
        block = b"".join(line % (i, i) for i in range(100_000))
        while f.tell() < 500 * 1024 * 1024:
            f.write(block)
    sampler = RssSampler(gateway.worker_pid)
    started = time.monotonic()
    with open(path, "rb") as f:
        response = member.post(f, "big.csv")
    growth = sampler.stop()
    assert response.status_code == 200, response.text
    assert growth < 50, f"gateway RSS grew by {growth:.1f} MB"
    print(f"500 MB upload: {time.monotonic() - started:.1f} s, gateway RSS +{growth:.1f} MB,"
          f" {response.json()['rows']:,} rows")



def test_upload_without_the_sandbox(site: Site, start_gateway: Any) -> None:
    """sandbox.isolation = "off" (the demo, not root): the importer runs as the gateway's user,
    with the same answers."""
    site.write_config(auth=FAST_HASHING, sandbox={"isolation": "off"})
    site.add_tenant("alice")
    gateway: RunningGateway = start_gateway()
    gateway.wait_running("alice")
    member = Uploader(gateway, add_user(gateway, MEMBER, "alice"))
    response = member.post((FIXTURES / "excel-unicode-text.txt").read_bytes(), "t.txt")
    assert response.status_code == 200, response.text
    assert member.rows("data", "t") == [{"rowid": 1, "id": 1, "name": "Łódź", "count": 10},
                                        {"rowid": 2, "id": 2, "name": "Kraków", "count": None}]


def test_owner_deletes_a_table(member: Uploader, gateway: RunningGateway) -> None:
    """1. Upload a table. 2. A member who is not an owner may not delete it: 403. 3. An owner
    POSTs /-/upload/delete naming it: deleted, as the tenant, and Datasette no longer lists it.
    4. Again: 404. An unknown database: 404. No form: 400. Someone who is not a member: 403."""
    assert member.post(b"a\n1\n", table="Old Numbers").status_code == 200
    owner = Uploader(gateway, add_user(gateway, "olga@example.com"))
    gateway.cli("tenant", "members", "alice", "--owner", "olga@example.com")

    def delete(uploader: Uploader = owner, **fields: str) -> httpx.Response:
        return gateway.client.post("/-/upload/delete", data=fields, headers=uploader.headers)

    refused = delete(member, database="data", table="old numbers")
    assert (refused.status_code, refused.json()["message"]) == (403, (
        "You are signed in as ann@example.com, who is not an owner of 'alice': only its owners"
        " may do this."))
    response = delete(database="data", table="old numbers")
    assert (response.status_code, response.json()) == (200, {
        "ok": True, "database": "data", "table": "Old Numbers", "deleted": True})
    def tables() -> list[str] | str:
        answer = gateway.client.get("/data.json", headers=member.headers)
        return [t["name"] for t in answer.json()["tables"]] if answer.status_code == 200 \
            else f"{answer.status_code}: {answer.text[:300]}"

    listings: list[object] = []

    def lists_only_keep() -> bool:
        listings.append(tables())
        return listings[-1] == ["keep"]

    try:  # Datasette sees the schema change at its next request
        wait_until(lists_only_keep, timeout=10, message="Datasette to list only 'keep'")
    except AssertionError:
        raise AssertionError(f"Datasette listed: {listings[-3:]}") from None
    again = delete(database="data", table="Old Numbers")
    assert (again.status_code, again.json()["message"]) == (
        404, "There is no table 'Old Numbers' in 'data'.")
    unknown = delete(database="nope", table="keep")
    assert (unknown.status_code, unknown.json()["message"]) == (
        404, "There is no database 'nope'.")
    no_form = gateway.client.post("/-/upload/delete", json={"table": "keep"},
                                  headers=owner.headers)
    assert (no_form.status_code, no_form.json()["message"]) == (400, (
        "Send the database and the table as a form (curl: -d database=data -d table=t)."))
    outsider = Uploader(gateway, add_user(gateway, OUTSIDER))
    assert delete(outsider, database="data", table="keep").status_code == 403
    plain = Uploader(gateway, add_user(gateway, "sam@example.com", "alice"))
    refused = delete(plain, database="data", table="keep")
    assert (refused.status_code, refused.json()["message"]) == (403, (
        "You are signed in as sam@example.com, who is not an owner of 'alice': only its owners"
        " may do this."))
    assert member.rows("data", "keep") == [{"id": 1, "name": "unchanged"}]


@pytest.mark.parametrize(("seconds", "text"), [
    (1, "1 second"), (1.5, "1.5 seconds"), (45, "45 seconds"), (90, "90 seconds"),
    (120, "2 minutes"), (3600, "1 hour"), (5400, "90 minutes"), (3_600_000, "1,000 hours"),
])
def test_limits_are_written_in_words(seconds: float, text: str) -> None:
    assert duration(seconds) == text
