"""Health monitor: CPU %, RSS and USS per actor process (psutil), and per-service memory limits.

The registry sends ``health.sample`` with the pids it knows; the monitor answers with samples
and SIGKILLs a process over its ``max_rss_mb`` (its supervisor restarts it), recording why.
"""
from __future__ import annotations

import os

import psutil

from system import protocol
from system.errors import PermanentError
from system.launcher import kill_swarm_process
from system.service import ServiceActor, handles


def over_limit(rss_bytes: int, limit_mb: float | None) -> bool:
    """True when a process uses more resident memory than its configured limit."""
    return isinstance(limit_mb, (int, float)) and not isinstance(limit_mb, bool) \
        and limit_mb > 0 and rss_bytes > limit_mb * 1024 * 1024


class HealthMonitor(ServiceActor):
    kind = "core"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.procs: dict[int, psutil.Process] = {}

    def _process(self, pid: int) -> psutil.Process:
        proc = self.procs.get(pid)
        if proc is None:
            proc = self.procs[pid] = psutil.Process(pid)
            proc.cpu_percent(None)  # the first call only sets the baseline
        return proc

    @handles(protocol.HEALTH_SAMPLE)
    def _sample(self, env, sender) -> None:
        samples, limits = {}, env.b.get("limits") or {}
        if not isinstance(limits, dict):
            raise PermanentError("health.sample: limits must be a map of name -> MB")
        pids = {name: pid for name, pid in env.b["pids"].items() if isinstance(pid, int)}
        pids.setdefault(self.name, os.getpid())
        for name, pid in pids.items():
            try:
                proc = self._process(pid)
                with proc.oneshot():
                    mem = proc.memory_full_info()
                    samples[name] = {"cpu": proc.cpu_percent(None), "rss": mem.rss, "uss": mem.uss}
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self.procs.pop(pid, None)
                continue
            if over_limit(mem.rss, limits.get(name)):
                self._enforce(name, pid, mem.rss, limits[name], sender)
        alive = set(pids.values())
        self.procs = {pid: p for pid, p in self.procs.items() if pid in alive}
        self.reply(sender, env, protocol.HEALTH_SAMPLES, {"samples": samples})

    def _enforce(self, name: str, pid: int, rss: int, limit_mb: float, registry) -> None:
        reason = f"rss {rss / 1048576:.0f} MB over limit {limit_mb:g} MB; killed pid {pid}"
        if not kill_swarm_process(pid):
            self.log("warning", "limit", f"{name}: rss over limit, but pid {pid} is not a live "
                     "process of this swarm: not killed", child=name)
            return
        self.log("error", "limit", f"{name}: {reason}", child=name)
        self.send(registry, protocol.REGISTRY_NOTE.encode({"name": name, "error": reason}))
        self.alert("error", f"{name} over its memory limit", reason, key=f"{name}:rss")
