"""The cap on awake tenants (supervisor.max_awake_tenants): a wake beyond it puts others to sleep.

Without a cap, anyone can wake every public tenant at once (one request each) and the machine
holds all of them in memory, as if none ever slept. Each wake (supervisor.py) calls
`make_room`, as does a reload (the cap may have changed): it asks every supervisor what it is
(`awake()`), lets lifecycle.to_put_to_sleep choose the least recently used idle ones, and puts
those to sleep (`put_to_sleep`). All of it is synchronous, so no other task runs between the
choice and the moves: two wakes at once never choose the same tenant, and one that is starting
is never chosen. A tenant put to sleep is woken again by its next request, like any sleeper.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .lifecycle import to_put_to_sleep

if TYPE_CHECKING:
    from .supervisor import TenantSupervisor

log = logging.getLogger(__name__)


class AwakeCap:
    """Keeps at most `cap()` tenants that may sleep awake, busy ones excepted."""

    def __init__(self, supervisors: Mapping[str, TenantSupervisor], cap: Callable[[], int]
                 ) -> None:
        self.supervisors = supervisors
        self.cap = cap  # read at each wake: a reload applies
        self._over = False  # logged awake_cap_exceeded, and not back within the cap since

    def status(self) -> dict[str, int]:
        """Tenants awake that may sleep (those the cap counts), and the cap (0: none)."""
        awake = sum(1 for s in self.supervisors.values() if s.awake() is not None)
        return {"awake": awake, "cap": self.cap()}

    def make_room(self, waking: str = "") -> None:
        """Put to sleep as many idle tenants as it takes for the cap to hold, least recently
        used first. `waking`: the tenant that wakes (it counts as awake already); "" for a
        reload. If the rest are busy, the wake goes ahead: logged once, until the cap holds
        again."""
        cap = self.cap()
        awake = [a for s in self.supervisors.values() if (a := s.awake()) is not None]
        names, over = to_put_to_sleep(awake, cap)
        for name in names:
            self.supervisors[name].put_to_sleep(waking)
        if over and not self._over:
            log.warning("awake_cap_exceeded", extra={
                "tenant": waking, "awake": len(awake) - len(names), "cap": cap, "over": over})
        self._over = over > 0
