"""Registry: who runs where, in which state, and how healthy — polled with one periodic tick.

Supervisors report their children with ``registry.update`` (accepted from the tree's
supervisors only, see ``_reporters``); the registry pings every running
actor each ``health.poll_interval_s``, SIGKILLs one that does not answer within
``health.timeout_s`` (its supervisor then restarts it), asks the health monitor for CPU/RSS
samples, and answers lookups and status requests. After its own restart the supervisors
re-report everything, so its state is rebuilt from theirs.
"""
from __future__ import annotations

import time

from actors.alerts import AlertRouter, alert, state_notice
from actors.status import Entry, snapshot
from system import protocol
from system.errors import PermanentError
from system.launcher import kill_swarm_process
from system.service import ServiceActor, handles

HELD_REPORTERS, HELD_NAMES = 4, 1024
WATCHERS_PER_NAME = 256


def _order(report: dict) -> tuple[float, int]:
    """(supervisor incarnation, its report number): a lower one is older."""
    return report.get("epoch", 0.0), report.get("seq", 0)


class Registry(ServiceActor):
    kind = "core"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.entries: dict[str, Entry] = {}
        self.pings: dict[str, tuple[str, float, int | None]] = {}  # id -> (name, sent, pid)
        self.last_sample = 0.0
        self.alerts = AlertRouter()
        self.sinks: list[str] = []
        self.held: dict[str, dict[str, dict]] = {}  # reporter -> name -> its latest report
        self.watchers: dict[str, set[str]] = {}  # name -> who is told when it moves
        self.versions: dict[str, int] = {}  # name -> version of its (addr, state)
        self.version = 0

    def on_start(self) -> None:
        self.registry = protocol.address_to_wire(self.myAddress)
        self._settings()

    def on_config_changed(self, old: dict, changed: set[str]) -> None:
        self._settings()

    def _settings(self) -> None:
        health, alerts = self.config.get("health", {}), self.config.get("alerts", {})
        self.tick_s = float(health.get("poll_interval_s", 1.0))
        self.timeout_s = float(health.get("timeout_s", 3.0))
        self.sample_s = float(health.get("sample_interval_s", 5.0))
        self.alerts.configure(float(alerts.get("window_s", 60.0)),
                              alerts.get("min_severity", "warning"))
        self.sinks = list(alerts.get("sinks", []))

    # -- alerts ------------------------------------------------------------------------------
    @handles(protocol.ALERT)
    def _alert(self, env, sender) -> None:
        now = time.time()
        self._route(self.alerts.submit({"ts": now, **env.b}, now))  # when raised: the log, top

    def _route(self, emitted: list[dict]) -> None:
        """Every alert goes to the log; a copy goes to each sink service that is running."""
        for body in emitted:
            self.log("warning" if body["severity"] in ("info", "warning") else "error",
                     "alert", body["summary"], alert_service=body["service"],
                     severity=body["severity"], count=body["count"], details=body["details"])
            self._to_sinks(dict(body, kind="alert"))

    def _to_sinks(self, notice: dict) -> None:
        """The one notification path: alerts, state changes and milestones, to every running
        sink (alerts.sinks); a sink decides what it shows."""
        data = None
        for sink in self.sinks:
            entry = self.entries.get(sink)
            if entry is not None and entry.state == "running" and entry.addr:
                data = data or protocol.NOTIFY.encode(notice)
                self.send(protocol.address_from_wire(entry.addr), data)

    @handles(protocol.NOTIFY)
    def _notify(self, env, sender) -> None:
        """A service's milestone (a gas sent): logged and passed on, not coalesced."""
        body = {"details": "", "ts": time.time(), "count": 1, **env.b}
        body["key"] = str(body.get("key") or f"{body['service']}:{body['summary']}")
        self.log("info", "notify", body["summary"], notice_service=body["service"],
                 kind=body["kind"])
        self._to_sinks(body)

    # -- reports from the tree ---------------------------------------------------------------
    def _reporters(self) -> set[str]:
        """Who may report: the root, this registry's own supervisor, and every supervisor one of
        them reported running: the tree's supervisors and nothing else. Anyone on the host can
        reach the registry's port; a forged entry would show in status and be pinged."""
        known = {e.addr for e in self.entries.values() if e.kind == "supervisor" and e.addr}
        known.update(filter(None, (self.root, self.parent and
                                   protocol.address_to_wire(self.parent))))
        return known

    def _check_reporter(self, sender, what: str, also: str | None = None) -> None:
        if protocol.address_to_wire(sender) not in self._reporters() | {also}:
            raise PermanentError(f"{what} is accepted from the tree's supervisors only")

    @handles(protocol.REGISTRY_UPDATE)
    def _update(self, env, sender) -> None:
        reporter = protocol.address_to_wire(sender)
        if reporter in self._reporters():
            self._apply(reporter, env.b)
            return
        # A supervisor can report its children before its parent's report of it arrives (it
        # reports them while starting; its parent reports it once it has started): held until
        # then, the latest report per name, for a few reporters at most.
        held, b = self.held.setdefault(reporter, {}), env.b
        if (old := held.pop(b["name"], None)) is not None and _order(b) < _order(old):
            b = old  # this one was overtaken on the way: keep the newer
        held[b["name"]] = b
        if len(held) > HELD_NAMES:
            del held[next(iter(held))]
        if len(self.held) > HELD_REPORTERS:
            oldest = next(iter(self.held))
            self.log("warning", "unknown_reporter", f"ignored {len(self.held.pop(oldest))} "
                     f"registry reports from {oldest}: not a supervisor of this tree")

    def _apply(self, reporter: str, b: dict) -> None:
        entry = self.entries.setdefault(b["name"], Entry(b["name"]))
        order = _order(b)
        if order < (entry.epoch, entry.seq):
            return  # a late report: from a supervisor since replaced, or overtaken on the way
        entry.epoch, entry.seq = order
        new_process = b.get("pid") != entry.pid
        if new_process:
            self._forget_pings(entry.name)  # pings to the previous process are moot
        entry.parent_addr = reporter
        where = entry.addr, entry.state
        entry.update(b, time.time())
        if (entry.addr, entry.state) != where:
            self._tell_watchers(entry.name, entry.addr, entry.state, gone=where[0])
        if entry.state not in ("starting", "stopping"):
            if notice := state_notice(entry.name, entry.settled, entry.state, entry.last_error):
                self._to_sinks(notice)
            entry.settled = entry.state
        if new_process:
            self._ping(entry, time.time())  # health known now, not a poll period later
        if entry.state != "running":
            self._forget_pings(entry.name)
        elif entry.addr == protocol.address_to_wire(self.myAddress):
            entry.health, entry.last_pong = "ok", time.time()
        if entry.kind == "supervisor" and entry.addr in self.held:
            for body in self.held.pop(entry.addr).values():  # its children, reported meanwhile
                self._apply(entry.addr, body)

    @handles(protocol.REGISTRY_REMOVE)
    def _remove(self, env, sender) -> None:
        self._check_reporter(sender, "registry.remove")
        entry = self.entries.pop(env.b["name"], None)
        self._forget_pings(env.b["name"])
        if entry is not None:
            self._tell_watchers(entry.name, None, "removed", gone=entry.addr)

    @handles(protocol.REGISTRY_NOTE)
    def _note(self, env, sender) -> None:
        monitor = self.entries.get("health")
        self._check_reporter(sender, "registry.note", monitor.addr if monitor else None)
        entry = self.entries.get(env.b["name"])
        if entry is not None:
            entry.set_error(env.b["error"], time.time())
            self.log("warning", "note", f"{entry.name}: {entry.last_error}", child=entry.name)

    @handles(protocol.REGISTRY_LOOKUP)
    def _lookup(self, env, sender) -> None:
        entry = self.entries.get(env.b["name"])
        if entry is None:
            self.reply_error(sender, env, "unknown_service", f"no service named {env.b['name']!r}")
            return
        if env.b.get("watch") is True:
            watching = self.watchers.setdefault(entry.name, set())
            if len(watching) < WATCHERS_PER_NAME:
                watching.add(protocol.address_to_wire(sender))
        self.reply(sender, env, protocol.REGISTRY_FOUND,
                   {"name": entry.name, "addr": entry.addr, "parent_addr": entry.parent_addr,
                    "state": entry.state, "pid": entry.pid,
                    "v": self.versions.get(entry.name, 0)})

    def _tell_watchers(self, name: str, addr: str | None, state: str, gone: str | None) -> None:
        """``name`` moved or changed state: tell whoever watches it (ServiceActor.request_named
        sends there directly). An actor that moved away from ``gone`` watches nothing any more:
        its successor looks up what it needs."""
        self.version += 1
        self.versions[name] = self.version
        if gone and gone != addr:
            for watching in self.watchers.values():
                watching.discard(gone)
        data = None
        for watcher in self.watchers.get(name, ()):
            data = data or protocol.REGISTRY_MOVED.encode(
                {"name": name, "addr": addr or "", "state": state, "v": self.version})
            self.send(protocol.address_from_wire(watcher), data)

    @handles(protocol.REGISTRY_STATUS)
    def _status(self, env, sender) -> None:
        """The status snapshot; ``config`` (the config file and its last reload, from the admin
        forwarding a client's admin.status) is passed on in it."""
        extra = {"config": env.b["config"]} if isinstance(env.b.get("config"), dict) else {}
        self.reply(sender, env, protocol.REGISTRY_SNAPSHOT,
                   {**snapshot(self.entries, time.time()), "alerts": self.alerts.recent[-10:],
                    **extra})

    # -- health polling -------------------------------------------------------------------
    def on_tick(self) -> None:
        now = time.time()
        self._route(self.alerts.flush(now))
        for ping_id, (name, sent, pid) in list(self.pings.items()):
            if now - sent > self.timeout_s:
                del self.pings[ping_id]
                self._unresponsive(name, pid, now - sent)
        waiting = {name for name, _, _ in self.pings.values()}
        for entry in self.entries.values():
            if entry.name not in waiting:
                self._ping(entry, now)
        if now - self.last_sample >= self.sample_s and "health" in self.entries:
            self._request_samples(now)

    def _ping(self, entry: Entry, now: float) -> None:
        if entry.state != "running" or not entry.addr or entry.addr == self.registry:
            return
        ping_id = protocol.new_id()
        self.pings[ping_id] = (entry.name, now, entry.pid)
        self.send(protocol.address_from_wire(entry.addr), protocol.HEALTH_PING.encode(id=ping_id))

    def _request_samples(self, now: float) -> None:
        health = self.entries["health"]
        if health.state != "running" or not health.addr:
            return
        self.last_sample = now
        pids = {e.name: e.pid for e in self.entries.values() if e.pid and e.state == "running"}
        limits = {e.name: e.max_rss_mb for e in self.entries.values() if e.max_rss_mb}
        self.send(protocol.address_from_wire(health.addr),
                  protocol.HEALTH_SAMPLE.encode({"pids": pids, "limits": limits}))

    def _unresponsive(self, name: str, pid: int | None, waited: float) -> None:
        entry = self.entries.get(name)
        if entry is None or entry.state != "running" or entry.pid != pid:
            return  # the ping went to a process that has since been replaced
        entry.health = "failing"
        cause = f"unresponsive: no health reply within {self.timeout_s:g}s"
        self.log("error", "unresponsive", f"{name} (pid {entry.pid}) did not answer a health "
                 f"ping in {waited:.1f}s; killing it so its supervisor restarts it", child=name)
        if entry.pid:
            cause += (f"; killed pid {entry.pid}" if kill_swarm_process(entry.pid)
                      else f"; pid {entry.pid} is not a live process of this swarm, not killed")
        entry.set_error(cause, time.time())
        self._route(self.alerts.submit(alert("error", name, "unresponsive", cause,
                                             key=f"{name}:unresponsive"), time.time()))

    def _forget_pings(self, name: str) -> None:
        for ping_id in [p for p, (n, _, _) in self.pings.items() if n == name]:
            del self.pings[ping_id]

    @handles(protocol.HEALTH_PONG)
    def _pong(self, env, sender) -> None:
        ping = self.pings.pop(env.re or "", None)
        if ping is None:
            return
        entry = self.entries.get(ping[0])
        if entry is not None:
            entry.pong(env.b, time.time())

    @handles(protocol.HEALTH_SAMPLES)
    def _samples(self, env, sender) -> None:
        for name, sample in env.b["samples"].items():
            entry = self.entries.get(name)
            if entry is not None and isinstance(sample, dict):
                entry.sample(sample)
