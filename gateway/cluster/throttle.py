"""Sign-in throttling counted by every edge together, in etcd (auth/throttle.py's rules).

Each key's failures are /gateway/throttle/<kind>/<SHA-256 of the key> (no email address in
etcd's keys): {"count": N, "last": T}. Admitting an attempt reads the account's and the
address's in one transaction and, unless it must wait, counts it in a second one that succeeds
only if neither changed since (else it reads again), so guesses spread over edges, even at the
same moment, are all counted. The keys ride on a lease of twice throttle_window_s, granted anew
once less than a window is left: etcd forgets a key between one and two windows after its last
failure, with no lease per attempt. Without etcd, sign-in fails anyway (sessions are written
there), so admitting raises AccountsUnavailable too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import time
from functools import partial
from typing import Any

from ..auth.store import AccountStore
from ..auth.throttle import Failures, delay_s, is_current, keys
from ..config import AuthSettings
from ..errors import ConfigError, GatewayError
from .accounts import UNAVAILABLE, AccountsUnavailable, ReplicatedStore
from .etcd import Etcd, EtcdUnavailable
from .etcd_thread import EtcdThread

log = logging.getLogger(__name__)

PREFIX = "/gateway/throttle/"
_TRIES = 10  # transactions lost to other edges' attempts before asking to wait


class SharedThrottle:
    def __init__(self, etcd: EtcdThread, settings: AuthSettings, kind: str) -> None:
        self.etcd = etcd
        self.settings = settings
        self.kind = kind
        self._lease = 0
        self._lease_until = 0.0  # time.monotonic(), on the etcd thread's loop only

    @classmethod
    def for_store(cls, store: AccountStore, settings: AuthSettings, kind: str) -> SharedThrottle:
        """Through the etcd client of the cluster's accounts store (cluster/accounts.py)."""
        if not isinstance(store, ReplicatedStore):
            raise ConfigError("a shared throttle needs the cluster's accounts store")
        return cls(store.etcd, settings, kind)

    async def admit(self, account: str, address: str, now: float) -> float:
        """Seconds before an attempt may be made; when 0, it is counted (as a failure until
        `forgive`) on every edge."""
        try:
            return await self.etcd.run_async(partial(self._admit, account=account,
                                                     address=address, now=now))
        except EtcdUnavailable as exc:
            raise AccountsUnavailable(UNAVAILABLE) from exc

    async def forgive(self, account: str, address: str) -> None:
        """The attempt succeeded: the account's failures go, the address keeps its others."""
        try:
            await self.etcd.run_async(partial(self._forgive, account=account, address=address))
        except EtcdUnavailable:  # the account's failures then last their window
            log.warning("throttle_not_forgiven", extra={"account": account})

    def _name(self, key: str) -> str:
        return f"{PREFIX}{self.kind}/{hashlib.sha256(key.encode()).hexdigest()}"

    async def _admit(self, etcd: Etcd, account: str, address: str, now: float) -> float:
        pairs = keys(self.settings, account, address)
        names = [self._name(key) for key, _ in pairs]
        for _ in range(_TRIES):
            found = await _read(etcd, names)
            current = [failures if failures and is_current(failures, self.settings, now)
                       else None for failures, _ in found]
            wait_s = max(delay_s(failures, free, self.settings, now)
                         for failures, (_, free) in zip(current, pairs, strict=True))
            if wait_s > 0:
                return wait_s
            counted = {name: Failures((failures.count if failures else 0) + 1, now)
                       for name, failures in zip(names, current, strict=True)}
            if await self._write(etcd, names, [revision for _, revision in found], counted):
                return 0.0
        return self.settings.throttle_backoff_initial_s  # too many at once: slow them down

    async def _forgive(self, etcd: Etcd, account: str, address: str) -> None:
        (account_key, _), (address_key, _) = keys(self.settings, account, address)
        await etcd.delete(self._name(account_key))
        name = self._name(address_key)
        for _ in range(_TRIES):
            ((failures, revision),) = await _read(etcd, [name])
            if failures is None or failures.count == 0:
                return
            if await self._write(etcd, [name], [revision],
                                 {name: Failures(failures.count - 1, failures.last)}):
                return

    async def _write(self, etcd: Etcd, names: list[str], revisions: list[int],
                     values: dict[str, Failures]) -> bool:
        try:
            return await _write(etcd, names, revisions, values, await self._lease_for(etcd))
        except EtcdUnavailable:
            raise
        except GatewayError:  # our lease is gone (etcd restored from a backup): a new one
            self._lease_until = 0.0
            return False

    async def _lease_for(self, etcd: Etcd) -> int:
        window_s = self.settings.throttle_window_s
        if time.monotonic() + window_s > self._lease_until:
            self._lease = await etcd.grant(math.ceil(2 * window_s))
            self._lease_until = time.monotonic() + 2 * window_s
        return self._lease


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def _read(etcd: Etcd, names: list[str]) -> list[tuple[Failures | None, int]]:
    """Each key's failures and mod_revision (0: absent), read at one revision."""
    reply = await etcd.call("/v3/kv/txn", {"success": [
        {"request_range": {"key": _b64(name)}} for name in names]})
    found: list[tuple[Failures | None, int]] = []
    for response in reply["responses"]:
        kvs: list[dict[str, Any]] = response["response_range"].get("kvs", [])
        if not kvs:
            found.append((None, 0))
            continue
        value = json.loads(base64.b64decode(kvs[0]["value"]))
        found.append((Failures(int(value["count"]), float(value["last"])),
                      int(kvs[0]["mod_revision"])))
    return found


async def _write(etcd: Etcd, names: list[str], revisions: list[int],
                 values: dict[str, Failures], lease: int) -> bool:
    """Put `values` if no key of `names` changed since it was read at `revisions`."""
    reply = await etcd.call("/v3/kv/txn", {
        "compare": [{"key": _b64(name), "target": "MOD", "result": "EQUAL",
                     "mod_revision": str(revision)}
                    for name, revision in zip(names, revisions, strict=True)],
        "success": [{"request_put": {
            "key": _b64(name), "lease": str(lease),
            "value": _b64(json.dumps({"count": failures.count, "last": failures.last}))}}
            for name, failures in values.items()],
    })
    return bool(reply.get("succeeded"))
