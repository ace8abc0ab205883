"""The tenant lifecycle as data (lifecycle.py): every move, and the crash policy, without
processes."""

from __future__ import annotations

import itertools
import math
import typing

import pytest

from gateway.backends import TenantState
from gateway.config import SupervisorSettings
from gateway.lifecycle import (
    TRANSITIONS,
    AwakeTenant,
    CrashPolicy,
    IllegalTransition,
    Lifecycle,
    State,
    to_put_to_sleep,
)

S = State
# The specification, edge by edge: what the supervisor may do in each state.
ALLOWED = {
    (S.STARTING, S.STARTING),  # restarted by an operator before the first start
    (S.STARTING, S.RUNNING),  # healthy
    (S.STARTING, S.RESTARTING),  # could not start: retry after a backoff
    (S.STARTING, S.FAILED),  # could not start, crash_loop_restarts times in a row
    (S.RUNNING, S.RESTARTING),  # crashed
    (S.RUNNING, S.FAILED),  # crashed once too often
    (S.RESTARTING, S.RESTARTING),  # the restart failed too
    (S.RESTARTING, S.RUNNING),  # the restart is healthy
    (S.RESTARTING, S.FAILED),  # crash loop
    (S.RESTARTING, S.STARTING),  # restarted by an operator during the backoff
    (S.FAILED, S.STARTING),  # cool-down over, or restarted by an operator
    (S.RUNNING, S.SLEEPING),  # no request for idle_stop_s
    (S.SLEEPING, S.STARTING),  # woken by a request, or restarted by an operator
    *((state, S.STOPPED) for state in State if state is not S.STOPPED),
}


@pytest.mark.parametrize(("start", "to"), list(itertools.product(State, State)))
def test_every_move_is_allowed_or_raises(start: State, to: State) -> None:
    lifecycle = Lifecycle(start)
    if (start, to) in ALLOWED:
        lifecycle.move(to)
        assert lifecycle.state is to
    else:
        with pytest.raises(IllegalTransition) as raised:
            lifecycle.move(to)
        assert str(raised.value) == f"a tenant cannot go from {start.value} to {to.value}"
        assert lifecycle.state is start


def test_the_table_is_the_specification() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == ALLOWED
    assert Lifecycle().state is S.STARTING


def test_the_proxy_knows_every_state() -> None:
    """The route shows the lifecycle's state to the proxy and to `status` by its value."""
    assert {state.value for state in State} == set(typing.get_args(TenantState))


def _policy(**settings: float) -> CrashPolicy:
    defaults = {"restart_backoff_initial_s": 0.5, "restart_backoff_max_s": 3.0,
                "crash_loop_restarts": 5, "crash_loop_window_s": 60.0, "failed_cooldown_s": 300.0}
    return CrashPolicy(SupervisorSettings(**{**defaults, **settings}))  # type: ignore[arg-type]


def test_backoff_doubles_up_to_the_maximum() -> None:
    policy = _policy(crash_loop_restarts=100)
    waits = [policy.after_crash(now=float(t)) for t in range(7)]
    assert waits == [(S.RESTARTING, w) for w in (0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0)]


def test_a_healthy_start_resets_the_backoff_but_keeps_counting_crashes() -> None:
    policy = _policy(crash_loop_restarts=3)
    assert policy.after_crash(0.0) == (S.RESTARTING, 0.5)
    policy.healthy()
    assert policy.after_crash(1.0) == (S.RESTARTING, 0.5)
    policy.healthy()
    assert policy.after_crash(2.0) == (S.FAILED, 300.0)


def test_a_crash_loop_fails_for_the_cool_down_then_starts_afresh() -> None:
    policy = _policy()
    decisions = [policy.after_crash(float(t)) for t in range(5)]
    assert decisions[:4] == [(S.RESTARTING, w) for w in (0.5, 1.0, 2.0, 3.0)]
    assert decisions[4] == (S.FAILED, 300.0)
    # After the cool-down the count starts again: four more restarts before failing again.
    again = [policy.after_crash(400.0 + t) for t in range(5)]
    assert [state for state, _ in again] == [S.RESTARTING] * 4 + [S.FAILED]
    assert again[0] == (S.RESTARTING, 0.5)


def test_crashes_outside_the_window_never_make_a_loop() -> None:
    policy = _policy(crash_loop_restarts=2, crash_loop_window_s=10.0)
    assert [policy.after_crash(t * 11.0)[0] for t in range(20)] == [S.RESTARTING] * 20


def test_no_cool_down_means_failed_until_an_operator_acts() -> None:
    policy = _policy(crash_loop_restarts=1, failed_cooldown_s=0.0)
    assert policy.after_crash(0.0) == (S.FAILED, math.inf)


def test_reset_forgets_crashes_and_backoff() -> None:
    policy = _policy(crash_loop_restarts=3)
    policy.after_crash(0.0)
    policy.after_crash(1.0)
    policy.reset()
    assert policy.after_crash(2.0) == (S.RESTARTING, 0.5)
    assert policy.after_crash(3.0) == (S.RESTARTING, 1.0)
    assert policy.after_crash(4.0) == (S.FAILED, 300.0)


def test_the_supervisors_walk_through_crashes_is_always_legal() -> None:
    """Drive the lifecycle as supervisor.py does, through every crash of a long crash loop with
    healthy starts in between: no decision of the policy is a move the table forbids."""
    lifecycle, policy = Lifecycle(), _policy(crash_loop_restarts=3)
    for now in range(30):
        if lifecycle.state is S.FAILED:
            policy.reset()
            lifecycle.move(S.STARTING)  # the cool-down is over
        elif now % 4 == 0:
            lifecycle.move(S.RUNNING)
            policy.healthy()
        state, _ = policy.after_crash(float(now))
        lifecycle.move(state)
    lifecycle.move(S.STOPPED)


def _awake(*tenants: tuple[str, float, bool]) -> list[AwakeTenant]:
    return [AwakeTenant(name, last_active, idle) for name, last_active, idle in tenants]


def test_the_cap_puts_the_least_recently_used_idle_tenants_to_sleep() -> None:
    """Over the cap by two: the two idle ones used longest ago (busy ones skipped); within the
    cap, or no cap (0): nobody."""
    awake = _awake(("a", 5.0, True), ("b", 1.0, False), ("c", 3.0, True), ("d", 2.0, True),
                   ("e", 9.0, False))
    assert to_put_to_sleep(awake, 3) == (["d", "c"], 0)
    assert to_put_to_sleep(awake, 5) == ([], 0)
    assert to_put_to_sleep(awake, 0) == ([], 0)
    assert to_put_to_sleep(_awake(("y", 1.0, True), ("x", 1.0, True)), 1) == (["x"], 0)


def test_the_cap_is_exceeded_when_the_rest_are_busy() -> None:
    """Over by three with one idle tenant: it sleeps, and the cap stays exceeded by two."""
    awake = _awake(("a", 1.0, False), ("b", 2.0, True), ("c", 3.0, False), ("d", 4.0, False))
    assert to_put_to_sleep(awake, 1) == (["b"], 2)
