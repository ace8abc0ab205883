"""Replication while the gateway runs: one Litestream process per tenant, one for state/.

    Replication.track(config, tenants)   after every start, reload, restart or upload: the
                                         Litestream processes are made to match (a tenant's is
                                         restarted when its list of databases changes)
    Replication.pause() / resume()       around an upgrade's hand-over (the new worker starts
                                         its own; two Litestreams must never share a database)

Who runs what, when the gateway is root: a tenant's Litestream runs as a user of its own (the
tenant's uid + backup.uid_offset) whose only extra group is the tenant's; the data folder is
group-writable (setgid, so files made there stay in that group), database files are made
group-readable and -writable before Litestream starts. So it can read and checkpoint the
tenant's databases and nothing else: not state/, not another tenant's data. The tenant cannot
read its environment (another uid), where the storage credentials are. state/ is replicated by
root without capabilities. Every Litestream gets a clean environment and SIGTERM (a last sync)
if the gateway dies.

A process that exits is restarted with the supervisor's backoff. The object storage itself is
probed every few seconds: `backup_storage_unreachable` and `backup_storage_reachable` events
tell the operator when it is down and for how long (Litestream keeps what it could not send and
sends it when the storage is back). Each Litestream's log tells, per database, when the replica
was last complete and when syncs fail (progress.py: `backup_disk_full`, `backup_sync_failing`,
`backup_sync_resumed`, and the metrics); the probe also says when a replica has gone unconfirmed
too long (`backup_replica_behind`, `backup_replica_caught_up`), and deletes the replica folders
of tenants removed more than `backup.retention_h` ago.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from ..auth.store import ACCOUNTS_FILE
from ..config import BackupSettings, Config, TenantConfig
from ..errors import ConfigError, GatewayError
from ..keys import MASTER_KEY_FILE
from . import litestream
from .catalog import CATALOG_FILE, Catalog
from .progress import Progress
from .s3 import Bucket, StorageError

if TYPE_CHECKING:
    from ..spawner import Spawner

log = logging.getLogger(__name__)

REPLICATION_DIR = "replication"  # in state/: Litestream's configs and bookkeeping
STATE = ".state"  # the stream of state/ (no tenant name starts with a dot)
_PROBE_EVERY_S = 5.0
_STOP_TIMEOUT_S = 10.0
_LEVEL = re.compile(rb"\blevel=(\w+)")


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything one Litestream process is started from: a change means a restart."""

    name: str
    replicas: tuple[litestream.Replica, ...]
    uid: int | None  # None: the gateway's own user
    group: int | None
    directory: Path  # its config and bookkeeping, owned by `uid`


class Replication:
    """The Litestream processes of one running gateway (none when [backup] has no endpoint)."""

    def __init__(self, config: Config, spawner: Spawner) -> None:
        self.config = config
        self.spawner = spawner
        self.streams: dict[str, _Stream] = {}
        self._tenants: Mapping[str, TenantConfig] = {}
        self._lock = asyncio.Lock()
        self._probe: asyncio.Task[None] | None = None
        self._paused = False
        self.storage_down_since: float | None = None
        self._bucket: Bucket | None = None

    @property
    def settings(self) -> BackupSettings:
        return self.config.gateway.backup

    @property
    def state_dir(self) -> Path:
        return self.config.gateway.paths.state_dir

    async def track(self, config: Config, tenants: Mapping[str, TenantConfig]) -> None:
        """Make the Litestream processes match `tenants` and `config`'s [backup]."""
        async with self._lock:
            if config.gateway.backup != self.settings:
                await self._stop_all()
            self.config, self._tenants = config, dict(tenants)
            if not self.settings.endpoint or self._paused:
                return
            try:
                credentials = await asyncio.to_thread(litestream.read_credentials, self.settings)
            except ConfigError as exc:
                log.error("backup_not_started", extra={"error": str(exc)})
                return
            try:
                plans = await asyncio.to_thread(self._plans, tenants)
            except (GatewayError, OSError, sqlite3.Error) as exc:
                # Never fails what called it (a reload, a restart, an upload's hot swap).
                log.error("backup_not_started", extra={"error": str(exc)})
                return
            self._bucket = Bucket(self.settings, credentials)
            for name in set(self.streams) - set(plans):
                await self.streams.pop(name).stop()
                if name != STATE:
                    await asyncio.to_thread(self._forget, name)
            for name, plan in plans.items():
                stream = self.streams.get(name)
                if stream is not None and stream.plan == plan:
                    continue
                if stream is not None:
                    await stream.stop()
                self.streams[name] = _Stream(plan, self.settings, credentials, self.config)
                self.streams[name].start()
            if self._probe is None:
                self._probe = asyncio.ensure_future(self._watch_storage())

    def _plans(self, tenants: Mapping[str, TenantConfig]) -> dict[str, _Plan]:
        """Folders, owners and modes made right; what each process should replicate."""
        replication = self.state_dir / REPLICATION_DIR
        replication.mkdir(mode=0o711, exist_ok=True)
        os.chmod(replication, 0o711)
        catalog = Catalog(self.state_dir / CATALOG_FILE)
        try:
            key = self.state_dir / MASTER_KEY_FILE
            # A cluster node has none: its key is derived from the cluster's secret.key, which
            # the operator keeps (README, Cluster), not from state/.
            if key.exists():
                catalog.put_file(f"state/{MASTER_KEY_FILE}", key.read_bytes(), 0o600)
            plans = {name: self._tenant_plan(catalog, tenant, replication / name)
                     for name, tenant in tenants.items()}
        finally:
            catalog.close()
        state = [name for name in (ACCOUNTS_FILE, CATALOG_FILE) if (self.state_dir / name).exists()]
        root = 0 if os.geteuid() == 0 else None
        epoch = litestream.read_epoch(self.state_dir)
        plans[STATE] = _Plan(STATE, tuple(
            litestream.Replica(self.state_dir / name,
                               litestream.state_object_path(self.settings, epoch, name),
                               replication / STATE / "meta" / name)
            for name in state), root, None, replication / STATE)
        return plans

    def _tenant_plan(self, catalog: Catalog, tenant: TenantConfig, directory: Path) -> _Plan:
        tenant_uid = self.spawner.tenant_user(tenant)  # also sets the data folder's owner, mode
        lineages = catalog.track_tenant(tenant)
        uid = None if tenant_uid is None else tenant_uid + self.settings.uid_offset
        if tenant_uid is not None:
            _share_with_group(tenant.data_dir, tenant.databases)
        replicas = tuple(
            litestream.Replica(
                tenant.data_dir / name,
                litestream.tenant_object_path(self.settings, tenant.name, lineage, name),
                directory / "meta" / f"g{lineage}" / name,
            )
            for name, lineage in lineages.items()
        )
        return _Plan(tenant.name, replicas, uid, tenant_uid, directory)

    def _forget(self, tenant: str) -> None:
        """A removed tenant: its lineage ends here; its replica stays in the bucket for
        backup.retention_h (`_expire`)."""
        catalog = Catalog(self.state_dir / CATALOG_FILE)
        try:
            catalog.remove_tenant(tenant)
        finally:
            catalog.close()
        shutil.rmtree(self.state_dir / REPLICATION_DIR / tenant, ignore_errors=True)
        log.info("backup_tenant_removed", extra={"tenant": tenant,
                                                 "kept_h": self.settings.retention_h})

    def _expire(self) -> None:
        """Delete the replica folders of tenants removed more than retention_h ago."""
        if self._bucket is None:
            return
        catalog = Catalog(self.state_dir / CATALOG_FILE)
        try:
            for line in catalog.expired(time.time() - self.settings.retention_h * 3600):
                path = litestream.tenant_object_path(self.settings, line.tenant, line.lineage,
                                                     line.name)
                try:
                    objects = self._bucket.delete_folder(path)
                except StorageError as exc:
                    log.warning("backup_replica_not_deleted", extra={
                        "tenant": line.tenant, "replica": path, "error": str(exc)})
                    return  # tried again at the next probe
                catalog.drop_lineage(line)
                log.info("backup_replica_deleted", extra={
                    "tenant": line.tenant, "database": line.name, "replica": path,
                    "objects": objects})
        finally:
            catalog.close()

    async def _watch_storage(self) -> None:
        """Tell the operator when the object storage stops answering, and when it is back."""
        async with httpx.AsyncClient(timeout=_PROBE_EVERY_S, trust_env=False) as client:
            while True:
                endpoint = self.settings.endpoint
                try:
                    await client.get(endpoint)
                except httpx.HTTPError as exc:
                    if self.storage_down_since is None:
                        self.storage_down_since = time.time()
                        log.error("backup_storage_unreachable",
                                  extra={"endpoint": endpoint, "error": str(exc) or repr(exc)})
                else:
                    if self.storage_down_since is not None:
                        log.warning("backup_storage_reachable", extra={
                            "endpoint": endpoint,
                            "down_s": round(time.time() - self.storage_down_since, 1)})
                        self.storage_down_since = None
                    await self._expire_quietly()
                self._check_progress()
                await asyncio.sleep(_PROBE_EVERY_S)

    def _check_progress(self) -> None:
        now = time.time()
        for stream in list(self.streams.values()):
            for name, fields in stream.progress.check(now):
                level = logging.ERROR if name == "backup_replica_behind" else logging.WARNING
                log.log(level, name, extra={"tenant": stream.plan.name, **fields})

    async def _expire_quietly(self) -> None:
        try:
            await asyncio.to_thread(self._expire)
        except (OSError, sqlite3.Error) as exc:
            log.error("backup_replica_not_deleted", extra={"error": str(exc)})

    async def pause(self) -> None:
        """Stop every Litestream (each sends what it has first), for a hand-over."""
        async with self._lock:
            self._paused = True
            await self._stop_all()

    async def resume(self) -> None:
        """The hand-over failed: replicate again."""
        self._paused = False
        await self.track(self.config, self._tenants)

    async def stop(self) -> None:
        async with self._lock:
            self._paused = True
            await self._stop_all()

    async def _stop_all(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        streams, self.streams = list(self.streams.values()), {}
        await asyncio.gather(*(stream.stop() for stream in streams))

    def status(self) -> dict[str, Any]:
        return {
            "enabled": bool(self.settings.endpoint),
            "storage_down_since": self.storage_down_since,
            "processes": [stream.status() for stream in self.streams.values()],
        }


def _share_with_group(data_dir: Path, databases: tuple[str, ...]) -> None:
    """Let the tenant's group (its Litestream user) read and write its databases.

    SQLite gives the -wal and -shm files the database file's mode, so the database's is enough
    for those created later; existing ones are fixed here too.
    """
    for name in databases:
        for suffix in ("", "-wal", "-shm"):
            path = data_dir / f"{name}{suffix}"
            with contextlib.suppress(FileNotFoundError):
                mode = path.lstat().st_mode
                if mode & 0o060 != 0o060 and not path.is_symlink():
                    os.chmod(path, (mode & 0o7777) | 0o060)


class _Stream:
    """One supervised Litestream process."""

    def __init__(self, plan: _Plan, settings: BackupSettings,
                 credentials: litestream.Credentials, config: Config) -> None:
        self.plan = plan
        self.settings = settings
        self.credentials = credentials
        self.supervisor = config.gateway.supervisor
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.progress = Progress([replica.database.name for replica in plan.replicas],
                                 time.time())
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        backoff = self.supervisor.restart_backoff_initial_s
        while not self._stopping:
            started = time.monotonic()
            try:
                self.process = await self._spawn()
            except (OSError, GatewayError) as exc:
                code: int | None = None
                last = f"cannot start Litestream: {exc}"
            else:
                log.info("backup_started", extra={
                    "tenant": self.plan.name, "pid": self.process.pid, "uid": self.plan.uid,
                    "databases": [replica.database.name for replica in self.plan.replicas]})
                last = await self._read_output(self.process)
                code = await self.process.wait()
            if self._stopping:
                return
            if time.monotonic() - started > self.supervisor.crash_loop_window_s:
                backoff = self.supervisor.restart_backoff_initial_s
            self.restarts += 1
            log.error("backup_process_exited", extra={
                "tenant": self.plan.name, "status": code, "last_output": last,
                "restart_in_s": backoff})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.supervisor.restart_backoff_max_s)

    async def _spawn(self) -> asyncio.subprocess.Process:
        config_file = await asyncio.to_thread(self._write_config)
        argv = [*litestream.run_as(self.plan.uid, self.plan.group),
                *litestream.replicate_argv(config_file)]
        return await asyncio.create_subprocess_exec(
            *argv, env=litestream.environment(self.credentials),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )

    async def _read_output(self, process: asyncio.subprocess.Process) -> str:
        """Litestream's warnings and errors become events, its info lines debug ones; its
        debug lines (several a second) only feed the progress (progress.py)."""
        assert process.stdout is not None
        last = ""
        while line := await process.stdout.readline():
            found = self.progress.read(line, time.time())
            if found is not None:
                name, fields = found
                level = logging.WARNING if name == "backup_sync_resumed" else logging.ERROR
                log.log(level, name, extra={"tenant": self.plan.name, **fields})
            level_match = _LEVEL.search(line)
            level_name = level_match.group(1) if level_match else b""
            if level_name == b"DEBUG":
                continue
            last = line.decode("utf-8", "replace").rstrip()
            event = {"tenant": self.plan.name, "line": last}
            if level_name in (b"ERROR", b"WARN"):
                log.warning("backup_litestream", extra=event)
            else:
                log.debug("backup_litestream", extra=event)
        return last

    def _write_config(self) -> Path:
        directory = self.plan.directory
        directory.mkdir(mode=0o700, exist_ok=True)
        for replica in self.plan.replicas:
            replica.meta_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        config_file = directory / "litestream.json"
        config_file.unlink(missing_ok=True)
        config = litestream.config(self.settings, list(self.plan.replicas))
        fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f, indent=1)
        if self.plan.uid is not None:
            for root, dirs, files in os.walk(directory):
                for name in [".", *dirs, *files]:
                    os.chown(os.path.join(root, name), self.plan.uid, self.plan.uid,
                             follow_symlinks=False)
        return config_file

    async def stop(self) -> None:
        """SIGTERM (Litestream sends what it has), then SIGKILL after _STOP_TIMEOUT_S."""
        self._stopping = True
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), _STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("backup_process_killed", extra={"tenant": self.plan.name})
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def status(self) -> dict[str, Any]:
        process = self.process
        return {
            "tenant": self.plan.name,
            "pid": process.pid if process and process.returncode is None else None,
            "uid": self.plan.uid,
            "databases": [replica.database.name for replica in self.plan.replicas],
            "restarts": self.restarts,
            "progress": self.progress.status(time.time()),
        }
