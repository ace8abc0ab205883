"""Which host runs which tenant: the leader's decision, pure.

A tenant stays where it is while its host is alive and within capacity (a move costs a restore);
a tenant whose host is gone, or that has no host yet, goes to the live host with the most free
room (ties: by name, so every leader decides the same). Tenants no host has room for stay
unplaced and are reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Placement:
    hosts: dict[str, str] = field(default_factory=dict)  # tenant -> host
    unplaced: tuple[str, ...] = ()


def place(tenants: Iterable[str], capacity: Mapping[str, int],
          current: Mapping[str, str]) -> Placement:
    """Place `tenants` on live hosts (`capacity`: host -> tenants it takes), keeping `current`."""
    load = dict.fromkeys(capacity, 0)
    hosts: dict[str, str] = {}
    moving: list[str] = []
    for tenant in sorted(set(tenants)):
        host = current.get(tenant)
        if host in load and load[host] < capacity[host]:
            hosts[tenant] = host
            load[host] += 1
        else:
            moving.append(tenant)
    unplaced = []
    for tenant in moving:
        free = [(capacity[h] - load[h], h) for h in load if load[h] < capacity[h]]
        if not free:
            unplaced.append(tenant)
            continue
        host = min(free, key=lambda room: (-room[0], room[1]))[1]
        hosts[tenant] = host
        load[host] += 1
    return Placement(hosts, tuple(unplaced))


def changes(old: Mapping[str, str], new: Placement) -> tuple[dict[str, str], list[str]]:
    """What the leader writes (tenant -> host) and deletes to go from `old` to `new`."""
    writes = {t: h for t, h in new.hosts.items() if old.get(t) != h}
    deletes = sorted(t for t in old if t not in new.hosts)
    return writes, deletes
