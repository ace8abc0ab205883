"""The running gateway: its config, its tenants' routes and supervisors, reload and stop.

server.py owns sockets and signals; app.py answers requests from `Gateway.routes`; this module
decides what runs. Only the supervisor touches processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from . import handover, sandbox
from .admin.history import History
from .auth.service import Auth
from .awake import AwakeCap
from .backends import TenantRoute
from .backup import Replication
from .certs import certificates_for
from .config import Config, TenantConfig, load_config, load_tenant, load_tenants
from .errors import ConfigError, GatewayError
from .handover import HandedOver
from .keys import cluster_master_key, load_master_key
from .logs import AccessLog
from .metrics.events import EventCounts
from .metrics.requests import NoRequestMetrics, RequestMetrics
from .process import ProcessHandle
from .proxy import Proxy
from .reload import ReloadReport, plan_reload
from .spawner import Spawner, StartFailed
from .supervisor import TenantSupervisor

if TYPE_CHECKING:
    from .cluster.node import ClusterNode

log = logging.getLogger(__name__)


def _master_key(config: Config) -> bytes:
    """This machine's own; in a cluster, the one every node shares."""
    cluster = config.gateway.cluster
    if cluster.etcd_endpoints and cluster.tls_dir is not None:
        from .cluster.tls import read_secret

        return cluster_master_key(read_secret(cluster.tls_dir))
    return load_master_key(config.gateway.paths.state_dir)


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        gateway = config.gateway
        # Tenant users must pass through to their own socket folders (0700 each), which may
        # live inside the state folder; what is secret in there is 0600 file by file.
        for folder in (gateway.paths.state_dir, gateway.paths.run_dir):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o711)
        self.isolation = sandbox.probe_isolation(gateway.sandbox.isolation, gateway.sandbox.uid_min)
        if gateway.sandbox.isolation == "required" and not self.isolation.is_complete:
            raise ConfigError(
                f"{config.path.name}: sandbox.isolation: required, but {self.isolation.reason}"
            )
        if self.isolation.level != "full":
            # Nested: a flat "level" field would overwrite the log line's own level.
            log.warning("isolation_reduced", extra={"isolation": self.isolation.describe()})
        self.master_key = _master_key(config)
        self.auth = Auth(config, self.master_key)
        self.spawner = Spawner(config, self.isolation, self.master_key)
        self.backups = Replication(config, self.spawner)
        self.proxy = Proxy(gateway.proxy)
        self.access_log = AccessLog(enabled=gateway.log.access_log)
        self.request_metrics = RequestMetrics() if gateway.metrics.listen else NoRequestMetrics()
        self.events = EventCounts()  # for the metrics and the dashboard
        logging.getLogger().addHandler(self.events)
        self.history = History(self, self.request_metrics)
        self.routes: dict[str, TenantRoute] = {}
        self.supervisors: dict[str, TenantSupervisor] = {}
        self.awake = AwakeCap(self.supervisors,
                              lambda: self.config.gateway.supervisor.max_awake_tenants)
        self.certificates = certificates_for(config)
        self.draining = False
        self._reload_lock = asyncio.Lock()
        self._removing: set[asyncio.Task[None]] = set()
        self.cluster: ClusterNode | None = None
        if gateway.cluster.etcd_endpoints:  # else one machine, exactly as without a cluster
            from .cluster.node import ClusterNode

            self.cluster = ClusterNode(self)

    @property
    def domain(self) -> str:
        return self.config.domain

    async def start(self) -> None:
        """Start every tenant; each gets traffic as soon as its own health check passes. One
        that may sleep (idle_stop_s) starts asleep: its first request starts it."""
        self.spawner.remove_stale_run_dirs()
        await self.spawner.start_spares()
        if self.certificates is not None:
            await self.certificates.start()
        if self.cluster is not None:
            await self.cluster.start()  # it adds the tenants placed here
            return
        for tenant in self.config.tenants.values():
            self._add(tenant, asleep=True)
        await self.track_backups()

    def add_tenant(self, tenant: TenantConfig) -> TenantRoute:
        """Start running `tenant` here (the cluster placed it on this host)."""
        self._add(tenant)
        task = asyncio.ensure_future(self.track_backups())
        self._removing.add(task)
        task.add_done_callback(self._removing.discard)
        return self.routes[tenant.name]

    async def remove_tenant(self, name: str) -> None:
        """Stop running tenant `name` here (the cluster placed it elsewhere): in-flight requests
        finish, then its process stops (its route goes, unless the cluster replaced it). Its
        replication stops at the next track_backups()."""
        supervisor = self.supervisors.pop(name, None)
        if supervisor is None:
            return
        if self.routes.get(name) is supervisor.route:
            del self.routes[name]
        await supervisor.stop()

    def _add(self, tenant: TenantConfig, *, asleep: bool = False) -> None:
        """Supervise `tenant`; with `asleep`, a tenant that may sleep waits for a request."""
        self._register(tenant).start(asleep=asleep and tenant.settings.idle_stop_s > 0)

    def _register(self, tenant: TenantConfig) -> TenantSupervisor:
        """A route and a supervisor for `tenant`, not yet started."""
        route = TenantRoute(tenant, self.config.gateway.proxy.max_connections_per_tenant)
        supervisor = TenantSupervisor(self.spawner, route, self.awake.make_room)
        self.routes[tenant.name] = route
        self.supervisors[tenant.name] = supervisor
        return supervisor

    def _remove(self, name: str) -> None:
        """New requests get "no such site" at once; in-flight ones finish in the background."""
        self.routes.pop(name, None)
        task = asyncio.ensure_future(self.supervisors.pop(name).stop())
        self._removing.add(task)
        task.add_done_callback(self._removing.discard)

    async def settled(self) -> None:
        """Wait until removed tenants have stopped and replaced processes have drained."""
        await asyncio.gather(*self._removing, *(s.retired() for s in self.supervisors.values()))

    async def reload(self) -> ReloadReport:
        """Re-read gateway.toml and tenants/ and apply only the difference.

        Returns once every added or changed tenant serves or has failed to, saying which.
        Raises ConfigError (and changes nothing) when the new config is invalid.
        """
        async with self._reload_lock:
            since = time.time()
            loaded = await asyncio.to_thread(load_config, self.config.path)
            new = await asyncio.to_thread(self._keep_paths, loaded)
            # Compare with what really runs: a replacement that failed last time is tried again.
            running = dataclasses.replace(
                self.config, tenants={n: s.config for n, s in self.supervisors.items()}
            )
            plan = plan_reload(running, self._runs_here(new))
            if new is not loaded:
                plan = dataclasses.replace(plan, needs_restart=("paths", *plan.needs_restart))
            if self.certificates is not None and "tls.mode" not in plan.needs_restart:
                await self.certificates.apply(new)  # first: unusable files reject the reload
            log.info("reload_planned", extra=plan.summary())
            self._apply_settings(new)
            for name in plan.removed:
                self._remove(name)
            for name in plan.added:
                self._add(new.tenants[name])
            self.awake.make_room()  # the cap may have changed
            results = await asyncio.gather(
                *(self.supervisors[name].replace(new.tenants[name]) for name in plan.changed),
                return_exceptions=True,
            )
            failed = {name: str(result) for name, result in zip(plan.changed, results, strict=True)
                      if isinstance(result, BaseException)}
            waiting = [n for n in (*plan.added, *plan.changed) if n not in failed]
            outcomes = await asyncio.gather(
                *(self._outcome(n, since, new.tenants[n]) for n in waiting)
            )
            failed.update((n, why) for n, why in zip(waiting, outcomes, strict=True) if why)
            report = ReloadReport(plan, dict(sorted(failed.items())))
            if plan.needs_restart:
                log.warning("reload_needs_restart", extra={"sections": list(plan.needs_restart)})
            await self.track_backups()
            if self.cluster is not None:  # tenants added or removed: placed, routed
                await self.cluster.reconfigured()
            if report.ok:
                log.info("reload_done", extra={"serving": list(report.serving)})
            else:
                log.error("reload_failed", extra={"serving": list(report.serving),
                                                  "failed": report.failed})
            return report

    async def _outcome(self, name: str, since: float, config: TenantConfig) -> str:
        """Wait until tenant `name` serves ("") or a start of `config` has failed since `since`
        (why). A failure of the config it replaced, still starting when the reload came, is
        not this reload's."""
        supervisor = self.supervisors[name]
        route = supervisor.route
        deadline = time.monotonic() + supervisor.config.settings.start_timeout_s + 5
        while True:
            failure = supervisor.last_failure
            if (failure is not None and failure["time"] >= since
                    and supervisor.failed_config == config):
                return str(failure["reason"])
            if route.state == "running" and route.backend is not None:
                return ""
            if route.state == "sleeping":  # the new settings apply when it wakes
                return ""
            if route.state == "stopped":
                return "stopped while starting"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"not serving {supervisor.config.settings.start_timeout_s:g} s after reload"
            await route.wait_for_change(remaining)

    def _runs_here(self, new: Config) -> Config:
        """In a cluster a host runs only the tenants placed on it; the rest stay in the config
        for the leader (placement) and the edge (routes)."""
        if self.cluster is None:
            return new
        return dataclasses.replace(
            new, tenants={n: t for n, t in new.tenants.items() if n in self.supervisors})

    def _keep_paths(self, new: Config) -> Config:
        """[paths] apply at the next start only, all together: until then the running folders
        stay, and tenants are read from the running tenants folder."""
        paths = self.config.gateway.paths
        if new.gateway.paths == paths:
            return new
        return dataclasses.replace(
            new,
            gateway=dataclasses.replace(new.gateway, paths=paths),
            tenants=load_tenants(paths.tenants_dir, new.gateway.tenant_defaults),
        )

    async def track_backups(self) -> None:
        """Replicate what now runs: a new database (an upload, a reload) from now on."""
        tenants = {name: s.config for name, s in self.supervisors.items()}
        await self.backups.track(self.config, tenants)

    def _apply_settings(self, new: Config) -> None:
        self.config = new
        self.spawner.config = new
        self.proxy.settings = new.gateway.proxy
        self.access_log.enabled = new.gateway.log.access_log
        self.auth.configure(new)
        logging.getLogger().setLevel(new.gateway.log.level.upper())

    async def tenant_command(self, tenant: TenantConfig, module: str, arguments: list[str]
                             ) -> tuple[list[str], dict[str, str]]:
        """`python -m module` as the tenant, sandboxed with only its data folder (uploads)."""
        uid = await asyncio.to_thread(self.spawner.tenant_user, tenant)
        return sandbox.importer_command(
            self.isolation, uid=uid if uid is not None else os.getuid(),
            settings=tenant.settings, data_dir=tenant.data_dir, importer_args=arguments,
            module=module)

    async def restart_tenant(self, name: str) -> None:
        """Blue/green replace of one tenant's process (StartFailed if the new one is unhealthy)."""
        supervisor = self.supervisors.get(name)
        if supervisor is None:
            raise GatewayError(f"no tenant {name!r} is running")
        tenant_dir = self.config.gateway.paths.tenants_dir / name
        fresh = await asyncio.to_thread(
            load_tenant, tenant_dir, self.config.gateway.tenant_defaults
        )
        with supervisor.route.lease():  # not put to sleep half-way
            await supervisor.replace(fresh)
        await self.track_backups()

    async def detach(self) -> list[HandedOver]:
        """Pause supervision and describe every running process, for a new worker."""
        await self._reload_lock.acquire()
        await self.backups.pause()  # the new worker replicates; never two at once
        await asyncio.gather(*(s.pause() for s in self.supervisors.values()))
        return [
            HandedOver(config=s.config, handle=s.current.handle)
            for s in self.supervisors.values()
            if s.current is not None and s.current.handle.output_fd >= 0  # else it is ending
        ]

    def resume(self) -> None:
        """The new worker never took over: carry on as before."""
        for supervisor in self.supervisors.values():
            supervisor.resume()
        self._reload_lock.release()
        task = asyncio.ensure_future(self.backups.resume())
        self._removing.add(task)
        task.add_done_callback(self._removing.discard)

    def release(self) -> None:
        """The new worker owns the tenants now: let go of them without stopping any."""
        for supervisor in self.supervisors.values():
            supervisor.release()
            self._removing.add(asyncio.ensure_future(supervisor.retired()))
        self.supervisors.clear()
        self._reload_lock.release()

    async def adopt(self, tenants: list[HandedOver], generation: int,
                    cluster_lease: int = 0) -> None:
        """Take over the processes an old worker ran, then apply whatever changed on disk. A
        cluster node joins with the old worker's lease (`cluster_lease`): still the same
        member, host (of the tenants adopted) or leader."""
        if self.certificates is not None:
            await self.certificates.start()
        self.spawner.continue_generations(generation)
        await self.spawner.start_spares()
        stale: list[str] = []
        for tenant in tenants:
            config = tenant.config or await self._read_stale(tenant.handle)
            if config is None:
                continue
            if tenant.config is None:
                stale.append(config.name)
            supervisor = self._register(config)
            try:
                process = await self.spawner.adopt(config, tenant.handle)
            except StartFailed as exc:
                log.warning("tenant_not_adopted", extra={"tenant": config.name,
                                                         "error": str(exc)})
                supervisor.start()
                continue
            supervisor.start(process)
        if self.cluster is not None:  # what runs here is what etcd places here
            await self.cluster.start(cluster_lease)
        else:
            for config in self.config.tenants.values():  # the old worker's sleepers sleep on
                if config.name not in self.supervisors:
                    self._add(config, asleep=True)
        adopted = self.config
        try:
            await self.reload()
        except ConfigError as exc:
            log.error("reload_rejected", extra={"error": str(exc)})
            self.config = adopted
        for name in stale:  # run with settings this code cannot read: replace, blue/green
            try:
                await self.supervisors[name].replace()
            except GatewayError as exc:  # the adopted process serves on
                log.error("tenant_replace_failed", extra={"tenant": name, "error": str(exc)})

    async def _read_stale(self, handle: ProcessHandle) -> TenantConfig | None:
        """The tenant's config from disk, for a process whose sent settings were refused."""
        gateway = self.config.gateway
        try:
            return await asyncio.to_thread(
                load_tenant, gateway.paths.tenants_dir / handle.tenant, gateway.tenant_defaults
            )
        except ConfigError as exc:
            log.error("tenant_not_adopted", extra={"tenant": handle.tenant, "error": str(exc)})
            handover.let_go(handle)
            return None

    async def stop(self) -> None:
        if self.cluster is not None:
            await self.cluster.stop()
        if self.certificates is not None:
            await self.certificates.stop()
        await asyncio.gather(*(s.stop() for s in self.supervisors.values()), *self._removing)
        await self.spawner.stop_spares()
        await self.backups.stop()  # after the tenants: their last writes are sent
        self.auth.close()

    def status(self) -> dict[str, Any]:
        return {
            "worker_pid": os.getpid(),
            "master_pid": os.getppid(),
            "domain": self.domain,
            "config": str(self.config.path),
            "isolation": self.isolation.describe(),
            "tls": self.config.gateway.tls.mode,
            "draining": self.draining,
            "tenants": [s.status() for s in self.supervisors.values()],
            "sleep": self.awake.status(),
            "backup": self.backups.status(),
            **({"cluster": self.cluster.status()} if self.cluster is not None else {}),
        }

