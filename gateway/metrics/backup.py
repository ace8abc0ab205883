"""Replication's metrics (gateway/backup): how far each database's replica is behind, failed
syncs by reason, and whether the object storage answers. Read from the Replication at scrape
time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..backup import Replication

STATE = ".state"  # replicator.STATE: shown as tenant "", as `gateway backup status` does


class BackupCollector(Collector):
    def __init__(self, replication: Replication) -> None:
        self.replication = replication

    def collect(self) -> Iterator[Metric]:
        if not self.replication.settings.endpoint:
            return
        now = time.time()
        lag = GaugeMetricFamily(
            "gateway_backup_lag_seconds", "Seconds since the database's replica last held every"
            " transaction Litestream had read (confirmed at each sync, every 1-2 s when all is"
            " well): at most this much of the latest writes would be lost with the machine.",
            labels=["tenant", "database"])
        synced = GaugeMetricFamily(
            "gateway_backup_last_sync_time_seconds", "When the database's replica last held"
            " every transaction Litestream had read (Unix time).", labels=["tenant", "database"])
        errors = CounterMetricFamily(
            "gateway_backup_sync_errors", "Failed syncs by reason: disk_full (the local disk),"
            " storage (the object storage did not answer), other.",
            labels=["tenant", "database", "reason"])
        restarts = CounterMetricFamily(
            "gateway_backup_process_restarts", "Times a Litestream process exited and was"
            " started again.", labels=["tenant"])
        for stream in list(self.replication.streams.values()):
            tenant = "" if stream.plan.name == STATE else stream.plan.name
            restarts.add_metric([tenant], stream.restarts)
            progress = stream.progress
            for database, state in progress.databases.items():
                lag.add_metric([tenant, database], state.lag_s(now, progress.started_at))
                if state.confirmed_at is not None:
                    synced.add_metric([tenant, database], state.confirmed_at)
                for reason, count in state.errors.items():
                    errors.add_metric([tenant, database, reason], count)
        yield from (lag, synced, errors, restarts)
        yield GaugeMetricFamily(
            "gateway_backup_storage_up", "1 if the object storage answered the last probe"
            " (every 5 s), 0 if not.", value=0 if self.replication.storage_down_since else 1)
