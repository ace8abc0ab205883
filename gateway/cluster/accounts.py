"""Accounts shared by every edge: the accounts database replicated through a log in etcd.

Every node keeps store.py's SQLite accounts database, unchanged, as its replica; etcd orders the
writes. A write (add a user, sign in, sign out, revoke a token, change a role...) becomes the log
entry /gateway/accounts/log/<index>: {"method": ..., "args": [...], "kwargs": {...}}, appended
with a transaction that creates the key only if it is absent (and, past the first, only while
the entry before it exists), at the index after the last one this node applied. So a write lands
after every write before it; losing the race means catching up and trying again. Every node
applies the log in index order by calling the same AccountStore method with the same arguments
(the clock is an argument, ids and hashes are made before), so every replica goes through the
same states, checks included; the writer applies its own entry and returns its result (or
raises its AccountError). The index applied (and the etcd revision that created its entry) is
written in the entry's own SQLite transaction, so a crash neither skips nor repeats an entry.

Reads catch up with the log first (one etcd range request; empty when nothing is new), so what
one edge wrote the next one reads: a session made on edge A is valid at the browser's next
request on edge B, and a sign-out or a revoked token on A is refused on B as soon as B's cache
(auth.session_cache_s) asks again. When etcd does not answer, reads serve the replica as it is
(catching up is retried after a pause, not on every read) and writes fail (AccountsUnavailable).

Snapshots. The first node to join publishes its database as /gateway/accounts/snapshot/<index>
at index 0 (so a single machine's accounts carry into the cluster); a node that never joined
restores the newest snapshot (its own file kept as accounts-before-cluster.db) and replays from
there. The writer of every SNAPSHOT_EVERY-th entry publishes a new snapshot and deletes the log
entries more than SNAPSHOT_EVERY before it, so the log stays short; a node that was away longer
restores the snapshot. A snapshot is one etcd value: at most etcd's request size (1.5 MiB by
default), compressed: some tens of thousands of accounts.

Each catch-up reads from the entry last applied, and checks it is still there, made at the same
revision: if not, the log is not the one this replica followed (etcd was wiped, or restored
from an older backup), and the replica starts again from the newest snapshot; when there is
none, from itself (it publishes itself as the first). A copy of what it had is kept as
accounts-before-rejoin.db.

The store is synchronous (SQLite, called from threads and the CLI): it reaches etcd through
etcd_thread.py, waiting for each answer.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import gzip
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ..auth.store import AccountStore
from ..errors import AccountError, GatewayError, RequestError
from .etcd import Etcd, EtcdUnavailable, KeyValue
from .etcd_thread import EtcdThread

log = logging.getLogger(__name__)

LOG = "/gateway/accounts/log/"
SNAPSHOT = "/gateway/accounts/snapshot/"
SNAPSHOT_EVERY = 1000
BEFORE_CLUSTER_FILE = "accounts-before-cluster.db"
BEFORE_REJOIN_FILE = "accounts-before-rejoin.db"
_RETRY_AFTER_S = 5.0  # after etcd failed to answer a read's catch-up, serve the replica as is


class AccountsUnavailable(AccountError, RequestError):
    """etcd does not answer: accounts can be read (the replica) but not changed. An
    AccountError, so the pages that show one on their form show this one too; a RequestError,
    so the tenant path (hand-off tickets) answers 503."""

    status = 503
    title = "Accounts unavailable"


UNAVAILABLE = ("Signing in or out and changing accounts is not possible right now: the"
               " cluster's store (etcd) does not answer. Try again in a moment.")

# The AccountStore methods that write: each is a log entry. Everything else only reads.
WRITES = (
    "add_user", "set_password", "remove_user", "add_member", "remove_member", "set_role",
    "forget_tenant", "sign_in", "touch_session", "end_session", "delete_session",
    "purge_expired", "add_ticket", "redeem_ticket", "add_token", "touch_token", "revoke_token",
    "add_reset", "use_reset", "add_invite", "cancel_invites", "accept_invite", "add_admin",
    "remove_admin",
)
READS = (
    "credentials", "users", "team", "pending_invites", "members", "session", "sessions",
    "tokens", "token", "reset_email", "invite", "admins", "is_admin",
)
_TOUCHES = ("touch_session", "touch_token")


def _key(prefix: str, index: int) -> str:
    return f"{prefix}{index:020d}"


def _index(kv: KeyValue, prefix: str) -> int:
    return int(kv.key.removeprefix(prefix))


class ReplicatedStore(AccountStore):
    def __init__(self, path: Path, endpoints: Sequence[str]) -> None:
        super().__init__(path)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS cluster_log (id INTEGER PRIMARY KEY"
                       " CHECK (id = 0), applied INTEGER NOT NULL, revision INTEGER NOT NULL)")
            db.execute("INSERT OR IGNORE INTO cluster_log VALUES (0, -1, 0)")
        # The last entry applied, and the etcd revision that created it (0: not known).
        self._applied, self._revision = self._stored_position()
        self._lock = threading.RLock()
        self._depth = 0
        self._lock_file = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT,
                                  0o600)
        self._applying: tuple[int, int] | None = None
        self._local = threading.local()
        self._retry_at = 0.0
        self._caught_up_from = -1.0  # when the last catch-up that succeeded began
        self.etcd = EtcdThread(endpoints)

    def close(self) -> None:
        self.etcd.close()
        os.close(self._lock_file)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This thread alone, and this process alone on the file (the CLI, or an upgrade's
        next worker, may have it open too): no entry is applied twice, and a writer applies
        its own entry (so it gets its result)."""
        with self._lock:
            self._depth += 1
            try:
                if self._depth == 1:
                    fcntl.flock(self._lock_file, fcntl.LOCK_EX)
                    # Another process may have gone on.
                    self._applied, self._revision = self._stored_position()
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def _stored_position(self) -> tuple[int, int]:
        with self._connect() as db:
            applied, revision = db.execute("SELECT applied, revision FROM cluster_log").fetchone()
        return int(applied), int(revision)

    # --- writes and reads -------------------------------------------------------------------

    def _write(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        entry = json.dumps({"method": method, "args": args, "kwargs": kwargs})
        with self._exclusive():
            while True:
                try:
                    self._caught_up()
                    index = self._applied + 1
                    revision = self.etcd.run(partial(_append, index=index, entry=entry))
                except (EtcdUnavailable, TimeoutError) as exc:
                    log.warning("accounts_write_failed", extra={"error": str(exc)})
                    raise AccountsUnavailable(UNAVAILABLE) from exc
                if revision:
                    self._retry_at = 0.0
                    return self._apply(index, revision, entry, own=True)

    def _read(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Inside an entry (forget_tenant reads its members) the replica is where the log is.
        if not getattr(self._local, "applying", False) and self._etcd_may_answer():
            asked = time.monotonic()
            with self._exclusive():
                # Not when another thread just found etcd silent, nor when one began catching
                # up after this read was asked (it saw every write made before): readers that
                # wait together share one request.
                if self._etcd_may_answer() and self._caught_up_from < asked:
                    try:
                        self._caught_up()
                    except (GatewayError, TimeoutError) as exc:  # no etcd, or a broken log
                        self._retry_at = time.monotonic() + _RETRY_AFTER_S
                        log.warning("accounts_replica_stale", extra={"error": str(exc)})
        return getattr(AccountStore, method)(self, *args, **kwargs)

    def _touch(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """When a session or token was last used: worth a write, not a failed request."""
        if not self._etcd_may_answer():
            return
        try:
            self._write(method, args, kwargs)
        except AccountsUnavailable:
            self._retry_at = time.monotonic() + _RETRY_AFTER_S

    def _etcd_may_answer(self) -> bool:
        return time.monotonic() >= self._retry_at

    # --- the log ----------------------------------------------------------------------------

    def _caught_up(self) -> None:
        started = time.monotonic()
        self._catch_up()
        self._caught_up_from = started

    def _catch_up(self) -> None:
        """Apply the entries appended since the last one applied here (exclusive)."""
        if self._applied < 0:
            self._join()
        restored = 0
        while True:
            verify = self._applied >= 1 and self._revision > 0
            start = self._applied if verify else self._applied + 1
            found = self.etcd.run(partial(Etcd.get_from, key=_key(LOG, start), prefix=LOG,
                                          limit=500))
            if verify:
                if not found or (_index(found[0], LOG), found[0].create_revision) != (
                        self._applied, self._revision):
                    self._rejoin()  # not the log this replica followed
                    continue
                found = found[1:]
            if not found:
                return
            if _index(found[0], LOG) != self._applied + 1:  # compacted away: start from a copy
                restored += 1
                if restored > 2:
                    raise AccountError(f"the accounts log in etcd has no entry {start}, after"
                                       " its newest snapshot: restore etcd from a backup")
                self._restore_newest()
                continue
            for kv in found:
                self._apply(_index(kv, LOG), kv.create_revision, kv.value)

    def _apply(self, index: int, revision: int, entry: str, *, own: bool = False) -> Any:
        """Apply entry `index` (exclusive). Refused (AccountError, a constraint) the same way
        on every node, it changed nothing: applied all the same, raised only to its writer."""
        decoded = json.loads(entry)
        method = decoded["method"]
        if method not in WRITES:
            raise AccountError(f"accounts log entry {index}: unknown method {method!r}")
        self._local.applying = True
        self._applying = (index, revision)
        try:
            result = getattr(AccountStore, method)(self, *decoded["args"], **decoded["kwargs"])
        except (AccountError, sqlite3.IntegrityError):
            if own:
                self._record(index, revision)
                raise
            result = None
        finally:
            self._applying = None
            self._local.applying = False
        self._record(index, revision)
        if index % SNAPSHOT_EVERY == 0:
            self._snapshot(index)
        return result

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with super()._transaction() as db:
            yield db
            if self._applying is not None:  # the entry's write and its index, together
                db.execute("UPDATE cluster_log SET applied = ?, revision = ?", self._applying)

    def _record(self, index: int, revision: int) -> None:
        with self._connect() as db:
            db.execute("UPDATE cluster_log SET applied = ?, revision = ?", (index, revision))
        self._applied, self._revision = index, revision

    # --- snapshots --------------------------------------------------------------------------

    def _join(self) -> None:
        """First catch-up of a node that never joined: take the cluster's newest snapshot, or
        publish this database as the first one."""
        found, _ = self.etcd.run(lambda etcd: etcd.get_prefix(SNAPSHOT))
        if not found:
            dump = self._dump()
            created, _ = self.etcd.run(lambda etcd: etcd.create(_key(SNAPSHOT, 0), dump))
            if created:
                log.info("accounts_snapshot_published", extra={"index": 0})
                self._record(0, 0)
                return
        kept = self.path.with_name(BEFORE_CLUSTER_FILE)
        if not kept.exists():
            with self._connect() as db:
                db.execute("VACUUM INTO ?", (str(kept),))
        self._restore_newest()

    def _rejoin(self) -> None:
        """etcd's log is not the one this replica followed: keep a copy, and join again."""
        log.warning("accounts_log_replaced", extra={"applied": self._applied})
        kept = self.path.with_name(BEFORE_REJOIN_FILE)
        kept.unlink(missing_ok=True)
        with self._connect() as db:
            db.execute("VACUUM INTO ?", (str(kept),))
        self._join()

    def _dump(self) -> str:
        with tempfile.TemporaryDirectory(dir=self.path.parent) as folder:
            copy = Path(folder) / "snapshot.db"
            with self._connect() as db:
                db.execute("VACUUM INTO ?", (str(copy),))
            return base64.b64encode(gzip.compress(copy.read_bytes())).decode()

    def _restore_newest(self) -> None:
        found, _ = self.etcd.run(lambda etcd: etcd.get_prefix(SNAPSHOT))
        if not found:
            raise AccountError("the cluster's accounts log lost its beginning and has no"
                               " snapshot: restore etcd from a backup")
        newest = max(found, key=lambda kv: _index(kv, SNAPSHOT))
        index = _index(newest, SNAPSHOT)
        with tempfile.TemporaryDirectory(dir=self.path.parent) as folder:
            copy = Path(folder) / "snapshot.db"
            copy.write_bytes(gzip.decompress(base64.b64decode(newest.value)))
            source = sqlite3.connect(copy)
            target = sqlite3.connect(self.path)
            try:
                source.backup(target)
            finally:
                source.close()
                target.close()
        self._record(index, 0)  # its entry's revision is taken on trust, once
        log.info("accounts_snapshot_restored", extra={"index": index})

    def _snapshot(self, index: int) -> None:
        """Publish the state after entry `index`; forget what no node needs any more."""
        try:
            dump, kept = self._dump(), _key(LOG, index - SNAPSHOT_EVERY + 1)
            self.etcd.run(lambda etcd: etcd.put(_key(SNAPSHOT, index), dump))
            self.etcd.run(lambda etcd: etcd.delete_below(_key(SNAPSHOT, index), SNAPSHOT))
            self.etcd.run(lambda etcd: etcd.delete_below(kept, LOG))
        except (GatewayError, TimeoutError) as exc:  # too big, or no etcd: the next one will do
            log.warning("accounts_snapshot_failed", extra={"index": index, "error": str(exc)})
            return
        log.info("accounts_snapshot_published", extra={"index": index})


async def _append(etcd: Etcd, index: int, entry: str) -> int:
    """Append `entry` at `index`: the revision that created it, or 0 if `index` is taken (or
    the entry before it is missing)."""
    compare: list[dict[str, Any]] = [_absent(_key(LOG, index))]
    if index > 1:
        compare.append({**_absent(_key(LOG, index - 1)), "result": "GREATER"})
    reply = await etcd.call("/v3/kv/txn", {"compare": compare, "success": [
        {"request_put": {"key": _b64(_key(LOG, index)), "value": _b64(entry)}}]})
    return int(reply["header"]["revision"]) if reply.get("succeeded") else 0


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _absent(key: str) -> dict[str, Any]:
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def _writer(method: str) -> Any:
    def write(self: ReplicatedStore, *args: Any, **kwargs: Any) -> Any:
        if method in _TOUCHES:
            return self._touch(method, args, kwargs)
        return self._write(method, args, kwargs)
    return write


def _reader(method: str) -> Any:
    def read(self: ReplicatedStore, *args: Any, **kwargs: Any) -> Any:
        return self._read(method, args, kwargs)
    return read


for _method in WRITES:
    setattr(ReplicatedStore, _method, _writer(_method))
for _method in READS:
    setattr(ReplicatedStore, _method, _reader(_method))
