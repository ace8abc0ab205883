"""etcd's v3 API through its JSON gateway over HTTP: KV, transactions, leases, watches.

Chosen by what works and what it costs: etcd (3.4 in Debian) answers every v3 call as JSON over
HTTP/1.1 (grpc-gateway), so httpx, already a dependency, is the whole client: no gRPC stack, no
generated code. Keys and values are base64 in the JSON, int64 fields come back as strings.

Several endpoints (the cluster's members) are tried in turn; when none answers, EtcdUnavailable.
The cluster's shared state is small (nodes, placements), so a request per call is cheap enough;
watches are one long streaming response each. `follow` is how every part of a node reads its
share of that state: all of a prefix, then again after each change, nothing while etcd is away.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from ..errors import GatewayError

log = logging.getLogger(__name__)


class EtcdUnavailable(GatewayError):
    """No etcd member answered (or none has quorum)."""

    status = 503


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str
    value: str
    revision: int


def _b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def prefix_end(prefix: str) -> str:
    """The range_end that makes a range cover every key starting with `prefix` (etcd's rule)."""
    data = bytearray(prefix.encode())
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return _b64(bytes(data))
        data.pop()
    return _b64(b"\0")


def _key_value(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(raw["key"]), value=_unb64(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)), lease=int(raw.get("lease", 0)),
    )


class Etcd:
    """An etcd v3 client over the JSON gateway; `endpoints` are base URLs of the members."""

    def __init__(self, endpoints: Sequence[str], *, timeout_s: float = 2.0,
                 tls: ssl.SSLContext | None = None) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [endpoint.rstrip("/") for endpoint in endpoints]
        self._preferred = 0
        self._timeout_s = timeout_s
        verify: ssl.SSLContext | bool = tls if tls is not None else True
        self._client = httpx.AsyncClient(timeout=timeout_s, verify=verify)

    async def close(self) -> None:
        await self._client.aclose()

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one v3 request to the first member that answers; EtcdUnavailable if none."""
        errors = []
        for attempt in range(len(self.endpoints)):
            index = (self._preferred + attempt) % len(self.endpoints)
            try:
                response = await self._client.post(self.endpoints[index] + path, json=body)
            except httpx.HTTPError as exc:
                errors.append(f"{self.endpoints[index]}: {exc.__class__.__name__}")
                continue
            if response.status_code >= 500 or response.status_code == 429:
                errors.append(f"{self.endpoints[index]}: {_error_text(response)}")
                continue
            if response.status_code != 200:
                raise GatewayError(f"etcd {path}: {_error_text(response)}")
            self._preferred = index
            return dict(response.json())
        raise EtcdUnavailable("no etcd member answered: " + "; ".join(errors))

    # KV -----------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        found = (await self.call("/v3/kv/range", {"key": _b64(key)})).get("kvs", [])
        return _key_value(found[0]) if found else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under `prefix`, and the store's revision they were read at."""
        reply = await self.call(
            "/v3/kv/range", {"key": _b64(prefix), "range_end": prefix_end(prefix)}
        )
        revision = int(reply["header"]["revision"])
        return [_key_value(raw) for raw in reply.get("kvs", [])], revision

    async def get_from(self, key: str, prefix: str, *, limit: int = 0) -> list[KeyValue]:
        """The keys under `prefix` from `key` on, in key order (at most `limit`; 0: all)."""
        body: dict[str, Any] = {"key": _b64(key), "range_end": prefix_end(prefix)}
        if limit:
            body["limit"] = str(limit)
        return [_key_value(raw) for raw in (await self.call("/v3/kv/range", body)).get("kvs", [])]

    async def delete_below(self, key: str, prefix: str) -> None:
        """Delete the keys under `prefix` that sort before `key`."""
        await self.call("/v3/kv/deleterange", {"key": _b64(prefix), "range_end": _b64(key)})

    async def put(self, key: str, value: str, *, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int((await self.call("/v3/kv/put", body))["header"]["revision"])

    async def delete(self, key: str) -> bool:
        """Delete `key`; whether it was there (of two deleting at once, one hears True)."""
        reply = await self.call("/v3/kv/deleterange", {"key": _b64(key)})
        return int(reply.get("deleted", 0)) > 0

    async def create(self, key: str, value: str, *, lease: int = 0) -> tuple[bool, KeyValue | None]:
        """Put `key` only if it does not exist (one transaction): (created, the existing one)."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        reply = await self.call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                         "create_revision": "0"}],
            "success": [{"request_put": put}],
            "failure": [{"request_range": {"key": _b64(key)}}],
        })
        if reply.get("succeeded"):
            return True, None
        found = reply["responses"][0]["response_range"].get("kvs", [])
        return False, _key_value(found[0]) if found else None

    async def put_if_owner(self, owner_key: str, owner_value: str, key: str, value: str) -> bool:
        """Put `key` only while `owner_key` still holds `owner_value` (a leader's write fence)."""
        return await self.put_all_if_owner(owner_key, owner_value, {key: value})

    async def put_all_if_owner(self, owner_key: str, owner_value: str,
                               values: dict[str, str]) -> bool:
        """Put every key of `values` in one transaction, only while `owner_key` still holds
        `owner_value`."""
        reply = await self.call("/v3/kv/txn", {
            "compare": [{"key": _b64(owner_key), "target": "VALUE", "result": "EQUAL",
                         "value": _b64(owner_value)}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}
                        for key, value in values.items()],
        })
        return bool(reply.get("succeeded"))

    async def commit(self, unchanged: dict[str, int], puts: dict[str, str],
                     deletes: Sequence[str] = ()) -> bool:
        """Put `puts` and delete `deletes` in one transaction, only if every key of
        `unchanged` still has that mod_revision (0: it does not exist). Whether it was done."""
        reply = await self.call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL",
                         "mod_revision": str(revision)} for key, revision in unchanged.items()],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}
                        for key, value in puts.items()]
            + [{"request_delete_range": {"key": _b64(key)}} for key in deletes],
        })
        return bool(reply.get("succeeded"))

    # Leases -------------------------------------------------------------------------------

    async def grant(self, ttl_s: int) -> int:
        return int((await self.call("/v3/lease/grant", {"TTL": str(ttl_s)}))["ID"])

    async def keep_alive(self, lease: int) -> int:
        """Refresh `lease` once; its remaining TTL, 0 when it has already expired."""
        reply = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(reply.get("result", {}).get("TTL", 0))

    async def time_to_live(self, lease: int) -> int:
        """Seconds `lease` has left; -1 once it has expired (0: no lease, a key without one)."""
        if not lease:
            return 0
        reply = await self.call("/v3/lease/timetolive", {"ID": str(lease)})
        return int(reply.get("TTL", -1))

    async def revoke(self, lease: int) -> None:
        await self.call("/v3/lease/revoke", {"ID": str(lease)})

    # Watches ------------------------------------------------------------------------------

    async def watch_prefix(self, prefix: str, start_revision: int
                           ) -> AsyncIterator[list[WatchEvent]]:
        """Batches of changes under `prefix` from `start_revision` on, until the stream ends
        (a member died: EtcdUnavailable; the caller reads again and watches from there)."""
        body = {"create_request": {"key": _b64(prefix), "range_end": prefix_end(prefix),
                                   "start_revision": str(start_revision)}}
        for attempt in range(len(self.endpoints)):
            index = (self._preferred + attempt) % len(self.endpoints)
            try:
                async with self._client.stream(
                    "POST", self.endpoints[index] + "/v3/watch", json=body,
                    timeout=httpx.Timeout(self._timeout_s, read=None),
                ) as response:
                    if response.status_code != 200:
                        continue
                    self._preferred = index
                    async for line in response.aiter_lines():
                        events = _watch_events(line)
                        if events:
                            yield events
            except httpx.HTTPError:
                pass
            else:
                if response.status_code == 200:
                    break
        raise EtcdUnavailable("the etcd watch ended")


def _watch_events(line: str) -> list[WatchEvent]:
    if not line.strip():
        return []
    result = json.loads(line).get("result", {})
    events = []
    for raw in result.get("events", []):
        kv = raw["kv"]
        events.append(WatchEvent(
            kind="delete" if raw.get("type") == "DELETE" else "put",
            key=_unb64(kv["key"]), value=_unb64(kv.get("value", "")),
            revision=int(kv.get("mod_revision", 0)),
        ))
    return events


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or response.json().get("message"))
    except ValueError:
        return f"HTTP {response.status_code}"


async def follow(etcd: Etcd, prefix: str,
                 apply: Callable[[dict[str, str]], Awaitable[None]]) -> None:
    """Call `apply` with everything under `prefix` now and after every change, for ever. While
    etcd is unreachable nothing is applied (what runs stays as it is)."""
    while True:
        try:
            found, revision = await etcd.get_prefix(prefix)
            await apply({kv.key.removeprefix(prefix): kv.value for kv in found})
            async for _events in etcd.watch_prefix(prefix, revision + 1):
                found, revision = await etcd.get_prefix(prefix)
                await apply({kv.key.removeprefix(prefix): kv.value for kv in found})
        except EtcdUnavailable as exc:
            log.warning("cluster_etcd_unavailable", extra={"prefix": prefix, "error": str(exc)})
            await asyncio.sleep(1)
        except Exception:  # a bug or an OS error must not end the node's part: try again
            log.exception("cluster_apply_failed", extra={"prefix": prefix})
            await asyncio.sleep(1)
