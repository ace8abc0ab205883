"""A planned move of a tenant to another host: `gateway tenant move NAME HOST`, from any node.

One key per move, /gateway/moves/<tenant>, passed along:

    {"to": HOST, "state": "asked"}                  the CLI (only if no move is in progress)
    {"to": HOST, "from": OLD, "state": "moving"}    the leader, in the fenced transaction that
                                                    writes placement/<tenant> = HOST
    {..., "state": "synced"}                        the old host: it stopped the tenant, its
                                                    replica has every write, the position is in
                                                    replicas/<tenant>
    (deleted)                                       the new host, once the tenant serves there
                                                    (or any host serving it, if the new one died)
    {"to": HOST, "state": "refused", "reason": …}   the leader, when the move cannot be made

Edges hold the tenant's requests (proxy.retry_budget_s) from the old host's withdrawal until the
new host announces it, so a move within the budget fails no request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

from ..config import Config
from ..errors import GatewayError
from .etcd import Etcd
from .keys import ENDPOINTS, MOVES, ROOT

_POLL_S = 0.2


class MoveError(GatewayError):
    """A move that cannot be made, or did not finish; the message says why."""

    status = 409


def check_move(tenant: str, host: str, nodes: Mapping[str, Mapping[str, Any]],
               placement: Mapping[str, str]) -> str | None:
    """Why `tenant` cannot move to `host` (None: it can). `nodes`: the live hosts, as they
    registered ({"capacity": N, "backup": bool, ...})."""
    if host not in nodes:
        live = ", ".join(sorted(nodes)) or "none"
        return f"no live host named {host!r} (live hosts: {live})"
    if tenant not in placement:
        return f"{tenant} is not placed on any host yet"
    if placement[tenant] == host:
        return f"{tenant} already runs on {host}"
    if placement[tenant] not in nodes:
        return (f"{tenant}'s host {placement[tenant]} is not live (its tenants are placed"
                " again): try again once it serves")
    load = sum(1 for placed in placement.values() if placed == host)
    capacity = int(nodes[host]["capacity"])
    if load >= capacity:
        return f"host {host} is full ({load} of {capacity} tenants)"
    for node in (placement[tenant], host):
        if not nodes.get(node, {}).get("backup"):
            return (f"host {node} has no [backup]: a tenant moves by its replica, so both"
                    " hosts need one")
    return None


async def read_state(etcd: Etcd) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """The live hosts, the placement, the moves, as etcd has them now."""
    found, _ = await etcd.get_prefix(ROOT)
    nodes, placement, moves = {}, {}, {}
    for kv in found:
        kind, _, name = kv.key.removeprefix(ROOT).partition("/")
        if kind == "nodes":
            nodes[name] = json.loads(kv.value)
        elif kind == "placement":
            placement[name] = kv.value
        elif kind == "moves":
            moves[name] = json.loads(kv.value)
    return nodes, placement, moves


async def move(config: Config, tenant: str, host: str, timeout_s: float) -> dict[str, Any]:
    """Ask for the move and wait until `tenant` serves from `host`."""
    if not config.gateway.cluster.etcd_endpoints:
        raise MoveError(f"{config.path.name} has no [cluster]: a tenant moves between the"
                        " hosts of a cluster")
    if tenant not in config.tenants:
        raise MoveError(f"no tenant {tenant!r} in {config.gateway.paths.tenants_dir}")
    etcd = Etcd(config.gateway.cluster.etcd_endpoints)
    try:
        nodes, placement, moves = await read_state(etcd)
        existing = moves.get(tenant)
        if existing is not None and existing.get("state") != "refused":
            raise MoveError(f"a move of {tenant} to {existing.get('to')} is already in"
                            " progress")
        reason = check_move(tenant, host, nodes, placement)
        if reason is not None:
            raise MoveError(reason)
        if existing is not None:  # an old refusal nobody read
            await etcd.delete(MOVES + tenant)
        created, found = await etcd.create(MOVES + tenant,
                                           json.dumps({"to": host, "state": "asked"}))
        if not created:
            other = json.loads(found.value).get("to") if found else "?"
            raise MoveError(f"a move of {tenant} to {other} is already in progress")
        started = time.monotonic()
        await _wait_done(etcd, tenant, host, started + timeout_s)
        return {"tenant": tenant, "from": placement[tenant], "to": host,
                "duration_s": round(time.monotonic() - started, 2)}
    finally:
        await etcd.close()


async def _wait_done(etcd: Etcd, tenant: str, host: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        found = await etcd.get(MOVES + tenant)
        if found is None:
            endpoint = await etcd.get(ENDPOINTS + tenant)
            node = json.loads(endpoint.value)["node"] if endpoint is not None else None
            if node == host:
                return
            if node is not None:
                raise MoveError(f"the move of {tenant} to {host} was abandoned ({host} went"
                                f" away); {tenant} serves from {node}")
        elif (state := json.loads(found.value)).get("state") == "refused":
            await etcd.delete(MOVES + tenant)
            raise MoveError(f"the leader refused to move {tenant}: {state.get('reason')}")
        await asyncio.sleep(_POLL_S)
    raise MoveError(f"{tenant} does not serve from {host} yet; the move goes on: see"
                    " `gateway status --json` on the hosts, and their logs")
