"""Sign-in throttling: per account and per client address, with exponential back-off.

Each key (an email address, or a client address: IPv4 as is, IPv6 by its /64, since one host
usually owns a whole /64) has a count of recent failures. The first `free` failures cost
nothing; after that, each attempt must wait `initial * 2**(failures - free)` seconds (at most
`max`) after the last failure. An attempt counts as a failure from the moment it starts, so
parallel guesses are counted too; a success then takes its own count back from the address
and clears the account's. (Clearing the address's too would let an attacker reset their
address by signing in to an account of their own.) Failures are forgotten `window` seconds
after the last one.

Throttle is pure and in memory (one gateway process): the clock is passed in, nothing here does
I/O. In a cluster every edge counts in etcd instead (cluster/throttle.py), with the same rules
(the functions below); the request path calls either through `admit` and `forgive`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol

from ..config import AuthSettings

_MAX_KEYS = 100_000  # bounded, so a flood of made-up emails cannot grow it without end


class Admission(Protocol):
    """What the request path needs of a throttle: Throttle here, SharedThrottle in a cluster."""

    settings: AuthSettings

    async def admit(self, account: str, address: str, now: float) -> float: ...

    async def forgive(self, account: str, address: str) -> None: ...


@dataclass(slots=True)
class Failures:
    count: int
    last: float


def keys(settings: AuthSettings, account: str, address: str) -> list[tuple[str, int]]:
    """(key, failures that cost nothing) for the account and the address of an attempt."""
    return [(f"account:{account}", settings.throttle_account_attempts),
            (f"address:{address_key(address)}", settings.throttle_address_attempts)]


def is_current(failures: Failures, settings: AuthSettings, now: float) -> bool:
    return now - failures.last <= settings.throttle_window_s


def delay_s(failures: Failures | None, free: int, settings: AuthSettings, now: float) -> float:
    """Seconds before the next attempt (0: now), after `failures` (current ones)."""
    if failures is None or failures.count < free:
        return 0.0
    delay = min(settings.throttle_backoff_initial_s * 2.0 ** min(failures.count - free, 32),
                settings.throttle_backoff_max_s)
    return max(0.0, failures.last + delay - now)


class Throttle:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._failures: dict[str, Failures] = {}

    async def admit(self, account: str, address: str, now: float) -> float:
        """Seconds before an attempt may be made; when 0, the attempt is counted now (as a
        failure, until `forgive`), so parallel guesses are counted too."""
        wait_s = self.wait_s(account, address, now)
        if wait_s == 0:
            self.attempt(account, address, now)
        return wait_s

    async def forgive(self, account: str, address: str) -> None:
        self.succeeded(account, address)

    def wait_s(self, account: str, address: str, now: float) -> float:
        """Seconds before an attempt for `account` from `address` may be made (0: now)."""
        return max(delay_s(self._current(key, now), free, self.settings, now)
                   for key, free in keys(self.settings, account, address))

    def attempt(self, account: str, address: str, now: float) -> None:
        """An attempt starts: count it as a failure until it succeeds."""
        for key, _ in keys(self.settings, account, address):
            failures = self._current(key, now)
            if failures is None:
                failures = Failures(0, now)
            else:
                del self._failures[key]  # re-insert: the dict's order is least recent first
            failures.count += 1
            failures.last = now
            self._failures[key] = failures
        while len(self._failures) > _MAX_KEYS:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, account: str, address: str) -> None:
        (account_key, _), (address_key_, _) = keys(self.settings, account, address)
        self._failures.pop(account_key, None)
        failures = self._failures.get(address_key_)
        if failures is not None:
            failures.count = max(0, failures.count - 1)

    def _current(self, key: str, now: float) -> Failures | None:
        failures = self._failures.get(key)
        if failures is not None and not is_current(failures, self.settings, now):
            del self._failures[key]
            return None
        return failures


def address_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
