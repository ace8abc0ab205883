"""Operating the cluster from any node: its status, a tenant's restart, a reload of every node.

Keys in etcd (under /gateway/, beside node.py's):

    members/<node>            {"role": ..., "advertise": ...} on the node's lease: every node,
                              edges too (nodes/ holds hosts only: the leader places on those)
    requests/<node>/<id>      {"action": "restart"|"reload"|"renew-certificate", ...} on the
                              asker's lease
    answers/<id>              {"node": ..., "ok": bool, "result"|"error": ...} on the same lease

A request is a key the target node watches; it claims it (deletes it), acts as its own control
socket would, and puts the answer. The asker waits for the answer, then revokes the lease, so a
request and its answer vanish with it, and an asker that dies leaves nothing behind for longer
than its timeout. `gateway reload --cluster` sends a reload to every member, the leader last: the
leader places newly added tenants only once the hosts have read their definitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from typing import TYPE_CHECKING, Any

from ..errors import GatewayError
from .etcd import Etcd, EtcdUnavailable, follow
from .keys import ANSWERS, ENDPOINTS, LEADER, MEMBERS, NODES, PLACEMENT, REQUESTS

if TYPE_CHECKING:
    from .node import ClusterNode

log = logging.getLogger(__name__)

RENEW_CERTIFICATE = "renew-certificate"
RESTART_TIMEOUT_S = 90  # under the control socket client's 120 s
RELOAD_TIMEOUT_S = 300


class NoAnswer(GatewayError):
    status = 504


async def register_member(node: ClusterNode) -> None:
    """This node is a member while its lease lives (called whenever it (re)joins)."""
    await node.etcd.put(MEMBERS + node.name, json.dumps(
        {"role": node.settings.role, "advertise": node.settings.advertise}), lease=node.lease.id)


# Status --------------------------------------------------------------------------------------

async def cluster_view(node: ClusterNode) -> dict[str, Any]:
    """Every member with its role, lease time left and capacity; placement and endpoints; as
    etcd has them now (not as this node last heard)."""
    etcd = node.etcd
    members, _ = await etcd.get_prefix(MEMBERS)
    capacity = {kv.key.removeprefix(NODES): int(json.loads(kv.value)["capacity"])
                for kv in (await etcd.get_prefix(NODES))[0]}
    leader = await etcd.get(LEADER)
    leader_name = leader.value.split(" ")[0] if leader is not None else None
    placement = await _values(etcd, PLACEMENT)
    endpoints = {t: json.loads(v)["address"]
                 for t, v in (await _values(etcd, ENDPOINTS)).items()}
    nodes = []
    for kv in members:
        name = kv.key.removeprefix(MEMBERS)
        nodes.append({
            "node": name, "role": json.loads(kv.value)["role"],
            "leader": name == leader_name, "lease_ttl_s": await etcd.time_to_live(kv.lease),
            "capacity": capacity.get(name),
            "tenants": sorted(t for t, host in placement.items() if host == name),
        })
    return {"leader": leader_name, "nodes": nodes, "placement": placement,
            "endpoints": endpoints,
            "unplaced": sorted(set(node.gateway.config.tenants) - set(placement))}


async def status_view(node: ClusterNode) -> dict[str, Any]:
    """cluster_view, or what is wrong when etcd does not answer (the node's own status stays)."""
    try:
        return await cluster_view(node)
    except EtcdUnavailable as exc:
        return {"error": str(exc)}


async def _values(etcd: Etcd, prefix: str) -> dict[str, str]:
    found, _ = await etcd.get_prefix(prefix)
    return {kv.key.removeprefix(prefix): kv.value for kv in found}


# Asking another node -------------------------------------------------------------------------

async def ask(etcd: Etcd, target: str, action: str, timeout_s: int,
              **fields: str) -> dict[str, Any]:
    """Put a request for `target`, wait for its answer; NoAnswer after `timeout_s`."""
    request_id = secrets.token_hex(8)
    lease = await etcd.grant(timeout_s + 5)
    try:
        revision = await etcd.put(REQUESTS + f"{target}/{request_id}",
                                  json.dumps({"action": action, **fields}), lease=lease)
        try:
            async with asyncio.timeout(timeout_s):
                return await _answer(etcd, ANSWERS + request_id, revision)
        except TimeoutError:
            raise NoAnswer(f"node {target} did not answer within {timeout_s} s") from None
    finally:
        with contextlib.suppress(EtcdUnavailable):
            await etcd.revoke(lease)


async def _answer(etcd: Etcd, key: str, revision: int) -> dict[str, Any]:
    while True:
        found = await etcd.get(key)  # put before the watch started
        if found is not None:
            return dict(json.loads(found.value))
        with contextlib.suppress(EtcdUnavailable):  # a member died: read again, watch again
            async for events in etcd.watch_prefix(key, revision + 1):
                for event in events:
                    if event.kind == "put" and event.key == key:
                        return dict(json.loads(event.value))
        await asyncio.sleep(0.5)


async def restart_tenant(node: ClusterNode, name: str) -> str:
    """Restart tenant `name` on the host it is placed on (this one or another); that host."""
    placed = await node.etcd.get(PLACEMENT + name)
    if placed is None:
        raise GatewayError(f"tenant {name!r} is not placed on any host: see `gateway status`")
    host = placed.value
    if host == node.name:
        await node.gateway.restart_tenant(name)
        return host
    answer = await ask(node.etcd, host, "restart", RESTART_TIMEOUT_S, tenant=name)
    if not answer["ok"]:
        raise GatewayError(f"{host}: {answer['error']}")
    return host


async def reload_cluster(node: ClusterNode) -> dict[str, dict[str, Any]]:
    """Reload every member (the leader last); each node's reload summary or error, by node."""
    members = sorted(kv.key.removeprefix(MEMBERS)
                     for kv in (await node.etcd.get_prefix(MEMBERS))[0])
    leader = await node.etcd.get(LEADER)
    leader_name = leader.value.split(" ")[0] if leader is not None else None
    others = [m for m in members if m != leader_name]
    answers = await asyncio.gather(*(_reload_one(node, m) for m in others))
    results = dict(zip(others, answers, strict=True))
    if leader_name in members:
        results[leader_name] = await _reload_one(node, leader_name)
    return dict(sorted(results.items()))


async def _reload_one(node: ClusterNode, member: str) -> dict[str, Any]:
    try:
        return await ask(node.etcd, member, "reload", RELOAD_TIMEOUT_S)
    except GatewayError as exc:
        return {"node": member, "ok": False, "error": str(exc)}


# Answering -----------------------------------------------------------------------------------

async def serve_requests(node: ClusterNode) -> None:
    """Act on the requests put for this node, for ever (cluster.follow: etcd down, nothing)."""
    prefix = REQUESTS + node.name + "/"
    taken: set[str] = set()

    async def apply(requests: dict[str, str]) -> None:
        taken.intersection_update(requests)
        for request_id, value in requests.items():
            if request_id not in taken:
                taken.add(request_id)
                node.spawn(_serve(node, prefix + request_id, request_id, value))

    await follow(node.etcd, prefix, apply)


async def _serve(node: ClusterNode, key: str, request_id: str, value: str) -> None:
    try:
        found = await node.etcd.get(key)
        if found is None or not await node.etcd.delete(key):
            return  # answered already, or its asker gave up
    except EtcdUnavailable as exc:  # its asker reports no answer
        log.error("cluster_request_unread", extra={"error": str(exc)})
        return
    request = json.loads(value)
    log.info("cluster_request", extra={"action": request.get("action"),
                                       "tenant": request.get("tenant")})
    answer: dict[str, Any] = {"node": node.name, "ok": True}
    try:
        answer["result"] = await _act(node, request)
    except GatewayError as exc:
        answer.update(ok=False, error=str(exc))
    except Exception:  # a bug: the asker hears of it rather than waiting for its timeout
        log.exception("cluster_request_failed", extra={"action": request.get("action")})
        answer.update(ok=False, error=f"internal error on {node.name} (its log has"
                      " cluster_request_failed)")
    try:
        await node.etcd.put(ANSWERS + request_id, json.dumps(answer), lease=found.lease)
    except EtcdUnavailable as exc:  # done, but the asker will report no answer
        log.error("cluster_answer_lost", extra={"error": str(exc)})


async def _act(node: ClusterNode, request: dict[str, Any]) -> Any:
    action = request.get("action")
    if action == "restart":
        await node.gateway.restart_tenant(str(request["tenant"]))
        return {"restarted": request["tenant"]}
    if action == "reload":
        report = await node.gateway.reload()
        return report.summary()
    if action == RENEW_CERTIFICATE:  # a follower's `gateway cert renew` (cluster/certs.py)
        certificates = node.gateway.certificates
        if certificates is None:
            raise GatewayError(f"{node.name} has no certificate: its tls.mode is \"off\"")
        return await certificates.renew(request.get("force") == "1")
    raise GatewayError(f"unknown request {action!r} (is every node the same version?)")

