"""Tenant folders on disk: creating, removing, and owning them (uids, modes).

    tenants/            0711 root      (traverse, no listing)
      alice/            0750 root:alice (the operator's settings; the tenant may read them)
        tenant.toml, metadata.json, plugins/
        data/           2770 alice:alice (the tenant's SQLite files; the group is for alice's
                        replication user alone, see gateway/backup)

A tenant's uid is the owner of its data folder: allocated once from [uid_min, uid_max] and then
carried by the folder itself, so a tenant moved to another machine keeps it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path

from .config import DATA_DIR, TENANT_SETTINGS_FILE, SandboxSettings, validate_tenant_name
from .errors import GatewayError

TRASH_DIR = ".removed"

_TENANT_TOML = """\
# Settings for the tenant {name!r}. Every key is optional; see README.md, "Tenant settings".
public = {public}
# title = "{name}"
# memory_mb = 1024

# [datasette]
# sql_time_limit_ms = 1000
"""


def create_tenant(tenants_dir: Path, name: str, *, public: bool = False) -> Path:
    """Make tenants/NAME with a commented tenant.toml and an empty data folder."""
    validate_tenant_name(name)
    directory = tenants_dir / name
    if directory.exists():
        raise GatewayError(f"tenant {name!r} already exists ({directory})")
    directory.mkdir(parents=True)
    (directory / TENANT_SETTINGS_FILE).write_text(tenant_toml(name, public=public))
    (directory / DATA_DIR).mkdir(mode=0o700)
    return directory


def tenant_toml(name: str, *, public: bool = False) -> str:
    """A new tenant's commented tenant.toml."""
    return _TENANT_TOML.format(name=name, public="true" if public else "false")


def existing_tenant(tenants_dir: Path, name: str) -> Path:
    """tenants/NAME, which must exist."""
    directory = tenants_dir / name
    if not directory.is_dir():
        raise GatewayError(f"no tenant {name!r} in {tenants_dir}")
    return directory


def remove_tenant(tenants_dir: Path, name: str) -> Path:
    """Move tenants/NAME aside to tenants/.removed/NAME.<time>; nothing is deleted."""
    directory = existing_tenant(tenants_dir, name)
    trash = tenants_dir / TRASH_DIR
    trash.mkdir(mode=0o700, exist_ok=True)
    stamp = time.strftime('%Y%m%dT%H%M%S')
    destination = trash / f"{name}.{stamp}"
    for again in itertools.count(2):  # removed before, within the same second
        if not destination.exists():
            break
        destination = trash / f"{name}.{stamp}-{again}"
    directory.rename(destination)
    return destination


def tenant_uid(tenant_dir: Path, tenants_dir: Path, sandbox: SandboxSettings) -> int:
    """The tenant's uid: its data folder's owner, or the lowest free one in the range."""
    data_dir = tenant_dir / DATA_DIR
    owner = data_dir.stat().st_uid if data_dir.exists() else -1
    taken = _uids_in_use(tenants_dir, exclude=tenant_dir.name)
    if sandbox.uid_min <= owner <= sandbox.uid_max and owner not in taken:
        return owner
    for uid in range(sandbox.uid_min, sandbox.uid_max + 1):
        if uid not in taken:
            return uid
    raise GatewayError(
        f"no free tenant uid left in {sandbox.uid_min}-{sandbox.uid_max}; widen sandbox.uid_max"
    )


def _uids_in_use(tenants_dir: Path, exclude: str) -> set[int]:
    # At every start (a wake too): scandir and str paths take half pathlib's time (1.35 ms
    # against 2.4 ms for 300 tenants), in a thread that shares the GIL with the proxy.
    uids = set()
    with os.scandir(tenants_dir) as entries:
        for entry in entries:
            if entry.name != exclude and not entry.name.startswith("."):
                try:
                    uids.add(os.stat(os.path.join(entry.path, DATA_DIR)).st_uid)
                except OSError:
                    continue
    return uids


def prepare_tenant_dir(tenant_dir: Path, uid: int | None) -> None:
    """Make the folder modes and owners above true. `uid` None: not root, change no owners.

    Files the operator copied into data/ as root are handed to the tenant: SQLite's -wal and
    -shm files must be writable by the process that reads the database.
    """
    data_dir = tenant_dir / DATA_DIR
    data_dir.mkdir(mode=0o700, exist_ok=True)
    if uid is None:
        os.chmod(data_dir, 0o700)
        return
    # The group is the tenant's own: only its replication user (gateway/backup) is in it.
    # setgid: files anyone creates here stay in that group.
    os.chmod(data_dir, 0o2770)
    os.chmod(tenant_dir.parent, 0o711)
    os.chown(tenant_dir, 0, uid)
    os.chmod(tenant_dir, 0o750)
    os.chown(data_dir, uid, uid)
    for root, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.lstat(path).st_uid != uid:
                os.chown(path, uid, uid, follow_symlinks=False)


def make_private_dir(path: Path, uid: int | None, mode: int = 0o700) -> None:
    """A fresh folder only `uid` (and root) can enter; replaces whatever was there."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=mode, parents=True)
    os.chmod(path, mode)
    if uid is not None:
        os.chown(path, uid, uid)
