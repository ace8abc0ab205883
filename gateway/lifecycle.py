"""A tenant's lifecycle as data: its states, the moves allowed between them, the crash policy.

    starting --healthy--> running --crashed--> restarting --healthy--> running
       |  ^                  |                    |  ^  \\
       |  |                  |                    |  '--' start failed again
       |  |                  '-- crash loop --> failed <-- crash loop
       |  '------ cool-down over, or restarted ---'
       '--start failed--> restarting
    running --idle--> sleeping --first request--> starting
    every state but stopped --stop--> stopped

The table is the whole truth (h11's _state.py is the model): a move it does not list raises
IllegalTransition, so a supervisor bug shows as an error, not as a tenant in a state nobody
expects. Pure: no processes, no clock (callers pass `now`); supervisor.py applies the decisions.
A tenant with idle_stop_s is asleep when the gateway starts: no process until a request needs one.
Which awake tenants a wake puts to sleep under supervisor.max_awake_tenants is decided here
too (`to_put_to_sleep`); awake.py applies it.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .config import SupervisorSettings


class State(enum.Enum):
    STARTING = "starting"  # no process yet, or restarted by an operator or a change
    RUNNING = "running"  # a healthy process gets the requests
    RESTARTING = "restarting"  # it crashed (or could not start); the next try is after a backoff
    FAILED = "failed"  # it crashed too often; tried again after the cool-down
    SLEEPING = "sleeping"  # no request for idle_stop_s: stopped, started by the next request
    STOPPED = "stopped"  # removed, or the gateway stops; final


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.STARTING, State.RUNNING, State.RESTARTING, State.FAILED,
                               State.STOPPED}),
    State.RUNNING: frozenset({State.RESTARTING, State.FAILED, State.SLEEPING, State.STOPPED}),
    State.RESTARTING: frozenset({State.RESTARTING, State.RUNNING, State.FAILED, State.STARTING,
                                 State.STOPPED}),
    State.FAILED: frozenset({State.STARTING, State.STOPPED}),
    State.SLEEPING: frozenset({State.STARTING, State.STOPPED}),
    State.STOPPED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A move the table does not allow: a bug in whoever asked for it."""


@dataclass(slots=True)
class Lifecycle:
    state: State = State.STARTING

    def move(self, to: State) -> None:
        if to not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"a tenant cannot go from {self.state.value} to {to.value}")
        self.state = to


@dataclass(slots=True)
class CrashPolicy:
    """What to do after a crash: restart after a backoff that doubles with every crash, or,
    after crash_loop_restarts crashes within crash_loop_window_s, fail and rest for
    failed_cooldown_s (math.inf when it is 0: until an operator acts)."""

    settings: SupervisorSettings
    crashes: collections.deque[float] = field(default_factory=collections.deque)
    backoff_s: float = -1.0  # -1: not set yet, the initial backoff

    def after_crash(self, now: float) -> tuple[State, float]:
        """Record a crash at `now`; the state to enter and how long to wait in it."""
        settings = self.settings
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > settings.crash_loop_window_s:
            self.crashes.popleft()
        if len(self.crashes) >= settings.crash_loop_restarts:
            self.reset()
            return State.FAILED, settings.failed_cooldown_s or math.inf
        wait_s = self.backoff_s if self.backoff_s > 0 else settings.restart_backoff_initial_s
        self.backoff_s = min(wait_s * 2, settings.restart_backoff_max_s)
        return State.RESTARTING, wait_s

    def healthy(self) -> None:
        """A process passed its health check: the next crash waits the initial backoff again.
        Crashes are still counted, so one that crashes each time it gets traffic still fails."""
        self.backoff_s = -1.0

    def reset(self) -> None:
        """A fresh start (cool-down over, restarted, changed): forget every crash."""
        self.crashes.clear()
        self.backoff_s = -1.0


@dataclass(frozen=True, slots=True)
class AwakeTenant:
    """One awake tenant that may sleep, as the cap on awake tenants sees it."""

    name: str
    last_active: float  # monotonic: when its last lease was taken or given back
    may_sleep_now: bool  # running, and nothing in flight: no lease, request or replacement


def to_put_to_sleep(awake: Sequence[AwakeTenant], cap: int) -> tuple[list[str], int]:
    """Which of `awake` to put to sleep so that at most `cap` stay awake (0: no cap), least
    recently used first among those that may sleep now; and by how many the awake still
    exceed the cap (they are all busy: the wake happens anyway, a request is never refused
    for the cap)."""
    excess = len(awake) - cap if cap > 0 else 0
    if excess <= 0:
        return [], 0
    idle = sorted((a for a in awake if a.may_sleep_now), key=lambda a: (a.last_active, a.name))
    chosen = [a.name for a in idle[:excess]]
    return chosen, excess - len(chosen)
