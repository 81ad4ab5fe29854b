"""The restart manager: one supervisor implementation for every node of the tree.

It starts its children one at a time in dependency order, applies ``RestartPolicy`` decisions
on ``ChildActorExited``, reports every change to the registry, and stops its children in
reverse order on ``tree.stop`` (SIGKILL after each child's shutdown timeout).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import psutil
from thespian.actors import ActorExitRequest

from actors.tree import ROOT, ChildDef, children_of, policy_of, services
from system import protocol
from system.errors import ConfigError, PermanentError
from system.service import SwarmActor, handles
from system.supervision import RestartPolicy

EXITED = "exited unexpectedly"


def _our_live_child(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.ppid() == os.getpid() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class Child:
    """What a supervisor knows about one child."""

    d: ChildDef
    addr: Any = None
    pid: int | None = None
    state: str = "stopped"
    deadline: float = 0.0
    """Monotonic time by which a starting child must confirm, or a stopping one be gone."""
    started_at: float = 0.0
    last_error: str = ""
    kill_reason: str = ""
    registry: str | None = None
    """The registry address it was started with (it may have moved while it started)."""
    config: dict | None = None
    """The config it was last given (a reload may arrive while it starts)."""
    restarts_carried: int = 0
    """Restarts the current policy does not count: manual ones, and those of replaced policies."""
    removed: bool = False
    cid: str = ""
    """Correlation id of the request that asked for this child's restart (logged by the child)."""


def _block(config: dict | None, name: str) -> dict | None:
    return (config or {}).get("services", {}).get(name)


def _wait(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=max(0.0, seconds))


class Supervisor(SwarmActor):
    kind = "supervisor"
    tick_s = 0.25  # one tick checks start/stop deadlines and expires relayed requests

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.children: dict[str, Child] = {}
        self.policy: RestartPolicy | None = None
        self.to_start: list[str] = []
        self.stopping: set[str] = set()
        self.boot_env = None
        self.stop_requests: list[tuple[Any, Any]] = []
        self.shutting_down = False
        self.restart_waiters: dict[str, list] = {}
        self.killed: list[str] = []
        self.disabled: list[str] = []
        self.incarnation = time.time()
        self.report_seq = 0

    # -- start -----------------------------------------------------------------------
    @handles(protocol.SVC_INIT)
    def _init(self, env, sender) -> None:
        if self.parent is not None:  # started already: a second init would orphan the subtree
            raise PermanentError(f"{self.name} is started already")
        self.name = env.b["name"]
        self.adopt_config(env.b)
        if self.name == ROOT:
            self.root = protocol.address_to_wire(self.myAddress)
        self.parent, self.boot_env = sender, env
        try:
            defs = children_of(self.name, self.config)
            self.policy = RestartPolicy(policy_of(self.name, self.config), [d.spec for d in defs])
        except ConfigError as exc:
            self.reply(sender, env, protocol.SVC_FAILED,
                       {"name": self.name, "reason": str(exc), "state": "failed"})
            return
        self.children = {d.spec.name: Child(d) for d in defs}
        if self.name == "services":
            self.disabled = services(self.config)[1]
        self.to_start = list(self.children)
        self.start_ticking()
        self.log("info", "starting", f"{self.name} starting {len(defs)} children",
                 children=list(self.children))
        self._start_next()

    def _start_next(self) -> None:
        if self.shutting_down or self.stopping:
            return
        if any(c.state == "starting" for c in self.children.values()):
            return
        if not self.to_start:
            if self.boot_env is not None:
                self.reply(self.parent, self.boot_env, protocol.SVC_STARTED,
                           {"name": self.name, "pid": os.getpid(), "kind": self.kind,
                            "registry": self.registry, "ppid": os.getppid()})
                self.boot_env = None
                self._report_all()
            return
        child = self.children[self.to_start.pop(0)]
        child.state = "starting"
        child.deadline = time.monotonic() + self._start_timeout(child)
        child.addr, child.registry = self.createActor(child.d.actor), self.registry
        child.config = self.config
        if child.cid:
            protocol.correlate(child.cid)
            child.cid = ""
        self.send(child.addr, protocol.SVC_INIT.encode(
            {"name": child.d.spec.name, "config": self.config, "registry": self.registry,
             "root": self.root, "config_file": self.config_file}))

    @handles(protocol.SVC_STARTED)
    def _child_started(self, env, sender) -> None:
        child = self.children.get(env.b["name"])
        if child is None or child.state != "starting":
            return
        child.addr, child.pid, child.state = sender, env.b["pid"], "running"
        child.started_at = time.time()
        self.policy.child_started(child.d.spec.name, time.monotonic())
        self.log("info", "child_started", f"{child.d.spec.name} running (pid {child.pid})",
                 child=child.d.spec.name, pid=child.pid)
        if child.d.spec.name == "registry":
            self._adopt_registry(protocol.address_to_wire(sender), source=None)
        else:
            self._report(child)
        registry = env.b.get("registry") or child.registry  # services do not say theirs
        if registry and registry != self.registry:
            if registry != child.registry:  # it learned of a newer one below it
                self._adopt_registry(registry, source=sender)
            elif self.registry:  # it still has the one it started with, which has moved since
                self.send(sender, protocol.TREE_REGISTRY.encode({"addr": self.registry}))
        if child.config is not self.config:  # reloaded while it started
            self._send_config(child)
        for waiter, wenv in self.restart_waiters.pop(child.d.spec.name, []):
            self.reply(waiter, wenv, protocol.OK, {"name": child.d.spec.name, "pid": child.pid})
        self._start_next()

    @handles(protocol.SVC_FAILED)
    def _child_failed(self, env, sender) -> None:
        child = self.children.get(env.b["name"])
        if child is None:
            return
        child.state, child.last_error = env.b["state"], env.b["reason"]
        self.log("error", "child_failed", f"{child.d.spec.name} {child.state}: {child.last_error}",
                 child=child.d.spec.name)
        self.policy.child_stopped(child.d.spec.name)
        self.stopping.add(child.d.spec.name)
        self.send(sender, ActorExitRequest())
        self._report(child)
        for waiter, wenv in self.restart_waiters.pop(child.d.spec.name, []):
            self.reply_error(waiter, wenv, "failed", f"{child.d.spec.name}: {child.last_error}")

    # -- exits and restarts -----------------------------------------------------------------
    def _by_addr(self, addr) -> Child | None:
        found = next((c for c in self.children.values() if c.addr == addr), None)
        if found is None:
            # A child we killed before it confirmed may be reported under its final address,
            # which does not equal the provisional one createActor returned; children start
            # one at a time, so it is the one starting that we killed.
            found = next((c for c in self.children.values()
                          if c.state == "starting" and c.kill_reason), None)
        return found

    def on_child_exited(self, address) -> None:
        child = self._by_addr(address)
        if child is None:
            return
        name = child.d.spec.name
        was = child.state
        child.addr, child.pid = None, None
        if name in self.stopping or self.shutting_down:
            self.stopping.discard(name)
            child.kill_reason = ""
            if was in ("running", "starting", "stopping", "restarting"):
                child.state = "stopped"
            if child.removed:
                self._forget(name)
            else:
                self._report(child)
            self._continue()
            return
        if was == "starting":  # crashed before confirming: counts like any crash (no loops)
            self.policy.child_started(name, time.monotonic())
        decision = self.policy.child_exited(name, abnormal=True, now=time.monotonic())
        child.last_error, child.kill_reason = child.kill_reason or EXITED, ""
        self.log("warning", "child_exited", decision.reason, child=name, action=decision.action)
        if decision.action == "escalate":
            self.alert("critical", f"{self.name} gave up after {name} crashed",
                       decision.reason, key=f"{self.name}:escalate")
            self._escalate(decision.reason)
            return
        if decision.action == "ignore":
            child.state = "stopped"
            self._report(child)
            return
        child.state = "restarting"
        self._stop_children(decision.stop)
        if decision.delay_s > 0:
            self.wakeupAfter(_wait(decision.delay_s), payload=("restart", decision.start))
        else:
            self._queue_start(decision.start)  # first: the reports below can wait, the child not
        self._report(child)
        self.alert("warning", f"{name} restarted", f"{child.last_error}; {decision.reason}",
                   key=f"{name}:restart")

    def _queue_start(self, names) -> None:
        for n in names:
            if n not in self.to_start:
                self.to_start.append(n)
        order = list(self.children)
        self.to_start.sort(key=order.index)
        self._start_next()

    def _stop_children(self, names) -> None:
        for n in names:
            child = self.children[n]
            if child.addr is None:
                continue
            self.stopping.add(n)
            child.state = "stopping"
            if child.d.kind == "supervisor":
                self.send(child.addr, protocol.TREE_STOP.encode(
                    {"timeout_s": child.d.spec.shutdown_timeout_s}))
            else:
                self.send(child.addr, ActorExitRequest())
            self.policy.child_stopped(n)
            child.deadline = time.monotonic() + child.d.spec.shutdown_timeout_s

    def _escalate(self, reason: str) -> None:
        self.log("error", "escalate", f"{self.name} gives up: {reason}")
        if self.boot_env is not None:  # still starting up: tell whoever is waiting for us
            self.reply(self.parent, self.boot_env, protocol.SVC_FAILED,
                       {"name": self.name, "reason": reason, "state": "failed"})
            self.boot_env = None
        self.shutting_down = True
        self._continue()

    def _continue(self) -> None:
        """After a child stopped: go on with a shutdown (one child at a time, reverse order)
        or with starting children."""
        if self.stopping:
            return
        if not self.shutting_down:
            self._start_next()
            return
        live = [n for n in reversed(list(self.children)) if self.children[n].addr is not None]
        if live:
            self._stop_children(live[:1])
            return
        for requester, env in self.stop_requests:
            self.reply(requester, env, protocol.TREE_STOPPED, {"killed": self.killed})
        self.stop_requests = []
        self.send(self.myAddress, ActorExitRequest())

    # -- wakeups ---------------------------------------------------------------------------
    def on_wakeup(self, payload) -> None:
        if payload[0] == "restart":
            self._queue_start(payload[1])

    def on_tick(self) -> None:
        now = time.monotonic()
        self._reap_lost()
        for name, child in self.children.items():
            if child.addr is None or now < child.deadline:
                continue
            if child.state == "starting":
                child.kill_reason = (f"no start confirmation within "
                                     f"{self._start_timeout(child):g}s")
                child.deadline = now + self._start_timeout(child)  # once per period
                self._kill(child)
            elif name in self.stopping and child.kill_reason == "":
                child.kill_reason = (f"did not stop within "
                                     f"{child.d.spec.shutdown_timeout_s:g}s; killed")
                child.last_error = child.kill_reason
                self.killed.append(name)
                self._kill(child)

    def _reap_lost(self) -> None:
        """Thespian can miss a child's exit when two of its children die milliseconds apart
        (its SIGCHLD handling reaps both and reports one): a child whose process is gone, or
        a zombie, is handled as exited here. A late report of the same exit finds no child
        with that address and is ignored."""
        for child in list(self.children.values()):
            if child.pid and child.addr is not None and child.state in ("running", "stopping") \
                    and not _our_live_child(child.pid):
                self.log("warning", "exit_missed", f"{child.d.spec.name} (pid {child.pid}) is "
                         f"gone without an exit notice", child=child.d.spec.name)
                self.on_child_exited(child.addr)

    def _start_timeout(self, child: Child) -> float:
        """A supervisor confirms once its whole subtree is up: give it one period per actor."""
        base = float(self.config.get("supervision", {}).get("start_timeout_s", 10.0))
        if child.d.kind != "supervisor":
            return base
        return base * (len(self.config.get("services", {})) + 4)

    def _kill(self, child: Child) -> None:
        pid = child.pid or self._unconfirmed_pid()
        self.log("warning", "kill", f"SIGKILL {child.d.spec.name} (pid {pid}): "
                 f"{child.kill_reason}", child=child.d.spec.name)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _unconfirmed_pid(self) -> int | None:
        """The pid of a child that never confirmed its start (stuck in on_start): Thespian forks
        every child from this process, and only one child is starting at a time."""
        known = {c.pid for c in self.children.values() if c.pid}
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process().children():
                if proc.pid not in known and proc.status() != psutil.STATUS_ZOMBIE:
                    return proc.pid
        return None

    # -- stop and manual restart -----------------------------------------------------------------
    @handles(protocol.TREE_STOP)
    def _tree_stop(self, env, sender) -> None:
        self.stop_requests.append((sender, env))
        if not self.shutting_down:
            self.shutting_down = True
            self.log("info", "stopping", f"{self.name} stopping children in reverse order")
        self._continue()

    # -- reconfiguration -------------------------------------------------------------------------
    @handles(protocol.TREE_RECONFIGURE)
    def _reconfigure(self, env, sender) -> None:
        """From the parent, or at the root from the admin (checked with the registry): anyone
        on the host can reach an actor's port, and a config names the classes to start."""
        if sender == self.parent:
            self._apply_config(env)
            return
        if self.name != ROOT or not self.registry:
            raise PermanentError("tree.reconfigure comes from the supervisor or the admin only")

        def checked(found) -> None:
            if found is not None and found.t != "error" and \
                    found.b.get("addr") == protocol.address_to_wire(sender):
                self._apply_config(env)
            else:
                self.reply_error(sender, env, "permanent", "tree.reconfigure comes from the "
                                 "supervisor or the admin only")

        self.request(protocol.address_from_wire(self.registry), protocol.REGISTRY_LOOKUP,
                     {"name": "admin"}, checked, timeout_s=5.0)

    def _apply_config(self, env) -> None:
        """Apply a validated config: new policies here, config.changed to running children (a
        child that cannot apply it live is restarted), services added/removed/flipped."""
        old, new = self.config, env.b["config"]
        self.adopt_config(env.b)
        self.policy.update_spec(policy_of(self.name, new))
        if self.name == "services":
            self._resync_services(old, new)
        for name, child in self.children.items():
            if child.addr is not None and child.state == "running":
                self._send_config(child)  # one still starting gets it when it confirms
            elif child.state in ("failed", "disabled") and child.addr is None and (
                    _block(child.config, name) != _block(new, name)):
                # parked until its config changed (a token added): start it with the new one
                self.log("info", "reconfigure", f"{name} was {child.state}; its config "
                         "changed, starting it again", child=name)
                child.last_error = ""
                self._queue_start([name])
        self._report_all()

    def _send_config(self, child: Child) -> None:
        """Bring a running child from the config it was last given to this one's."""
        old, child.config = child.config or self.config, self.config
        if child.d.kind == "supervisor":
            self.send(child.addr, protocol.TREE_RECONFIGURE.encode({"config": self.config}))
        elif child.d.kind == "core":
            self._push_config(child, [])
        else:
            name = child.d.spec.name
            before = old.get("services", {}).get(name, {})
            after = self.config.get("services", {}).get(name, {})
            changed = sorted(k for k in before.keys() | after.keys()
                             if before.get(k) != after.get(k))
            if changed:
                self._push_config(child, changed)

    def _push_config(self, child: Child, changed: list[str]) -> None:
        name = child.d.spec.name

        def answered(reply):
            if reply is None or reply.t != "ok" or not reply.b.get("applied"):
                self.log("info", "reconfigure", f"restarting {name} to apply its new config",
                         child=name, keys=changed)
                self._restart_child(name)

        self.request(child.addr, protocol.CONFIG_CHANGED,
                     {"config": self.config, "changed": changed}, answered, timeout_s=5.0)

    def _resync_services(self, old: dict, new: dict) -> None:
        defs = {d.spec.name: d for d in children_of(self.name, new)}
        gone = set(self.disabled) - set(services(new)[1]) - set(defs)
        self.disabled = services(new)[1]
        for name in gone:  # was disabled, now deleted from the file
            self._forget(name)
        for name, child in list(self.children.items()):
            if name not in defs:
                self.log("info", "service_removed", f"{name} removed or disabled", child=name)
                child.removed = True
                if child.addr is not None:
                    self._stop_children([name])
                else:
                    self._forget(name)
            elif defs[name].actor != child.d.actor:
                child.d = defs[name]
                self._restart_child(name)
            else:
                child.d = defs[name]
        added = [n for n in defs if n not in self.children]
        self.children = {n: self.children.get(n) or Child(defs[n]) for n in defs} | {
            n: c for n, c in self.children.items() if n not in defs}
        previous = self.policy
        self.policy = RestartPolicy(previous.spec, [c.d.spec for c in self.children.values()])
        for n, c in self.children.items():
            if n in previous.running:
                self.policy.child_started(n, time.monotonic())
            with contextlib.suppress(KeyError):
                c.restarts_carried += previous.restart_count(n)
        if added:
            self.log("info", "services_added", f"starting {', '.join(added)}", children=added)
            self._queue_start(added)

    def _forget(self, name: str) -> None:
        self.children.pop(name, None)
        if name in self.disabled:
            self._send_registry({"name": name, "state": "disabled", "parent": self.name,
                                 "kind": "service", "detail": "disabled in config"})
        elif self.registry:
            self.send(protocol.address_from_wire(self.registry),
                      protocol.REGISTRY_REMOVE.encode({"name": name}))

    def _restart_child(self, name: str) -> None:
        child = self.children[name]
        child.restarts_carried += 1
        child.cid = self._current.cid if self._current is not None else ""
        if child.addr is not None:
            self._stop_children([name])
            if name not in self.to_start:
                self.to_start.append(name)
        else:
            self._queue_start([name])

    @handles(protocol.TREE_STOPPED)
    def _subtree_stopped(self, env, sender) -> None:
        self.killed.extend(env.b.get("killed", []))

    @handles(protocol.SUP_RESTART)
    def _manual_restart(self, env, sender) -> None:
        name = env.b["name"]
        child = self.children.get(name)
        if child is None:
            self.reply_error(sender, env, "unknown_service", f"{self.name} has no child {name!r}")
            return
        child.last_error = ""
        self.restart_waiters.setdefault(name, []).append((sender, env))
        self.log("info", "manual_restart", f"restart of {name} requested", child=name)
        self._restart_child(name)

    @handles(protocol.TREE_LOOKUP)
    def _tree_lookup(self, env, sender) -> None:
        """Entry point for external clients (the CLI finds the admin through the root)."""
        if self.policy is None:  # created by the client's name lookup: the real root is gone
            self.reply_error(sender, env, "no_tree", "the swarm's root supervisor is gone; "
                             "run `swarm stop`, then `swarm start`")
            self.send(self.myAddress, ActorExitRequest())
            return
        if not self.registry:
            self.reply_error(sender, env, "not_ready", "the registry is not up yet; retry")
            return

        def relay(reply):
            if reply is None:
                self.reply_error(sender, env, "not_ready", "the registry did not answer; retry")
            elif reply.t == "error":
                self.reply_error(sender, env, reply.b["code"], reply.b["detail"])
            else:
                self.reply(sender, env, protocol.REGISTRY_FOUND, reply.b)

        self.request(protocol.address_from_wire(self.registry), protocol.REGISTRY_LOOKUP,
                     {"name": env.b["name"]}, relay, timeout_s=5.0)

    # -- registry -----------------------------------------------------------------------------
    @handles(protocol.TREE_REGISTRY)
    def _registry_moved(self, env, sender) -> None:
        if sender != self.parent and all(c.addr != sender for c in self.children.values()):
            raise PermanentError("the registry's address comes from the tree's supervisors only")
        if env.b["addr"] != self.registry:
            self._adopt_registry(env.b["addr"], source=sender)

    def _adopt_registry(self, addr: str, source) -> None:
        """The registry (re)started: tell the rest of the tree and re-report everything to it."""
        self.registry = addr
        note = protocol.TREE_REGISTRY.encode({"addr": addr})
        if self.parent is not None and source != self.parent and self.name != ROOT:
            self.send(self.parent, note)
        for child in self.children.values():
            if child.addr is not None and child.addr != source and child.state == "running":
                self.send(child.addr, note)
        self._report_all()

    def _report_all(self) -> None:
        for child in self.children.values():
            self._report(child)
        for name in self.disabled:
            self._send_registry({"name": name, "state": "disabled", "parent": self.name,
                                 "kind": "service", "detail": "disabled in config"})

    def _report(self, child: Child) -> None:
        name = child.d.spec.name
        self._send_registry({
            "name": name, "state": child.state, "parent": self.name, "kind": child.d.kind,
            "pid": child.pid, "started_at": child.started_at, "last_error": child.last_error,
            "restarts": self.policy.restart_count(name) + child.restarts_carried,
            "generic_error": child.last_error == EXITED,
            "addr": protocol.address_to_wire(child.addr) if child.state == "running" else None,
            "depends_on": list(child.d.spec.depends_on),
            "max_rss_mb": self.config.get("services", {}).get(name, {}).get("max_rss_mb"),
        })

    def _send_registry(self, body: dict) -> None:
        if self.registry:  # the registry drops reports older than one it has applied: from
            # a replaced supervisor (epoch), or overtaken on the way (seq; Thespian can reorder
            # messages sent while it connects to a new address)
            self.report_seq += 1
            self.send(protocol.address_from_wire(self.registry), protocol.REGISTRY_UPDATE.encode(
                {**body, "epoch": self.incarnation, "seq": self.report_seq}))

    def health(self) -> tuple[str, str]:
        running = sum(c.state == "running" for c in self.children.values())
        status = "ok" if running == len(self.children) else "degraded"
        return status, f"{running}/{len(self.children)} children running"
