"""How a tenant process is isolated: what this machine allows (probed once), and the command line.

Levels, strongest first (`probe_isolation` picks the strongest that works, and says which):

    full      root + bubblewrap with user namespaces: the tenant's own uid/gid, no groups, no
              capabilities, only /usr, the venv, its config (read-only), its data folder, its
              socket folder and a private /tmp; no network but its socket; its own PID namespace.
    root-bwrap  as full, for machines without unprivileged user namespaces: bwrap runs as root
              and setpriv drops to the tenant's uid inside it.
    uid       root, but no namespaces (Docker's default seccomp profile and capabilities): own
              uid/gid, no groups, no capabilities, no-new-privs, 0700 folders; no filesystem view.
    unprivileged  not root (the demo), bubblewrap with user namespaces: the sandbox of full,
              but tenants run as the gateway's user (only root can give them users of their own).
    none      not root, no bubblewrap: tenants run as the gateway's user and see what it sees.

Every level applies rlimits (address space, open files, processes). The argv builders are pure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .config import TenantSettings

Level = Literal["full", "root-bwrap", "uid", "unprivileged", "none"]

# Where things appear inside a bubblewrap sandbox.
SANDBOX_VENV = "/venv"
SANDBOX_PACKAGE_PARENT = "/opt/gateway"
SANDBOX_CONF = "/conf"
SANDBOX_DATA = "/data"
SANDBOX_RUN = "/run/ds"
SANDBOX_SPARES = "/.spares"  # <run_dir>/spares, in the zygote's sandbox only (zygote.py)
SOCKET_NAME = "ds.sock"

_PROTECTIONS: dict[Level, list[str]] = {
    "full": ["own uid/gid", "no groups or capabilities", "rlimits", "private filesystem view",
             "no network", "own PID namespace"],
    "root-bwrap": ["own uid/gid", "no groups or capabilities", "rlimits",
                   "private filesystem view", "no network", "own PID namespace"],
    "uid": ["own uid/gid", "no groups or capabilities", "rlimits", "0700 tenant folders"],
    "unprivileged": ["no capabilities", "rlimits", "private filesystem view", "no network",
                     "own PID namespace"],
    "none": ["rlimits"],
}
_MISSING: dict[Level, list[str]] = {
    "full": [],
    "root-bwrap": [],
    "uid": ["private filesystem view", "no network", "own PID namespace"],
    "unprivileged": ["own uid/gid"],
    "none": ["own uid/gid", "private filesystem view", "no network", "own PID namespace"],
}


@dataclass(frozen=True, slots=True)
class Isolation:
    level: Level
    reason: str

    @property
    def switches_user(self) -> bool:
        return self.level in ("full", "root-bwrap", "uid")

    @property
    def uses_bwrap(self) -> bool:
        return self.level in ("full", "root-bwrap", "unprivileged")

    @property
    def is_complete(self) -> bool:
        """Everything a tenant can be given: its own user and a sandbox."""
        return self.level in ("full", "root-bwrap")

    def describe(self) -> dict[str, object]:
        return {
            "level": self.level,
            "protections": _PROTECTIONS[self.level],
            "missing": _MISSING[self.level],
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class TenantPaths:
    """Host paths a tenant process needs."""

    venv: Path
    package_parent: Path
    data_dir: Path
    run_dir: Path
    metadata_file: Path | None
    plugins_dir: Path | None


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    socket_path: Path  # on the host


def probe_isolation(mode: str, probe_uid: int) -> Isolation:
    """Find the strongest isolation that works here (runs bwrap once or twice, ~10 ms)."""
    if mode == "off":
        return Isolation("none", "sandbox.isolation is off")
    bwrap = shutil.which("bwrap")
    if os.geteuid() != 0:
        return _probe_unprivileged(bwrap)
    if bwrap is None:
        return Isolation("uid", "bubblewrap (bwrap) is not installed")
    unprivileged = [
        "setpriv", f"--reuid={probe_uid}", f"--regid={probe_uid}", "--clear-groups",
        "--inh-caps=-all", bwrap, "--unshare-all", *_PROBE_MOUNTS, "/usr/bin/true",
    ]
    failure = _failure(unprivileged)
    if failure is None:
        return Isolation("full", "bubblewrap with user namespaces")
    as_root = [bwrap, *_ROOT_UNSHARE, *_PROBE_MOUNTS, "/usr/bin/true"]
    if _failure(as_root) is None:
        return Isolation("root-bwrap", "bubblewrap as root (no unprivileged user namespaces)")
    return Isolation(
        "uid", f"bubblewrap cannot sandbox here ({failure}; in Docker: see README, Deploy)"
    )


def probe_root_bwrap() -> str | None:
    """None when bubblewrap runs as root with the namespaces of `root-bwrap`, else why not."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    return _failure([bwrap, *_ROOT_UNSHARE, *_PROBE_MOUNTS, "/usr/bin/true"])


def _probe_unprivileged(bwrap: str | None) -> Isolation:
    not_root = "the gateway is not running as root, so tenants share its user"
    if bwrap is None:
        return Isolation("none", f"{not_root}; bubblewrap (bwrap) is not installed")
    failure = _failure([bwrap, "--unshare-all", *_PROBE_MOUNTS, "/usr/bin/true"])
    if failure is not None:
        return Isolation("none", f"{not_root}; bubblewrap cannot sandbox here ({failure})")
    return Isolation("unprivileged", f"{not_root}; bubblewrap with user namespaces")


def _failure(argv: list[str]) -> str | None:
    """None when the command succeeds, else what went wrong (its last line's first sentence)."""
    try:
        result = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if result.returncode == 0:
        return None
    lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[-1].split(". ")[0] if lines else f"exit status {result.returncode}"


_BASE_MOUNTS = [
    "--ro-bind", "/usr", "/usr",
    "--symlink", "usr/bin", "/bin",
    "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64",
    "--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache",
]
# The probe mounts what every tenant sandbox mounts besides binds: a container's masked /proc
# (Docker's default) lets bwrap create namespaces but not mount a new /proc.
_PROBE_MOUNTS = [*_BASE_MOUNTS, "--proc", "/proc", "--dev", "/dev"]
_ROOT_UNSHARE = [
    "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup",
]


def rlimit_argv(settings: TenantSettings) -> list[str]:
    memory = settings.memory_mb * 1024 * 1024
    return [
        "prlimit",
        f"--as={memory}:{memory}",
        f"--nofile={settings.open_files}:{settings.open_files}",
        f"--nproc={settings.processes}:{settings.processes}",
        "--core=0:0",
        "--",
    ]


def drop_privileges_argv(uid: int, *, before_bwrap: bool) -> list[str]:
    """setpriv to the tenant's uid/gid with no groups and no capabilities.

    Right before an unprivileged bwrap the bounding set must stay: bwrap needs capabilities
    inside the user namespace it creates (and sets no-new-privs itself).
    """
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all"]
    if not before_bwrap:
        argv += ["--bounding-set=-all", "--no-new-privs"]
    return [*argv, "--"]


def launch(
    isolation: Isolation,
    *,
    uid: int,
    settings: TenantSettings,
    paths: TenantPaths,
    lifeline_fd: int,
    status_fd: int,
    secret: str,
    databases: list[str],
    datasette_args: list[str],
) -> Launch:
    """The command line and environment that start one tenant process.

    `databases` and `datasette_args` use the paths the process sees (see sandbox_view)."""
    env = {
        **_python_env(isolation, paths.package_parent),
        "DATASETTE_SECRET": secret,  # never in argv: /proc/PID/cmdline is world-readable
    }
    socket_path = paths.run_dir / SOCKET_NAME
    if not isolation.uses_bwrap:
        inner = _tenant_command(
            python=str(paths.venv / "bin" / "python"),
            lifeline_fd=lifeline_fd,
            databases=databases,
            datasette_args=datasette_args,
        )
        return Launch(_without_bwrap(isolation, uid, settings, inner), env, socket_path)

    mounts = _code_mounts(paths.venv, paths.package_parent)
    if paths.metadata_file is not None:
        name = paths.metadata_file.name
        mounts += ["--ro-bind", str(paths.metadata_file), f"{SANDBOX_CONF}/{name}"]
    if paths.plugins_dir is not None:
        mounts += ["--ro-bind", str(paths.plugins_dir), f"{SANDBOX_CONF}/plugins"]
    mounts += [
        "--bind", str(paths.data_dir), SANDBOX_DATA,
        "--perms", "0755", "--dir", "/run",
        "--bind", str(paths.run_dir), SANDBOX_RUN,
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", SANDBOX_DATA,
    ]
    inner = _tenant_command(
        python=f"{SANDBOX_VENV}/bin/python",
        lifeline_fd=lifeline_fd,
        databases=databases,
        datasette_args=datasette_args,
    )
    bwrap_common = ["--new-session", "--as-pid-1", "--json-status-fd", str(status_fd)]
    return Launch(_bwrap(isolation, uid, settings, bwrap_common, mounts, inner), env, socket_path)


def importer_command(
    isolation: Isolation, *, uid: int, settings: TenantSettings, data_dir: Path,
    importer_args: list[str], module: str = "gateway.importer",
) -> tuple[list[str], dict[str, str]]:
    """`python -m gateway.importer` (or another gateway `module`: the upload page's table
    deletion) as the tenant, isolated like its Datasette (uid, rlimits, view) but with only its
    data folder mounted: no socket folder, no configuration."""
    venv, package_parent = venv_prefix(), gateway_package_parent()
    env = _python_env(isolation, package_parent)
    if not isolation.uses_bwrap:
        inner = [str(venv / "bin" / "python"), "-m", module,
                 "--data-dir", str(data_dir), *importer_args]
        return _without_bwrap(isolation, uid, settings, inner), env
    inner = [f"{SANDBOX_VENV}/bin/python", "-m", module,
             "--data-dir", SANDBOX_DATA, *importer_args]
    mounts = [
        *_code_mounts(venv, package_parent),
        "--bind", str(data_dir), SANDBOX_DATA,
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", SANDBOX_DATA,
    ]
    bwrap_common = ["--new-session", "--die-with-parent"]
    return _bwrap(isolation, uid, settings, bwrap_common, mounts, inner), env


def can_use_spares(isolation: Isolation) -> bool:
    """Spares (spares.py) need root: the gateway binds tenants' folders into their sandboxes,
    and the spare takes the tenant's uid only when handed one."""
    return isolation.is_complete and os.geteuid() == 0


def spare_launch(*, spare_dir: Path, run_dir: Path, lifeline_fd: int, handoff_fd: int,
                 ready_fd: int, status_fd: int) -> Launch:
    """A spare (spare_process.py): bubblewrap as root with the namespaces of `root-bwrap` and a
    tenant's filesystem view, /data and /conf bound from `spare_dir` (see mounts.py). It runs as
    root only until it is handed a tenant; it then takes the tenant's uid, rlimits and drops
    every capability itself, before reading anything of the tenant's."""
    venv, package_parent = venv_prefix(), gateway_package_parent()
    mounts = [
        *_code_mounts(venv, package_parent),
        "--bind", str(spare_dir / "data"), SANDBOX_DATA,
        "--bind", str(spare_dir / "conf"), SANDBOX_CONF,
        "--perms", "0755", "--dir", "/run",
        "--bind", str(run_dir), SANDBOX_RUN,
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/",
    ]
    inner = [f"{SANDBOX_VENV}/bin/python", "-m", "gateway.spare_process",
             "--lifeline-fd", str(lifeline_fd), "--handoff-fd", str(handoff_fd),
             "--ready-fd", str(ready_fd)]
    argv = ["bwrap", *_ROOT_UNSHARE, "--new-session", "--as-pid-1",
            "--json-status-fd", str(status_fd), *mounts, *inner]
    env = _python_env(Isolation("root-bwrap", "spare"), package_parent)
    return Launch(argv, env, run_dir / SOCKET_NAME)


def zygote_launch(*, run_root: Path, lifeline_fd: int, control_fd: int) -> Launch:
    """The zygote (zygote.py): bubblewrap as root with a spare's filesystem view (empty /data,
    /conf and /run/ds, which each fork binds its own folders onto) and <run_dir>/spares at
    SANDBOX_SPARES, in the host's PID namespace (its forks each make their own, and
    outlive it). Its other namespaces are its own too; each fork unshares all of them again."""
    venv, package_parent = venv_prefix(), gateway_package_parent()
    mounts = [
        *_code_mounts(venv, package_parent),
        "--bind", str(run_root / "spares"), SANDBOX_SPARES,
        "--dir", SANDBOX_DATA, "--dir", SANDBOX_CONF,
        "--perms", "0755", "--dir", "/run", "--dir", SANDBOX_RUN,
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/",
    ]
    inner = [f"{SANDBOX_VENV}/bin/python", "-m", "gateway.zygote",
             "--lifeline-fd", str(lifeline_fd), "--control-fd", str(control_fd)]
    unshare = [option for option in _ROOT_UNSHARE if option != "--unshare-pid"]
    argv = ["bwrap", *unshare, "--new-session", *mounts, *inner]
    env = _python_env(Isolation("root-bwrap", "zygote"), package_parent)
    return Launch(argv, env, run_root / "spares")


def spare_rlimits(settings: TenantSettings) -> dict[str, int]:
    """What rlimit_argv sets, for a spare to set itself."""
    memory = settings.memory_mb * 1024 * 1024
    return {"as": memory, "nofile": settings.open_files, "nproc": settings.processes, "core": 0}


def _without_bwrap(isolation: Isolation, uid: int, settings: TenantSettings,
                   inner: list[str]) -> list[str]:
    drop = drop_privileges_argv(uid, before_bwrap=False) if isolation.switches_user else []
    return [*rlimit_argv(settings), *drop, *inner]


def _bwrap(isolation: Isolation, uid: int, settings: TenantSettings, options: list[str],
           mounts: list[str], inner: list[str]) -> list[str]:
    """rlimits, the tenant's uid and a bubblewrap sandbox in which `mounts` are all there is."""
    if isolation.level == "unprivileged":  # bwrap makes a user namespace; no uid to switch to
        return [*rlimit_argv(settings), "bwrap", "--unshare-all", *options, *mounts, *inner]
    if isolation.level == "full":
        return [
            *rlimit_argv(settings),
            *drop_privileges_argv(uid, before_bwrap=True),
            "bwrap", "--unshare-all", *options, *mounts, *inner,
        ]
    return [
        *rlimit_argv(settings),
        "bwrap", *_ROOT_UNSHARE, *options, *mounts,
        *drop_privileges_argv(uid, before_bwrap=False), *inner,
    ]


def _code_mounts(venv: Path, package_parent: Path) -> list[str]:
    """The system, the venv and the gateway package, read-only."""
    return [
        *_BASE_MOUNTS,
        "--ro-bind", str(venv), SANDBOX_VENV,
        "--ro-bind", str(package_parent / "gateway"), f"{SANDBOX_PACKAGE_PARENT}/gateway",
    ]


def _python_env(isolation: Isolation, package_parent: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "MALLOC_ARENA_MAX": "2",  # glibc reserves 64 MB of address space per arena otherwise
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": SANDBOX_PACKAGE_PARENT if isolation.uses_bwrap else str(package_parent),
    }


def _tenant_command(
    *, python: str, lifeline_fd: int, databases: list[str], datasette_args: list[str]
) -> list[str]:
    wal = [arg for database in databases for arg in ("--wal", database)]
    return [
        python, "-m", "gateway.tenant_process",
        "--lifeline-fd", str(lifeline_fd), *wal,
        "--", *datasette_args,
    ]


def sandbox_view(isolation: Isolation, paths: TenantPaths) -> TenantPaths:
    """The same paths as the tenant process sees them (inside bwrap they are remounted)."""
    if not isolation.uses_bwrap:
        return paths
    return TenantPaths(
        venv=Path(SANDBOX_VENV),
        package_parent=Path(SANDBOX_PACKAGE_PARENT),
        data_dir=Path(SANDBOX_DATA),
        run_dir=Path(SANDBOX_RUN),
        metadata_file=Path(SANDBOX_CONF, paths.metadata_file.name) if paths.metadata_file else None,
        plugins_dir=Path(SANDBOX_CONF, "plugins") if paths.plugins_dir else None,
    )


def gateway_package_parent() -> Path:
    """The folder holding the `gateway` package (bound read-only into sandboxes)."""
    return Path(__file__).resolve().parent.parent


def venv_prefix() -> Path:
    return Path(sys.prefix)
