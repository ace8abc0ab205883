"""What a reload changes: decided purely from the old and new Config, then applied by runtime.py."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import Config, GatewaySettings

# Sections that only take effect when the gateway starts (or is upgraded in place).
NEEDS_RESTART = ("listen", "paths", "limits", "metrics")
# Sections every tenant process is started from: a change restarts all of them.
SHAPES_TENANTS = ("sandbox",)


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()  # gateway.toml sections that changed but cannot apply live

    def summary(self) -> dict[str, list[str]]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": list(self.changed),
            "unchanged": list(self.unchanged),
            "needs_restart": list(self.needs_restart),
        }


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What a reload did: its plan, and how each added or changed tenant came out of it."""

    plan: ReloadPlan
    failed: dict[str, str]  # tenant -> why its new process did not serve

    @property
    def serving(self) -> tuple[str, ...]:
        return tuple(n for n in (*self.plan.added, *self.plan.changed) if n not in self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> dict[str, object]:
        return {**self.plan.summary(), "serving": list(self.serving), "failed": self.failed}


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    old_names, new_names = set(old.tenants), set(new.tenants)
    shared = sorted(old_names & new_names)
    everything_changed = any(
        getattr(old.gateway, section) != getattr(new.gateway, section)
        for section in SHAPES_TENANTS
    ) or old.domain != new.domain or old.tls_enabled != new.tls_enabled
    changed = [n for n in shared if everything_changed or old.tenants[n] != new.tenants[n]]
    return ReloadPlan(
        added=tuple(sorted(new_names - old_names)),
        removed=tuple(sorted(old_names - new_names)),
        changed=tuple(changed),
        unchanged=tuple(n for n in shared if n not in changed),
        needs_restart=_sections_needing_restart(old.gateway, new.gateway),
    )


def _sections_needing_restart(old: GatewaySettings, new: GatewaySettings) -> tuple[str, ...]:
    sections = tuple(
        f.name
        for f in dataclasses.fields(old)
        if f.name in NEEDS_RESTART and getattr(old, f.name) != getattr(new, f.name)
    )
    # The HTTPS listener exists or not from the start; the rest of [tls] applies live.
    return sections + (("tls.mode",) if old.tls.mode != new.tls.mode else ())
