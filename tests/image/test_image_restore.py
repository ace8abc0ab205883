"""New machine, same site: one `docker run` of the image with empty volumes, the same
gateway.toml and the storage credentials restores the site from the bucket, then serves it.

The container shares the host's network (`docker run --network host`) to reach the SeaweedFS
the test runs on loopback; the old site is a gateway on the host replicating to it.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlite_utils

from ..conftest import UID_BASE, RunningGateway, Site, to_toml
from ..test_auth import FAST_HASHING
from ..test_backup import (
    ACCESS_KEY,
    BUCKET,
    SECRET_KEY,
    SeaweedFS,
    backup_settings,
    seaweed,  # noqa: F401 (a fixture)
    wait_replicated,
)
from ..test_upload import add_user
from .conftest import Container

pytestmark = [pytest.mark.image, pytest.mark.root, pytest.mark.slow]

BIRDS = [{"id": 1, "name": "wren"}, {"id": 2, "name": "heron"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_one_docker_run_with_empty_volumes_restores_the_site(
        site: Site, start_gateway: Any, container: Callable[[], Container],
        volume: Callable[[], Path], seaweed: SeaweedFS) -> None:  # noqa: F811
    """1. The old machine: a gateway replicating alice (public, birds) and bob (private, with a
    member holding an API token) to the bucket; then it is gone. 2. `docker run` of the image
    with empty tenants/, state/ and certs/ volumes but for the two credential files, and a
    gateway.toml with the same [backup]. 3. The container restores the site before serving
    (event backup_site_restored), then serves alice's birds, and bob to the member's token
    (accounts and key came back); the key is the old one. 4. `docker stop` ends it cleanly."""
    backup = backup_settings(site, seaweed.endpoint)
    site.write_config(auth=FAST_HASHING, backup=backup)
    site.add_tenant("alice", tables={"birds": BIRDS})
    site.add_tenant("bob", public=False)
    old: RunningGateway = start_gateway()
    old.wait_running("alice", "bob")
    token = add_user(old, "ann@example.com", "bob")
    for name in ("alice", "bob", ".state"):
        old.wait_for_event("backup_started", tenant=name)
    wait_replicated(old)
    old.stop()

    tenants, state, certs, config = volume(), volume(), volume(), volume()
    os.chmod(certs, 0o700)
    for name, value in (("s3.key_id", ACCESS_KEY), ("s3.secret", SECRET_KEY)):
        (certs / name).write_text(value + "\n")
        os.chmod(certs / name, 0o600)
    port = _free_port()
    (config / "gateway.toml").write_text(to_toml({
        "domain": "gw.test",
        "listen": {"host": "127.0.0.1", "http_port": port},
        "paths": {"tenants_dir": "tenants", "certs_dir": "certs", "state_dir": "state",
                  "run_dir": "/run/gateway"},
        "sandbox": {"uid_min": UID_BASE + 600, "uid_max": UID_BASE + 699},
        "metrics": {"listen": ""},
        "backup": {"endpoint": seaweed.endpoint, "bucket": BUCKET, "prefix": backup["prefix"],
                   "access_key_id_file": "certs/s3.key_id",
                   "secret_access_key_file": "certs/s3.secret", "uid_offset": 500},
    }) + "\n")

    box = container()
    box.start("docker defaults", {"/srv/gateway/tenants": tenants, "/srv/gateway/state": state,
                                  "/srv/gateway/certs": certs,
                                  "/srv/gateway/gateway.toml": config / "gateway.toml"},
              network="host")
    restored = box.wait_for_event("backup_site_restored", timeout=120)
    assert restored["tenants"] == ["alice", "bob"] and restored["epoch"] == 1
    box.wait_for_event("gateway_listening", timeout=60)
    box.wait_for_event("tenant_started", tenant="alice", timeout=60)
    box.wait_for_event("tenant_started", tenant="bob", timeout=60)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        birds = client.get("/data/birds.json?_shape=array", headers={"host": "alice.gw.test"})
        assert (birds.status_code, birds.json()) == (200, BIRDS)
        assert client.get("/data.json", headers={"host": "bob.gw.test"}).status_code != 200
        member = client.get("/data.json", headers={"host": "bob.gw.test",
                                                   "authorization": f"Bearer {token}"})
        assert member.status_code == 200, member.text
    assert (state / "secret.key").read_bytes() == (site.root / "state" / "secret.key"
                                                   ).read_bytes()
    assert sqlite_utils.Database(tenants / "alice" / "data" / "data.db")["birds"].count == 2
    box.kill(signal.SIGTERM)
    box.wait_for_event("gateway_stopped", handed_over=False)
    assert box.wait(30) == 0
