"""Handing running tenant processes from an old worker to a new one (gateway upgrade).

Over a SOCK_SEQPACKET socket pair (message boundaries kept, file descriptors passed with
SCM_RIGHTS), the old worker sends one message per tenant, carrying the file descriptors that
make the process its owner's (the lifeline's write end, its output and status pipes), then
"end". The new worker adopts them and answers "ready" once it serves; only then does the old
worker let go. If the new worker dies first, the old one reads end-of-file and keeps everything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from .config import TenantConfig, tenant_settings_from_table, validate_tenant_name
from .errors import ConfigError, TenantNameError
from .process import ProcessHandle

log = logging.getLogger(__name__)

_MAX_MESSAGE = 1 << 20
_FDS_PER_TENANT = 3


@dataclasses.dataclass(frozen=True, slots=True)
class HandedOver:
    """One tenant process as it travels between workers. `config` is None when the receiving
    code does not accept the settings the sender ran it with (see tenant_config_from_dict)."""

    config: TenantConfig | None
    handle: ProcessHandle


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message, default=str).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One message and the file descriptors it carried; ({}, []) at end of file."""
    data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, _FDS_PER_TENANT)
    if not data:
        return {}, []
    return json.loads(data), fds


def send_tenants(sock: socket.socket, tenants: list[HandedOver], generation: int,
                 cluster_lease: int = 0) -> None:
    """Every tenant, then "end" with the spawner's generation and, on a cluster node, the
    node's etcd lease (the new worker keeps it: its keys, its role and its tenants stay)."""
    for tenant in tenants:
        if tenant.config is None:
            continue
        handle = tenant.handle
        fds = [handle.lifeline_fd, handle.output_fd]
        if handle.status_fd >= 0:
            fds.append(handle.status_fd)
        send(sock, {
            "op": "tenant",
            "config": dataclasses.asdict(tenant.config),
            "handle": dataclasses.asdict(handle),
        }, fds)
    send(sock, {"op": "end", "generation": generation, "cluster_lease": cluster_lease})


def receive_tenants(sock: socket.socket) -> tuple[list[HandedOver], int, int]:
    """Everything the old worker sent: its tenants, generation and cluster lease (0: none, or
    an older worker that does not send it); raises ConnectionError if it stops half-way."""
    tenants: list[HandedOver] = []
    while True:
        message, fds = receive(sock)
        if message.get("op") == "end":
            return tenants, int(message["generation"]), int(message.get("cluster_lease", 0))
        if message.get("op") != "tenant":
            raise ConnectionError(f"handover ended early ({message or 'end of file'})")
        handle = _handle_from_dict(message["handle"], fds)
        try:
            config: TenantConfig | None = tenant_config_from_dict(message["config"])
        except ConfigError as exc:
            log.warning("handover_config_refused", extra={"tenant": handle.tenant,
                                                          "error": str(exc)})
            config = None
        tenants.append(HandedOver(config=config, handle=handle))


def tenant_config_from_dict(data: dict[str, Any]) -> TenantConfig:
    """The sender's TenantConfig, rebuilt through the config's own checks: the sender may run
    older or newer code, whose settings this code does not know or accepts no longer.
    ConfigError says which."""
    label = f"handover: tenant {data.get('name')!r}"
    try:
        return TenantConfig(
            name=validate_tenant_name(str(data["name"])),
            directory=Path(data["directory"]),
            settings=tenant_settings_from_table(data["settings"], file=label),
            databases=tuple(str(name) for name in data["databases"]),
            metadata_file=None if data["metadata_file"] is None else str(data["metadata_file"]),
            has_plugins=bool(data["has_plugins"]),
            fingerprint=str(data["fingerprint"]),
        )
    except KeyError as exc:
        raise ConfigError(f"{label}: {exc} is missing") from None
    except (TypeError, TenantNameError) as exc:
        raise ConfigError(f"{label}: {exc}") from None


def let_go(handle: ProcessHandle) -> None:
    """Close this worker's hold on a process it will not adopt (it ends with the sender's)."""
    for fd in (handle.lifeline_fd, handle.output_fd, handle.status_fd):
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def _handle_from_dict(data: dict[str, Any], fds: list[int]) -> ProcessHandle:
    fields = dict(data)
    fields["lifeline_fd"], fields["output_fd"] = fds[0], fds[1]
    fields["status_fd"] = fds[2] if len(fds) > 2 else -1
    fields["run_dir"] = Path(data["run_dir"])
    return ProcessHandle(**fields)
