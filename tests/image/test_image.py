"""The built image, run as Docker runs it: `make image && make image-test`."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from .conftest import Container

pytestmark = [pytest.mark.image, pytest.mark.root]

MAX_IMAGE_BYTES = 250 * 1000 * 1000
BIRDS = [{"id": 1, "name": "wren"}, {"id": 2, "name": "heron"}]
ADDED = (
    "Created /srv/gateway/tenants/alice. Put SQLite files in /srv/gateway/tenants/alice/data"
    " and run `gateway reload` (or send SIGHUP) to start it.\n"
)
UID_ISOLATION = (
    "isolation  uid: own uid/gid, no groups or capabilities, rlimits, 0700 tenant folders\n"
    "           not available: private filesystem view, no network, own PID namespace"
)
FULL_ISOLATION = (
    "isolation  full: own uid/gid, no groups or capabilities, rlimits, private filesystem view,"
    " no network, own PID namespace\n"
)


def test_image_is_what_the_readme_says(image_config: dict[str, Any], image_rootfs: Path) -> None:
    """tini as PID 1 running `gateway serve` in /srv/gateway, the three volumes, ports 80 and
    443, `gateway health` as HEALTHCHECK; under 250 MB, with no compiler or headers in it."""
    assert image_config["Entrypoint"] == ["/usr/bin/tini", "--", "gateway"]
    assert image_config["Cmd"] == ["serve"]
    assert image_config["WorkingDir"] == "/srv/gateway"
    assert sorted(image_config["Volumes"]) == [
        "/srv/gateway/certs", "/srv/gateway/state", "/srv/gateway/tenants",
    ]
    assert sorted(image_config["ExposedPorts"]) == ["443/tcp", "80/tcp"]
    assert image_config["Healthcheck"]["Test"] == ["CMD", "gateway", "health"]
    size = int(subprocess.run(["du", "-sb", str(image_rootfs)], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    print(f"image root filesystem: {size / 1e6:.1f} MB")
    assert size < MAX_IMAGE_BYTES
    assert not (image_rootfs / "usr/bin/gcc").exists()
    assert not (image_rootfs / "usr/include/python3.11").exists()
    assert not list((image_rootfs / "opt/gateway/lib/python3.11/site-packages").glob("setuptools*"))


@pytest.mark.parametrize(
    ("confinement", "level"),
    [("docker defaults", "uid"), ("seccomp=unconfined systempaths=unconfined", "full")],
)
def test_serves_a_tenant_added_while_running(
    container: Callable[[], Container], volume: Callable[[], Path], confinement: str, level: str
) -> None:
    """1. `docker run` (as confined by `confinement`) with a fresh, empty tenants volume: the
       image's own command and config.
    2. The HEALTHCHECK command passes.
    3. `docker exec … gateway tenant add alice --public`; a database copied into the volume.
    4. `docker kill -s HUP`: alice starts; her Datasette pages come through the gateway.
    5. The isolation level is in the log (once, as a warning, when reduced) and in
       `gateway status`; alice runs as her own uid, without capabilities or groups.
    6. `docker exec … gateway upgrade`: a new worker adopts alice's process, which keeps serving.
    7. `docker stop` (SIGTERM): alice's processes (all not root's) end before the gateway
       does; exit status 0.
    """
    tenants = volume()
    box = container()
    box.start(confinement, {"/srv/gateway/tenants": tenants})
    box.wait_for_event("gateway_listening")
    assert box.exec("gateway", "health").stdout == "healthy: 0 of 0 tenants running\n"

    assert box.exec("gateway", "tenant", "add", "alice", "--public").stdout == ADDED
    database = sqlite_utils.Database(tenants / "alice" / "data" / "birds.db")
    database.table("birds").insert_all(BIRDS, pk="id")
    database.close()
    box.kill(signal.SIGHUP)
    box.wait_for_event("tenant_started")
    status, body = box.get("alice.localhost", "/birds/birds.json?_shape=array")
    assert (status, json.loads(body)) == (200, BIRDS)
    status, page = box.get("alice.localhost", "/birds/birds")
    assert status == 200
    assert "heron" in page
    assert box.get("localhost", "/-/health") == (200, '{"ok":true,"tenants":{"running":1}}')
    assert box.exec("gateway", "health").stdout == "healthy: 1 of 1 tenants running\n"

    reduced = [e for e in box.events() if e["event"] == "isolation_reduced"]
    status_text = box.exec("gateway", "status").stdout
    if level == "uid":
        assert [(e["level"], e["isolation"]["level"]) for e in reduced] == [("warning", "uid")]
        assert UID_ISOLATION in status_text
    else:
        assert reduced == []
        assert FULL_ISOLATION in status_text
    alice = json.loads(box.exec("gateway", "status", "--json").stdout)["tenants"][0]
    credentials = proc_status(box, alice["pid"])
    assert credentials["Uid"].split() == [str(alice["uid"])] * 4
    assert int(alice["uid"]) >= 20000
    assert credentials["Groups"] == ""
    assert int(credentials["CapEff"], 16) == int(credentials["CapBnd"], 16) == 0
    assert credentials["NoNewPrivs"] == "1"

    upgraded = box.exec("gateway", "upgrade").stdout
    assert upgraded.startswith("Upgraded: worker ")
    status, body = box.get("alice.localhost", "/birds/birds.json?_shape=array")
    assert (status, json.loads(body)) == (200, BIRDS)
    after = json.loads(box.exec("gateway", "status", "--json").stdout)["tenants"][0]
    assert after["pid"] == alice["pid"]

    tenant_processes = [pid for pid in box.processes() if owner(pid) != 0]
    assert tenant_processes
    box.kill(signal.SIGTERM)
    box.wait_for_event("gateway_stopped", handed_over=False)
    assert not [pid for pid in tenant_processes if Path(f"/proc/{pid}").exists()]
    assert box.wait(30) == 0
    assert "tenant_killed" not in [e["event"] for e in box.events()]


def test_seccomp_unconfined_alone_keeps_uid_isolation(
    container: Callable[[], Container], volume: Callable[[], Path]
) -> None:
    """Docker's masked /proc paths let bubblewrap create namespaces but not mount a new /proc:
    the probe tries exactly that, so it falls back to uid, and says why."""
    box = container()
    box.start("seccomp=unconfined", {"/srv/gateway/tenants": volume()})
    box.wait_for_event("gateway_listening")
    isolation = json.loads(box.exec("gateway", "status", "--json").stdout)["isolation"]
    assert isolation["level"] == "uid"
    assert isolation["reason"] == (
        "bubblewrap cannot sandbox here (bwrap: Can't mount proc on /newroot/proc: Operation"
        " not permitted; in Docker: see README, Deploy)"
    )
    box.kill(signal.SIGTERM)
    assert box.wait(30) == 0


def proc_status(box: Container, pid: int) -> dict[str, str]:
    text = box.exec("cat", f"/proc/{pid}/status").stdout
    return {key: value.strip() for key, _, value in
            (line.partition(":") for line in text.splitlines())}


def owner(pid: int) -> int | None:
    """The real uid of a process (as the host sees it), None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
