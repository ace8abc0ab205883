"""gateway.cluster.placement: the leader's decision (pure)."""

from __future__ import annotations

from gateway.cluster.placement import Placement, changes, place


def test_tenants_stay_on_live_hosts_and_new_ones_go_where_there_is_most_room() -> None:
    decided = place(["a", "b", "c", "d"], {"h1": 3, "h2": 3}, {"a": "h1", "b": "h1"})
    assert decided == Placement({"a": "h1", "b": "h1", "c": "h2", "d": "h2"}, ())


def test_a_dead_hosts_tenants_move_within_capacity_and_the_rest_are_reported() -> None:
    current = {"a": "h1", "b": "h1", "c": "h2"}
    decided = place(["a", "b", "c"], {"h2": 2}, current)
    assert decided == Placement({"a": "h2", "c": "h2"}, ("b",))
    assert changes(current, decided) == ({"a": "h2"}, ["b"])


def test_ties_are_broken_by_host_name_so_every_leader_decides_the_same() -> None:
    assert place(["a"], {"h2": 1, "h1": 1}, {}).hosts == {"a": "h1"}
    assert place(["a"], {}, {}) == Placement({}, ("a",))


def test_a_host_over_capacity_sheds_the_tenants_beyond_it() -> None:
    decided = place(["a", "b"], {"h1": 1, "h2": 1}, {"a": "h1", "b": "h1"})
    assert decided.hosts == {"a": "h1", "b": "h2"}


def test_a_move_is_checked_against_live_hosts_placement_capacity_and_backups() -> None:
    from gateway.cluster.moves import check_move

    nodes = {"h1": {"capacity": 5, "backup": True}, "h2": {"capacity": 1, "backup": True},
             "h3": {"capacity": 5, "backup": False}}
    placement = {"a": "h1", "b": "h1"}
    assert check_move("a", "h3b", nodes, placement) == (
        "no live host named 'h3b' (live hosts: h1, h2, h3)")
    assert check_move("c", "h2", nodes, placement) == "c is not placed on any host yet"
    assert check_move("a", "h1", nodes, placement) == "a already runs on h1"
    assert check_move("a", "h2", nodes, {"a": "h0"}) == (
        "a's host h0 is not live (its tenants are placed again): try again once it serves")
    assert check_move("a", "h2", nodes, {**placement, "c": "h2"}) == (
        "host h2 is full (1 of 1 tenants)")
    assert check_move("a", "h3", nodes, placement) == (
        "host h3 has no [backup]: a tenant moves by its replica, so both hosts need one")
    assert check_move("a", "h2", nodes, placement) is None
