"""Sign-in throttling: per account and per client address, with exponential back-off.

Each key (an email address, or a client address: IPv4 as is, IPv6 by its /64, since one host
usually owns a whole /64) has a count of recent failures. The first `free` failures cost
nothing; after that, each attempt must wait `initial * 2**(failures - free)` seconds (at most
`max`) after the last failure. An attempt counts as a failure from the moment it starts, so
parallel guesses are counted too; a success then takes its own count back from the address
and clears the account's. (Clearing the address's too would let an attacker reset their
address by signing in to an account of their own.) Failures are forgotten `window` seconds
after the last one.

Pure and in memory (one gateway process): the clock is passed in, nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..config import AuthSettings

_MAX_KEYS = 100_000  # bounded, so a flood of made-up emails cannot grow it without end


@dataclass(slots=True)
class _Failures:
    count: int
    last: float


class Throttle:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._failures: dict[str, _Failures] = {}

    def wait_s(self, account: str, address: str, now: float) -> float:
        """Seconds before an attempt for `account` from `address` may be made (0: now)."""
        settings = self.settings
        return max(
            self._wait(f"account:{account}", settings.throttle_account_attempts, now),
            self._wait(f"address:{address_key(address)}", settings.throttle_address_attempts,
                       now),
        )

    def attempt(self, account: str, address: str, now: float) -> None:
        """An attempt starts: count it as a failure until it succeeds."""
        for key in (f"account:{account}", f"address:{address_key(address)}"):
            failures = self._current(key, now)
            if failures is None:
                failures = _Failures(0, now)
            else:
                del self._failures[key]  # re-insert: the dict's order is least recent first
            failures.count += 1
            failures.last = now
            self._failures[key] = failures
        while len(self._failures) > _MAX_KEYS:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, account: str, address: str) -> None:
        self._failures.pop(f"account:{account}", None)
        failures = self._failures.get(f"address:{address_key(address)}")
        if failures is not None:
            failures.count = max(0, failures.count - 1)

    def _wait(self, key: str, free: int, now: float) -> float:
        failures = self._current(key, now)
        if failures is None or failures.count < free:
            return 0.0
        settings = self.settings
        delay = min(settings.throttle_backoff_initial_s * 2.0 ** min(failures.count - free, 32),
                    settings.throttle_backoff_max_s)
        return max(0.0, failures.last + delay - now)

    def _current(self, key: str, now: float) -> _Failures | None:
        failures = self._failures.get(key)
        if failures is not None and now - failures.last > self.settings.throttle_window_s:
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
