"""Tenant definitions in etcd: `gateway tenant add|remove` from any node, tenants/ on every node.

    definitions/<tenant>   {"id": ..., "files": {path: base64}}: the small files of
                           tenants/<tenant>/ (tenant.toml, metadata, plugins/), never data/

`gateway tenant add NAME` publishes a definition: a new tenant.toml, or the files of a folder
the operator prepared in this node's tenants/NAME (checked as a reload would). It is one
transaction that succeeds only if no tenant of that name is published or placed, and that
deletes what a former tenant of the name left (its replica record, a move), so the new one
starts with empty data. `gateway tenant remove NAME` deletes the definition, its placement,
endpoint, replica record and move in one transaction (its memberships end first, as on one
machine). Without etcd quorum both fail, saying so, and change nothing.

Every node watches the prefix and makes tenants/ match (`sync_folders`): a new tenant's folder
is written aside (tenants/.incoming-*) and renamed into place, with an empty data/ and a
`.definition` file holding the definition's id; a folder whose definition is gone is moved to
tenants/.removed/ exactly as `tenant remove` does on one machine (nothing deleted). A folder
without `.definition` was made by hand: it is left alone (a cluster from before definitions
were published keeps its tenants), or adopted when its files are the published ones. Then the
node reloads: the leader places new tenants, hosts start what is placed on them and stop what
is gone (its replica then expires as a removed tenant's does on one machine), edges route
them or answer "unknown host". Without etcd nothing is applied: nodes keep what they have.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ..config import DATA_DIR, Config, load_tenant, validate_tenant_name
from ..errors import ConfigError, GatewayError
from ..tenant_files import remove_tenant, tenant_toml
from .etcd import Etcd, EtcdUnavailable, follow
from .keys import DEFINITIONS, ENDPOINTS, MOVES, PLACEMENT, REPLICAS

if TYPE_CHECKING:
    from .node import ClusterNode

log = logging.getLogger(__name__)

MARKER = ".definition"  # in tenants/<name>/: the id of the definition it was made from
INCOMING = ".incoming-"
# etcd refuses requests over 1.5 MiB; a definition is settings and plugins, not data.
MAX_DEFINITION_BYTES = 512 * 1024
_SKIPPED = {"__pycache__"}


@dataclass(frozen=True, slots=True)
class Definition:
    id: str
    files: dict[str, bytes]  # path in the tenant's folder ("plugins/x.py") -> content

    def encode(self) -> str:
        return json.dumps({"id": self.id, "files": {
            path: base64.b64encode(data).decode() for path, data in sorted(self.files.items())}})


def decode(name: str, value: str) -> Definition:
    """A definition read from etcd; GatewayError if it is not one (paths are checked: a
    definition never writes outside its folder, nor into data/)."""
    try:
        raw = json.loads(value)
        files = {str(path): base64.b64decode(data, validate=True)
                 for path, data in raw["files"].items()}
        definition = Definition(str(raw["id"]), files)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise GatewayError(f"definitions/{name}: not a tenant definition ({exc})") from None
    validate_tenant_name(name)
    for path in files:
        _check_path(name, path)
    return definition


def _check_path(name: str, path: str) -> None:
    parts = PurePosixPath(path).parts
    if (not parts or path.startswith("/") or "\\" in path or parts[0] == DATA_DIR
            or any(part in ("..", ".") or part.startswith(".") for part in parts)):
        raise GatewayError(f"definitions/{name}: a file may not be called {path!r}")


# Publishing (the CLI) --------------------------------------------------------------------

def read_folder(directory: Path) -> dict[str, bytes]:
    """The files of a tenant's folder that make its definition: all but data/, hidden files
    and __pycache__. A symbolic link is refused (it would publish what it points to)."""
    files: dict[str, bytes] = {}
    for root, dirs, names in os.walk(directory):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIPPED
                         and not (here == directory and d == DATA_DIR))
        for entry in [*dirs, *names]:
            if (here / entry).is_symlink():
                raise GatewayError(f"{here / entry} is a symbolic link: a tenant definition"
                                   " holds files only")
        for file in sorted(n for n in names if not n.startswith(".")):
            files[(here / file).relative_to(directory).as_posix()] = (here / file).read_bytes()
    return files


def _unavailable(action: str, name: str, exc: EtcdUnavailable) -> GatewayError:
    return GatewayError(f"cannot {action} tenant {name!r}: etcd did not answer ({exc});"
                        " nothing was changed. Try again once etcd has quorum.")


async def add(config: Config, name: str, *, public: bool) -> None:
    """Publish tenant `name`: this node's tenants/NAME if the operator prepared it there,
    else a new tenant.toml."""
    validate_tenant_name(name)
    folder = config.gateway.paths.tenants_dir / name
    if folder.is_dir() and not (folder / MARKER).exists():
        if public:
            raise GatewayError(f"{folder} exists: set `public = true` in its tenant.toml rather"
                               " than passing --public")
        load_tenant(folder, config.gateway.tenant_defaults)  # ConfigError: what is wrong
        files = read_folder(folder)
    else:
        files = {"tenant.toml": tenant_toml(name, public=public).encode()}
    value = Definition(secrets.token_hex(8), files).encode()
    if len(value) > MAX_DEFINITION_BYTES:
        raise GatewayError(
            f"{folder}'s files are too big to publish ({len(value) // 1024} KiB encoded, at most"
            f" {MAX_DEFINITION_BYTES // 1024} KiB): a definition is settings and plugins; put"
            " data in data/ on its host (uploads)")
    etcd = Etcd(config.gateway.cluster.etcd_endpoints)
    try:
        # A read first, which etcd answers only with quorum: a write sent to a member that has
        # lost it may wait in its log and be committed when quorum returns, long after we said
        # it failed.
        if await etcd.get(DEFINITIONS + name) is not None or not await etcd.commit(
                {DEFINITIONS + name: 0, PLACEMENT + name: 0}, {DEFINITIONS + name: value},
                [REPLICAS + name, MOVES + name]):
            raise GatewayError(f"tenant {name!r} already exists in the cluster")
    except EtcdUnavailable as exc:
        raise _unavailable("add", name, exc) from None
    finally:
        await etcd.close()
    log.info("cluster_tenant_published", extra={"tenant": name, "files": sorted(files)})


async def is_published(config: Config, name: str) -> bool:
    etcd = Etcd(config.gateway.cluster.etcd_endpoints)
    try:
        return await etcd.get(DEFINITIONS + name) is not None
    except EtcdUnavailable as exc:
        raise _unavailable("remove", name, exc) from None
    finally:
        await etcd.close()


async def remove(config: Config, name: str) -> None:
    """Withdraw tenant `name`'s definition, and with it its placement and records."""
    etcd = Etcd(config.gateway.cluster.etcd_endpoints)
    try:
        found = await etcd.get(DEFINITIONS + name)
        if found is None:
            raise GatewayError(f"no tenant {name!r} in the cluster")
        if not await etcd.commit(
                {DEFINITIONS + name: found.mod_revision}, {},
                [DEFINITIONS + name, PLACEMENT + name, ENDPOINTS + name, REPLICAS + name,
                 MOVES + name]):
            raise GatewayError(f"tenant {name!r} changed meanwhile: try again")
    except EtcdUnavailable as exc:
        raise _unavailable("remove", name, exc) from None
    finally:
        await etcd.close()
    log.info("cluster_tenant_unpublished", extra={"tenant": name})


# Every node's tenants/ ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Sync:
    create: tuple[str, ...] = ()   # written from their definitions
    adopt: tuple[str, ...] = ()    # made by hand with the published files: marked as theirs
    remove: tuple[str, ...] = ()   # moved to tenants/.removed/ (before a create: re-added)
    conflicts: tuple[str, ...] = ()  # made by hand, other files: left alone, logged

    @property
    def changed(self) -> bool:
        return bool(self.create or self.adopt or self.remove)


def plan_sync(published: Mapping[str, str], marks: Mapping[str, str | None],
              same_files: Mapping[str, bool]) -> Sync:
    """What makes tenants/ match the `published` definitions (name -> id). `marks`: each
    folder's definition id (None: made by hand); `same_files`: for the hand-made folders of
    published names, whether their files are the published ones."""
    create: list[str] = []
    adopt: list[str] = []
    remove: list[str] = []
    conflicts: list[str] = []
    for name in sorted(set(published) | set(marks)):
        if name not in marks:
            create.append(name)
        elif marks[name] is None:
            if name in published:
                (adopt if same_files.get(name) else conflicts).append(name)
        elif name not in published:
            remove.append(name)
        elif marks[name] != published[name]:  # removed and added again while we were away
            remove.append(name)
            create.append(name)
    return Sync(tuple(create), tuple(adopt), tuple(remove), tuple(conflicts))


def sync_folders(tenants_dir: Path, published: Mapping[str, Definition],
                 unreadable: frozenset[str] = frozenset()) -> Sync:
    """Make tenants/ match `published` (see the module's docstring); what was done. The
    folders of `unreadable` definitions (a newer version's?) stay as they are."""
    for leftover in tenants_dir.glob(INCOMING + "*"):  # a node stopped while writing one
        shutil.rmtree(leftover, ignore_errors=True)
    marks: dict[str, str | None] = {}
    for entry in tenants_dir.iterdir():
        if entry.name.startswith(".") or not entry.is_dir() or entry.name in unreadable:
            continue
        marker = entry / MARKER
        marks[entry.name] = marker.read_text().strip() if marker.exists() else None
    same_files = {name: _has_files(tenants_dir / name, published[name].files)
                  for name, mark in marks.items() if mark is None and name in published}
    sync = plan_sync({n: d.id for n, d in published.items()}, marks, same_files)
    for name in sync.remove:
        moved = remove_tenant(tenants_dir, name)
        log.info("cluster_tenant_folder_removed", extra={"tenant": name, "moved_to": str(moved)})
    for name in sync.create:
        _write(tenants_dir, name, published[name])
        log.info("cluster_tenant_folder_made", extra={"tenant": name})
    for name in sync.adopt:
        (tenants_dir / name / MARKER).write_text(published[name].id + "\n")
    for name in sync.conflicts:
        log.error("cluster_tenant_folder_differs", extra={
            "tenant": name, "folder": str(tenants_dir / name),
            "hint": "it was made by hand with other files than the published ones: move it"
                    " away to take the published tenant"})
    return sync


def _has_files(folder: Path, files: Mapping[str, bytes]) -> bool:
    try:
        return read_folder(folder) == files
    except (GatewayError, OSError):
        return False


def _write(tenants_dir: Path, name: str, definition: Definition) -> None:
    """tenants/NAME from its definition, with an empty data/: written aside, then renamed in
    (a reload never sees half a folder)."""
    staging = tenants_dir / f"{INCOMING}{name}-{secrets.token_hex(4)}"
    try:
        staging.mkdir(mode=0o750)
        for path, data in definition.files.items():
            target = staging / path
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            target.write_bytes(data)
        (staging / DATA_DIR).mkdir(mode=0o700)
        (staging / MARKER).write_text(definition.id + "\n")
        staging.rename(tenants_dir / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


async def follow_definitions(node: ClusterNode) -> None:
    """Make tenants/ match the definitions in etcd, and reload, at every change (for ever)."""
    tenants_dir = node.gateway.config.gateway.paths.tenants_dir

    async def apply(values: dict[str, str]) -> None:
        published, unreadable = {}, set()
        for name, value in values.items():
            try:
                published[name] = decode(name, value)
            except GatewayError as exc:
                unreadable.add(name)
                log.error("cluster_definition_unreadable", extra={"tenant": name,
                                                                  "error": str(exc)})
        sync = await asyncio.to_thread(sync_folders, tenants_dir, published,
                                       frozenset(unreadable))
        known = set(node.gateway.config.tenants)
        if sync.changed or set(published) - set(sync.conflicts) - known:
            try:
                report = await node.gateway.reload()
            except ConfigError as exc:
                log.error("cluster_definitions_not_loaded", extra={"error": str(exc)})
                return
            log.info("cluster_definitions_applied", extra={
                "folders_made": list(sync.create), "folders_removed": list(sync.remove),
                **report.summary()})

    await follow(node.etcd, DEFINITIONS, apply)
