"""Config hot reload: notice the file changed (mtime + hash), re-read it, say what a reload means.

    watcher = ConfigWatcher("/etc/swarm.yaml", current_config)
    if watcher.due(now) and watcher.changed_on_disk():
        outcome = watcher.reload()      # never raises; outcome.ok False keeps the old config

Validation happens before anything is applied: an invalid file is rejected as a whole, with
every error, and the running config stays in force.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from system.config import Config, diff, file_fingerprint, load_config
from system.errors import ConfigError

# system.* keys only a full restart applies (the actor system is created with them).
RESTART_ONLY = ("system.admin_port", "system.bind", "system.data_dir", "system.convention_leader",
                "system.log_max_bytes", "system.log_backups")


@dataclass
class ReloadOutcome:
    ok: bool
    config: dict | None = None
    summary: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    at: float = field(default_factory=time.time)
    previous: ReloadOutcome | None = None
    """For a reload that found nothing new: the last one that changed something (the watcher
    may have applied the edit moments before the operator's ``swarm reload``)."""

    def view(self) -> dict:
        return {"ok": self.ok, "at": self.at, "summary": self.summary, "errors": self.errors,
                "previous": self.previous.view() if self.previous else None}


def describe_change(old: dict, new: dict) -> dict:
    """What differs between two runtime configs, in the terms an operator cares about."""
    d = diff(Config(old), Config(new))
    return {
        "added": sorted(d.added_services), "removed": sorted(d.removed_services),
        "changed": {name: sorted(keys) for name, keys in sorted(d.changed_services.items())},
        "supervision": d.supervision_changed, "health": d.health_changed,
        "alerts": old.get("alerts") != new.get("alerts"), "agents": d.agents_changed,
        "needs_full_restart": sorted(k for k in d.system_changed if k in RESTART_ONLY),
        "empty": _public(old) == _public(new),
    }


def _public(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


class ConfigWatcher:
    def __init__(self, path: str | None, current: dict, check_every_s: float = 2.0):
        self.path = Path(path) if path else None
        self.current = current
        self.check_every_s = check_every_s
        self.next_check = 0.0
        self.seen = self._fingerprint()
        self.last: ReloadOutcome | None = None
        self.applied: ReloadOutcome | None = None  # the last reload that changed something

    def _fingerprint(self) -> tuple[float, str] | None:
        if self.path is None:
            return None
        try:
            return file_fingerprint(self.path)
        except ConfigError:
            return None

    def due(self, now: float) -> bool:
        if self.path is None or now < self.next_check:
            return False
        self.next_check = now + self.check_every_s
        return True

    def changed_on_disk(self) -> bool:
        """True once per change of the file's content (a touch without edits is not a change)."""
        current = self._fingerprint()
        if current is None or current == self.seen:
            return False
        changed = self.seen is None or current[1] != self.seen[1]
        self.seen = current
        return changed

    def reload(self) -> ReloadOutcome:
        try:
            cfg = load_config(str(self.path) if self.path else None)
        except ConfigError as exc:
            self.last = ReloadOutcome(False, errors=list(exc.errors))
            return self.last
        new = cfg.runtime()
        summary = describe_change(self.current, new)
        empty = summary["empty"]
        self.last = ReloadOutcome(True, new, summary, previous=self.applied if empty else None)
        if not empty:
            self.applied = self.last
        self.current = new
        return self.last
