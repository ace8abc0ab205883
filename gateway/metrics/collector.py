"""The gateway-wide metrics, a prometheus_client collector read when scraped.

Sign-ins, certificate renewals and reloads come from the event counts (events.py); open
connections, sessions and the certificate are looked up at scrape time. Per-tenant metrics are
tenants.py's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .events import EventCounts

if TYPE_CHECKING:
    from ..runtime import Gateway


class GatewayCollector(Collector):
    def __init__(self, gateway: Gateway, events: EventCounts,
                 connections: Callable[[], int]) -> None:
        self.gateway = gateway
        self.events = events
        self.connections = connections

    def collect(self) -> Iterator[Metric]:
        yield from self._events()
        yield from self._gateway()

    def _events(self) -> Iterator[Metric]:
        counts = self.events.counts
        families = {
            "sign_ins": CounterMetricFamily("gateway_sign_ins", "Sign-in attempts by result.",
                                            labels=["result"]),
            "certificate_renewals": CounterMetricFamily(
                "gateway_certificate_renewals", "Certificate issuances and renewals by result.",
                labels=["result"]),
            "reloads": CounterMetricFamily("gateway_reloads", "Reloads by result (rejected: the"
                                           " new config was invalid).", labels=["result"]),
        }
        for (counter, result), count in list(counts.items()):
            if counter in families:
                families[counter].add_metric([result], count)
        yield from families.values()

    def _gateway(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("gateway_open_connections", "Client connections open now.",
                                value=self.connections())
        sessions = self._sessions()
        if sessions is not None:
            yield GaugeMetricFamily("gateway_sessions", "Sign-in sessions not yet ended.",
                                    value=sessions)
        certificates = self.gateway.certificates
        if certificates is None:
            return
        status = certificates.status()
        certificate = status.get("certificate")
        if certificate is not None:
            expiry = dt.datetime.fromisoformat(certificate["not_after"]).timestamp()
            yield GaugeMetricFamily("gateway_certificate_expiry_time_seconds", "When the"
                                    " certificate being served expires (Unix time).",
                                    value=expiry)
        yield GaugeMetricFamily("gateway_certificate_renewal_failures", "Failed renewal"
                                " attempts in a row (0: the last one succeeded).",
                                value=status.get("failures", 0))

    def _sessions(self) -> int | None:
        """Sign-ins whose session has not ended (a session's per-tenant children not counted)."""
        path = self.gateway.auth.store.path
        with contextlib.suppress(sqlite3.Error):
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                auth, now = self.gateway.config.gateway.auth, time.time()
                row = db.execute(
                    "SELECT count(*) FROM sessions WHERE parent IS NULL AND last_seen > ?"
                    " AND created > ?", (now - auth.session_idle_s, now - auth.session_max_s)
                ).fetchone()
                return int(row[0])
            finally:
                db.close()
        return None

