"""The supervision tree as data: which children each supervisor starts, and with what policy.

    >>> [c.spec.name for c in children_of("core", {"services": {}})]
    ['registry', 'health', 'admin']
"""
from __future__ import annotations

from typing import NamedTuple

from system.supervision import Backoff, ChildSpec, Restart, SupervisorSpec, start_order

ROOT = "swarm"
SUPERVISOR = "actors.supervisor.Supervisor"


class ChildDef(NamedTuple):
    """One child of a supervisor."""

    spec: ChildSpec
    actor: str
    """Thespian class path, ``module.Class``."""
    kind: str
    """supervisor | core | service."""


_CORE = [("registry", "actors.registry.Registry"),
         ("health", "actors.health.HealthMonitor"),
         ("admin", "actors.admin.Admin")]


def _timeout(config: dict) -> float:
    return float(config.get("supervision", {}).get("shutdown_timeout_s", 5.0))


def actor_path(spec: str) -> str:
    """Config names classes ``module:Class``; Thespian wants ``module.Class``."""
    return spec.replace(":", ".")


def services(config: dict) -> tuple[dict[str, dict], list[str]]:
    """(enabled service blocks by name, names of disabled services)."""
    blocks = config.get("services", {}) or {}
    enabled = {n: b for n, b in blocks.items() if b.get("enabled", True)}
    return enabled, [n for n in blocks if n not in enabled]


def children_of(name: str, config: dict) -> list[ChildDef]:
    """The children ``name`` supervises, in start order (dependency order for services)."""
    timeout = _timeout(config)
    if name == ROOT:
        budget = timeout * (len(config.get("services", {})) + len(_CORE) + 1)
        return [ChildDef(ChildSpec(n, Restart.PERMANENT, (), budget), SUPERVISOR, "supervisor")
                for n in ("core", "services")]
    if name == "core":
        return [ChildDef(ChildSpec(n, Restart.PERMANENT, (), timeout), cls, "core")
                for n, cls in _CORE]
    if name == "services":
        enabled, disabled = services(config)
        order = start_order({n: b.get("depends_on", []) for n, b in enabled.items()},
                            known=set(disabled))
        return [ChildDef(ChildSpec(n, Restart(enabled[n].get("restart", "permanent")),
                                   tuple(enabled[n].get("depends_on", [])),
                                   float(enabled[n].get("shutdown_timeout_s") or timeout)),
                         actor_path(enabled[n]["actor"]), "service")
                for n in order]
    return []


def policy_of(name: str, config: dict) -> SupervisorSpec:
    """The restart policy of supervisor ``name`` (``root`` settings apply to ``swarm``)."""
    sup = config.get("supervision", {})
    block = sup.get("root" if name == ROOT else name, {})
    backoff = Backoff(**sup.get("backoff", {}))
    return SupervisorSpec(block.get("strategy", "one_for_one"), int(block.get("max_restarts", 3)),
                          float(block.get("within_s", 5.0)), backoff)
