"""Every upload ends with an answer and leaves no process behind (issue 12, Broken 4).

An importer left running holds three of the tenant's processes (bwrap, its PID namespace's
init, python); about fifteen of them exhaust the tenant's RLIMIT_NPROC, after which uploads fail
and the tenant cannot restart. So after each failure the number of processes of the tenant's
user must come back to what it was before: only its Datasette.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import RunningGateway, Site, wait_until
from .test_auth import FAST_HASHING
from .test_upload import MEMBER, Uploader, add_user

pytestmark = pytest.mark.root  # tenant users exist only when the gateway runs as root


@pytest.fixture
def gateway(site: Site, start_gateway: Any) -> RunningGateway:
    site.write_config(auth=FAST_HASHING)
    site.add_tenant("alice", tables={"keep": [{"id": 1, "name": "unchanged"}]})
    gateway: RunningGateway = start_gateway()
    gateway.wait_running("alice")
    return gateway


@pytest.fixture
def member(gateway: RunningGateway) -> Uploader:
    return Uploader(gateway, add_user(gateway, MEMBER, "alice"))


def processes_of(uid: int) -> list[int]:
    """Every process whose real uid is `uid` (zombies too: they count against RLIMIT_NPROC)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                status = Path(entry.path, "status").read_text()
            except OSError:
                continue
            uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
            if int(uids.split()[1]) == uid:
                pids.append(int(entry.name))
    return pids


class TenantProcesses:
    """The tenant user's process count now, and a wait for it to come back to that."""

    def __init__(self, gateway: RunningGateway, tenant: str = "alice") -> None:
        self.uid = (gateway.site.tenants_dir / tenant / "data").stat().st_uid
        self.before = len(processes_of(self.uid))
        assert self.before > 0  # its Datasette

    def assert_back(self, step: str) -> None:
        wait_until(lambda: len(processes_of(self.uid)) == self.before, 30,
                   message=f"the tenant's processes back to {self.before} after {step}"
                           f" (now {processes_of(self.uid)})")


class RawUpload:
    """An upload over a bare socket, so a test can stop sending, drip, or hang up mid-file."""

    def __init__(self, gateway: RunningGateway, member: Uploader, size: int,
                 table: str = "raw") -> None:
        boundary = "b0undary"
        self.head = (f'--{boundary}\r\ncontent-disposition: form-data; name="table"\r\n\r\n'
                     f'{table}\r\n--{boundary}\r\ncontent-disposition: form-data; name="file";'
                     ' filename="raw.csv"\r\ncontent-type: text/csv\r\n\r\n').encode()
        self.tail = f"\r\n--{boundary}--\r\n".encode()
        length = len(self.head) + size + len(self.tail)
        self.socket = socket.create_connection(("127.0.0.1", gateway.port))
        self.socket.sendall(
            f"POST /-/upload HTTP/1.1\r\nhost: {member.headers['host']}\r\n"
            f"authorization: {member.headers['authorization']}\r\n"
            f"content-type: multipart/form-data; boundary={boundary}\r\n"
            f"content-length: {length}\r\n\r\n".encode() + self.head)

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def answer(self) -> tuple[int, dict[str, Any]]:
        self.socket.settimeout(120)
        response = http.client.HTTPResponse(self.socket)
        response.begin()
        answer = (response.status, json.loads(response.read()))
        self.socket.close()
        return answer


def importer_pythons(uid: int) -> list[int]:
    """The tenant's importer interpreters (not the bwrap processes around them)."""
    found = []
    for pid in processes_of(uid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith((b"/python", b"/python3")) and b"gateway.importer" in argv:
            found.append(pid)
    return found


def test_wide_headers_import_and_too_wide_ones_get_an_answer(member: Uploader,
                                                             gateway: RunningGateway) -> None:
    """1. 2,000 short column names: imported. 2. 200 column names of 300 characters: imported
    (both made the importer's report pass asyncio's 64 KiB line limit, and hung). 3. More than
    8 MB of column names: a clear 422. After each, no importer process is left."""
    processes = TenantProcesses(gateway)
    names = [f"c{n}" for n in range(2000)]
    wide = ",".join(names).encode() + b"\n" + b",".join([b"1"] * 2000) + b"\n"
    response = member.post(wide, table="many")
    assert response.status_code == 200, response.text
    assert [c["name"] for c in response.json()["columns"]] == names
    processes.assert_back("2,000 columns")

    long_names = [f"{n:03d}" + "x" * 297 for n in range(200)]
    response = member.post(",".join(long_names).encode() + b"\n" + b"a," * 199 + b"a\n",
                           table="long")
    assert response.status_code == 200, response.text
    assert [c["name"] for c in response.json()["columns"]] == long_names
    assert member.rows("data", "long")[0][long_names[5]] == "a"
    processes.assert_back("200 long columns")

    huge = ",".join(f"{n:04d}" + "y" * 4500 for n in range(2000)).encode() + b"\n1\n"
    response = member.post(huge, table="huge")
    assert response.status_code == 422
    assert response.json()["message"] == ("The file's first line is too long to be its header:"
                                          " the column names take more than 8 MB.")
    processes.assert_back("8 MB of column names")


def test_every_failure_answers_and_leaves_no_process(member: Uploader, site: Site,
                                                     gateway: RunningGateway) -> None:
    """After each of these, the tenant user's process count is what it was before:
    1. A broken file: 422. 2. A table name Datasette cannot show: 400.
    3. The client hangs up mid-file. 4. The importer is killed mid-file: 500 once the rest
    arrives. 5. The upload stalls past upload.idle_timeout_s: 408. 6. It drips a byte now and
    then, never idle, past upload.max_duration_s: 408. Nothing is imported by any of them."""
    processes = TenantProcesses(gateway)
    response = member.post(b'a,b\n1,"open\n2,x\n', table="broken")
    assert response.status_code == 422
    processes.assert_back("a broken file")

    response = member.post(b"a\n1\n", table="z]")
    assert (response.status_code, response.json()["message"]) == (400, (
        "'z]' cannot name a table: Datasette cannot show a table whose name contains ']'."
        " Choose another name."))
    processes.assert_back("a bad table name")

    hang_up = RawUpload(gateway, member, 10_000_000)
    hang_up.send(b"n\n" + b"1\n" * 100_000)
    wait_until(lambda: importer_pythons(processes.uid), message="the importer to start")
    hang_up.socket.close()
    processes.assert_back("the client hung up")

    killed = RawUpload(gateway, member, 2 + 2 * 200_000)
    killed.send(b"n\n" + b"1\n" * 100_000)
    [python] = wait_until(lambda: importer_pythons(processes.uid), message="the importer")
    os.kill(python, signal.SIGKILL)
    killed.send(b"1\n" * 100_000 + killed.tail)
    status, answer = killed.answer()
    assert (status, answer["error"], answer["message"]) == (500, "Upload failed", (
        "The import stopped unexpectedly; nothing was changed. Try again, or tell the site's"
        " operator."))
    processes.assert_back("the importer was killed")

    site.write_config(upload={"idle_timeout_s": 1, "max_duration_s": 3})
    gateway.cli("reload")
    stalled = RawUpload(gateway, member, 1000)
    stalled.send(b"n\n1\n")
    status, answer = stalled.answer()
    assert (status, answer["message"]) == (408, "Nothing arrived for 1 s, so the upload was"
                                                " abandoned and nothing was imported.")
    processes.assert_back("a stalled upload")

    drip = RawUpload(gateway, member, 1000)
    drip.send(b"n\n")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not select.select([drip.socket], [], [], 0.3)[0]:
        drip.send(b"1\n")  # until the gateway answers
    status, answer = drip.answer()
    assert (status, answer["message"]) == (408, "The upload took longer than this site's limit"
                                                " of 3 seconds, so it was stopped and nothing"
                                                " was imported.")
    processes.assert_back("an upload past its deadline")
    tables = gateway.client.get("/data.json", headers=member.headers).json()["tables"]
    assert [t["name"] for t in tables] == ["keep"]
