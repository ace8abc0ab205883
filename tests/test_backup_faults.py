"""Replication when things go wrong, with real parts: the object storage stopped for a while, the
disk Litestream works on full (a real tmpfs mounted by the test); what the operator is told
(events and /metrics), and that nothing is lost or corrupted."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import RunningGateway, Site, wait_until
from .test_auth import FAST_HASHING
from .test_backup import (
    SeaweedFS,
    backup_settings,
    read_rows,
    restore_all,
    seaweed,  # noqa: F401 (a fixture)
    wait_replicated,
    write_rows,
)
from .test_upload import Uploader, add_user

pytestmark = pytest.mark.slow


def metrics(gateway: RunningGateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics' samples: (name, sorted labels) -> value."""
    url = f"http://{gateway.wait_for_event('gateway_listening')['metrics']}/metrics"
    text = httpx.get(url, timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def sample(gateway: RunningGateway, name: str, **labels: str) -> float | None:
    return metrics(gateway).get((name, tuple(sorted(labels.items()))))


def replicating_alice(site: Site, start_gateway: Any, endpoint: str
                      ) -> tuple[RunningGateway, Uploader]:
    """A gateway replicating alice to `endpoint`, caught up; a member of alice to upload."""
    site.write_config(auth=FAST_HASHING, backup=backup_settings(site, endpoint))
    site.add_tenant("alice")
    gateway: RunningGateway = start_gateway()
    gateway.wait_running("alice")
    gateway.wait_for_event("backup_started", tenant="alice")
    uploader = Uploader(gateway, add_user(gateway, "ann@example.com", "alice"))
    wait_replicated(gateway)
    return gateway, uploader


@pytest.mark.root
@pytest.mark.drill  # two minutes, most of it the outage itself: make test-drills
def test_storage_down_then_back(site: Site, start_gateway: Any) -> None:
    """1. A gateway replicating to its own SeaweedFS; /metrics says the storage is up and the
    replica is confirmed. 2. The storage goes away: events say so (the probe's, then alice's
    replica behind), /metrics says so (storage down, the lag grows with the outage); uploads
    and reads go on. 3. It comes back: events say so, the lag falls back, and the replica has
    everything written while it was away."""
    (site.root / "s3").mkdir()
    storage = SeaweedFS(site.root / "s3")
    try:
        storage.start()
        gateway, uploader = replicating_alice(site, start_gateway, storage.endpoint)
        assert sample(gateway, "gateway_backup_storage_up") == 1
        assert sample(gateway, "gateway_backup_last_sync_time_seconds", tenant="alice",
                      database="data.db") is not None
        assert sample(gateway, "gateway_backup_lag_seconds", tenant="", database="accounts.db"
                      ) is not None
        storage.stop()
        stopped_at = time.time()
        gateway.wait_for_event("backup_storage_unreachable", timeout=30)
        for i in range(8):
            response = uploader.post(f"n\n{i}\n".encode(), database="data", table="during",
                                     mode="append" if i else "create")
            assert response.status_code == 200, response.text
            assert gateway.get("alice", "/data/items.json").status_code == 200
            time.sleep(4)
        behind = gateway.wait_for_event("backup_replica_behind", tenant="alice",
                                        database="data.db", timeout=30)
        assert behind["level"] == "error" and behind["lag_s"] >= 30
        samples = metrics(gateway)
        assert samples["gateway_backup_storage_up", ()] == 0
        lag = samples["gateway_backup_lag_seconds", (("database", "data.db"),
                                                     ("tenant", "alice"))]
        assert lag >= time.time() - stopped_at - 5  # not confirmed since the storage went
        storage.start()
        event = gateway.wait_for_event("backup_storage_reachable", timeout=60)
        assert event["down_s"] >= 20
        gateway.wait_for_event("backup_replica_caught_up", timeout=60, tenant="alice",
                               database="data.db")
        wait_replicated(gateway, timeout=120)
        wait_until(lambda: (sample(gateway, "gateway_backup_lag_seconds", tenant="alice",
                                   database="data.db") or 99) < 10, timeout=30,
                   message="the lag to fall back")
        assert sample(gateway, "gateway_backup_storage_up") == 1
        restored = site.root / "restored"
        restore_all(gateway, restored)
        assert read_rows(restored / "tenants/alice/data/data.db",
                         "SELECT n FROM during ORDER BY n") == [(i,) for i in range(8)]
        gateway.stop()
    finally:
        storage.stop()


@pytest.fixture
def small_disk(site: Site) -> Any:
    """A 4 MB tmpfs where alice's Litestream keeps its working files (state/replication/alice);
    the file to fill it with."""
    mount_point = site.root / "state" / "replication" / "alice"
    mount_point.mkdir(parents=True)
    os.chmod(site.root / "state", 0o700)
    os.chmod(mount_point.parent, 0o711)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "gw-test-full",
                    str(mount_point)], check=True)
    try:
        yield mount_point / "filler"
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


def fill(path: Path) -> None:
    """Write to `path` until the filesystem has no byte left (tmpfs keeps no reserve)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


@pytest.mark.root
def test_full_disk_is_reported_and_replication_resumes(
        site: Site, small_disk: Path, start_gateway: Any,
        seaweed: SeaweedFS) -> None:  # noqa: F811 (the fixture imported above)
    """1. alice's Litestream keeps its working files on a small filesystem; it replicates. 2. That
    filesystem is filled up, and rows are written: an event says the disk is full (which
    database, the error), /metrics counts disk_full failures; alice serves and takes uploads
    (her own disk is not full). 3. Space comes back: an event says replication resumed, the
    replica catches up, and a restore has every row, with an intact database."""
    filler = small_disk
    gateway, uploader = replicating_alice(site, start_gateway, seaweed.endpoint)
    before = wait_replicated(gateway)

    fill(filler)
    data = site.tenants_dir / "alice" / "data" / "data.db"
    write_rows(data, "while_full", [(i, f"row {i} " + "x" * 200) for i in range(3000)])
    event = gateway.wait_for_event("backup_disk_full", tenant="alice", database="data.db",
                                   timeout=60)
    assert event["level"] == "error" and "no space left on device" in event["error"]
    assert event["reason"] == "disk_full"
    errors = sample(gateway, "gateway_backup_sync_errors_total", tenant="alice",
                    database="data.db", reason="disk_full")
    assert errors is not None and errors >= 1
    response = uploader.post(b"n\n1\n2\n", database="data", table="uploaded_while_full")
    assert response.status_code == 200, response.text
    assert gateway.get("alice", "/data/while_full.json?_size=1").status_code == 200

    filler.unlink()
    resumed = gateway.wait_for_event("backup_sync_resumed", tenant="alice", database="data.db",
                                     timeout=60)
    assert resumed["reason"] == "disk_full" and resumed["failures"] >= 1
    wait_replicated(gateway, timeout=120, since=before)  # Litestream saw the rows, and shipped them
    restored = site.root / "restored"
    restore_all(gateway, restored)
    database = restored / "tenants/alice/data/data.db"
    assert read_rows(database, "SELECT count(*) FROM while_full") == [(3000,)]
    assert read_rows(database, "SELECT n FROM uploaded_while_full") == [(1,), (2,)]
    assert read_rows(database, "PRAGMA integrity_check") == [("ok",)]
    assert read_rows(data, "PRAGMA integrity_check") == [("ok",)]
    gateway.stop()
