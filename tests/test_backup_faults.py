"""Replication when things go wrong, with real parts: the object storage stopped for a while, the
disk Litestream works on full (a real tmpfs mounted by the test); what the operator is told
(events and /metrics), and that nothing is lost or corrupted."""

from __future__ import annotations

import time
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
    wait_replicated,
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


@pytest.mark.root
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
        site.write_config(auth=FAST_HASHING, backup=backup_settings(site, storage.endpoint))
        site.add_tenant("alice")
        gateway: RunningGateway = start_gateway()
        gateway.wait_running("alice")
        gateway.wait_for_event("backup_started", tenant="alice")
        uploader = Uploader(gateway, add_user(gateway, "ann@example.com", "alice"))
        wait_replicated(gateway)
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
