"""Counts that come from log events: sign-ins, uploads, certificates, reloads, and why a
tenant's process could not answer (502/504 by cause).

The modules that own those things already log an event for each; counting the events here
keeps metrics out of them. The handler sees only events the log level lets through (info, by
default); [metrics] listen's help says so.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

# event name -> (counter, its label value)
COUNTED: dict[str, tuple[str, str]] = {
    "signed_in": ("sign_ins", "ok"),
    "sign_in_failed": ("sign_ins", "failed"),
    "sign_in_throttled": ("sign_ins", "throttled"),
    "upload_imported": ("uploads", "ok"),
    "upload_failed": ("uploads", "failed"),
    "certificate_installed": ("certificate_renewals", "ok"),
    "certificate_failed": ("certificate_renewals", "failed"),
    "reload_done": ("reloads", "ok"),
    "reload_failed": ("reloads", "failed"),
    "reload_rejected": ("reloads", "rejected"),
}


class EventCounts(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        # tenant -> [rows, bytes, seconds] of its imported uploads
        self.uploads: dict[str, list[float]] = {}
        # tenant -> (ok, failed) uploads: counted per tenant as well
        self.upload_results: collections.Counter[tuple[str, str]] = collections.Counter()
        self.last_upload: dict[str, float] = {}  # tenant -> when its last upload was imported
        self.reloads: collections.deque[dict[str, Any]] = collections.deque(maxlen=10)
        # (tenant, cause) -> 502/504 answers: ConnectFailed, NoResponse, ResponseBroken,
        # BackendTimeout (backend_client.py's error tree)
        self.backend_errors: collections.Counter[tuple[str, str]] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "backend_unavailable":
            tenant, kind = getattr(record, "tenant", ""), getattr(record, "kind", "")
            self.backend_errors[str(tenant), str(kind)] += 1
            return
        counted = COUNTED.get(record.msg) if isinstance(record.msg, str) else None
        if counted is None:
            return
        self.counts[counted] += 1
        fields: dict[str, Any] = vars(record)
        if counted[0] == "reloads":
            self.reloads.appendleft({"time": record.created, "result": counted[1],
                                     "failed": fields.get("failed", {}),
                                     "error": fields.get("error", "")})
        if counted[0] == "uploads":
            tenant = str(fields.get("tenant", ""))
            self.upload_results[tenant, counted[1]] += 1
            if counted[1] == "ok":
                self.last_upload[tenant] = record.created
                totals = self.uploads.setdefault(tenant, [0.0, 0.0, 0.0])
                for i, key in enumerate(("rows", "bytes", "duration_s")):
                    value = fields.get(key)
                    totals[i] += value if isinstance(value, int | float) else 0
