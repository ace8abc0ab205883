"""What one Litestream's log says about each of its databases (pure): when the replica was last
confirmed complete, and runs of failed syncs.

Litestream 0.5 has no status API for a running `replicate`; its debug log has what we need:

    msg="replica sync" db=data.db txid.replica=…07 txid.db=…07    every sync (~2 s when idle)
    msg="ltx file uploaded" db=data.db maxTXID=…08                 a transaction reached the bucket
    level=ERROR msg="sync error" db=data.db error="… no space left on device"

`Progress.read(line, now)` turns each line into state, and returns an event to log when a run of
failures starts or ends. A storage that does not answer makes no error line for minutes (the
S3 client retries), only silence: `Progress.check(now)`, every few seconds, says when a replica
has gone unconfirmed for LAGGING_AFTER_S, and when it is confirmed again. The replicator feeds
both; the metrics and the control API's status read the state.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from typing import Any

_FIELD = re.compile(rb'([\w.]+)=("(?:[^"\\]|\\.)*"|\S*)')
_INTERESTING = (b'msg="replica sync"', b'msg="ltx file uploaded"', b"level=ERROR")

LAGGING_AFTER_S = 30.0  # ~15 missed syncs: not a slow upload, something is wrong
DISK_FULL = "disk_full"
STORAGE = "storage"
OTHER = "other"


def fields(line: bytes) -> dict[str, str]:
    """A logfmt line's fields (quoted values unquoted)."""
    found = {}
    for key, value in _FIELD.findall(line):
        text = value.decode("utf-8", "replace")
        if text.startswith('"'):
            text = text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        found[key.decode()] = text
    return found


def classify(error: str) -> str:
    """Why a sync failed: the local disk is full, the object storage did not answer, or else."""
    lowered = error.lower()
    if "no space left on device" in lowered or "disk quota exceeded" in lowered:
        return DISK_FULL
    if any(word in lowered for word in ("s3:", "connection refused", "dial tcp", "timeout",
                                        "no such host", "statuscode: 5")):
        return STORAGE
    return OTHER


@dataclass(slots=True)
class DatabaseProgress:
    db_txid: int = 0  # the newest transaction Litestream has read from the database
    replica_txid: int = 0  # the newest one known to be in the bucket
    confirmed_at: float | None = None  # when the replica last held every transaction read
    failing: str | None = None  # the reason of the current run of failed syncs
    failing_since: float = 0.0
    failures: int = 0  # in the current run
    lagging: bool = False  # backup_replica_behind was said, backup_replica_caught_up not yet
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    def lag_s(self, now: float, started_at: float) -> float:
        """Seconds since the replica last held every transaction (since the start, if never):
        what the machine's loss would cost, at most."""
        return max(0.0, now - (self.confirmed_at if self.confirmed_at is not None
                               else started_at))


class Progress:
    """The databases of one Litestream process."""

    def __init__(self, databases: list[str], started_at: float) -> None:
        self.started_at = started_at
        self.databases = {name: DatabaseProgress() for name in databases}

    def read(self, line: bytes, now: float) -> tuple[str, dict[str, Any]] | None:
        """Take one line of Litestream's output; an event (name, fields) to log, if any."""
        if not any(marker in line for marker in _INTERESTING):
            return None
        values = fields(line)
        database = self.databases.get(values.get("db", ""))
        if database is None:
            return None
        name = values["db"]
        message = values.get("msg", "")
        if values.get("level") == "ERROR":
            return self._failed(name, database, values.get("error", message), now)
        if message == "replica sync":
            database.db_txid = max(database.db_txid, _txid(values.get("txid.db")))
            database.replica_txid = max(database.replica_txid,
                                        _txid(values.get("txid.replica")))
        elif message == "ltx file uploaded":
            database.replica_txid = max(database.replica_txid, _txid(values.get("maxTXID")))
        if database.replica_txid >= database.db_txid:
            database.confirmed_at = now
        return self._succeeded(name, database, now)

    @staticmethod
    def _failed(name: str, database: DatabaseProgress, error: str, now: float
                ) -> tuple[str, dict[str, Any]] | None:
        reason = classify(error)
        database.errors[reason] += 1
        database.failures += 1
        if database.failing == reason:
            return None
        started = database.failing is None
        database.failing = reason
        if started:
            database.failing_since = now
        event = "backup_disk_full" if reason == DISK_FULL else "backup_sync_failing"
        return event, {"database": name, "reason": reason, "error": error}

    @staticmethod
    def _succeeded(name: str, database: DatabaseProgress, now: float
                   ) -> tuple[str, dict[str, Any]] | None:
        if database.failing is None:
            return None
        event = {"database": name, "reason": database.failing, "failures": database.failures,
                 "failed_s": round(now - database.failing_since, 1)}
        database.failing, database.failures = None, 0
        return "backup_sync_resumed", event

    def check(self, now: float) -> list[tuple[str, dict[str, Any]]]:
        """Events for replicas that went unconfirmed for too long, or came back."""
        events = []
        for name, database in self.databases.items():
            lag = database.lag_s(now, self.started_at)
            if lag >= LAGGING_AFTER_S and not database.lagging:
                database.lagging = True
                events.append(("backup_replica_behind", {"database": name,
                                                         "lag_s": round(lag, 1)}))
            elif lag < LAGGING_AFTER_S and database.lagging:
                database.lagging = False
                events.append(("backup_replica_caught_up", {"database": name,
                                                            "lag_s": round(lag, 1)}))
        return events

    def status(self, now: float) -> list[dict[str, Any]]:
        return [{"database": name, "lag_s": round(progress.lag_s(now, self.started_at), 1),
                 "confirmed_at": progress.confirmed_at, "failing": progress.failing,
                 "errors": dict(progress.errors)}
                for name, progress in self.databases.items()]


def _txid(value: str | None) -> int:
    try:
        return int(value or "0", 16)
    except ValueError:
        return 0
