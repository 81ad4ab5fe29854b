"""The one lifecycle every actor of the swarm follows (Erlang's gen_server idea on Thespian).

A service subclasses :class:`ServiceActor` and supplies hooks; the base owns decoding,
dispatch, health replies, config delivery, error classification and recovery, logging context
and parent-death handling::

    class Echo(ServiceActor):
        @handles(protocol.TEST_ECHO)
        def echo(self, env, sender):
            self.reply(sender, env, protocol.OK, env.b)

Hooks: ``on_start()`` (raise ConfigError to park the service in ``failed``), ``health()`` ->
``(status, detail)``, ``on_tick()`` every ``tick_s``, ``on_event(event)`` for events pushed by an
:class:`~system.bridge.AsyncBridge`, ``on_stop()``.
"""
from __future__ import annotations

import collections
import ctypes
import datetime
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from thespian.actors import (
    Actor,
    ActorExitRequest,
    ChildActorExited,
    PoisonMessage,
    ThespianWatch,
    WakeupMessage,
    WatchMessage,
)

from system import protocol
from system.bridge import LOG_EVENT
from system.errors import ConfigError, PermanentError, classify
from system.logs import LEVELS, log, redact_in_process

_PR_SET_PDEATHSIG = 1
TRANSIENT_RETRIES = 5
TRANSIENT_BASE_S = 0.1
ACTIVITY_MAX = 20  # entries of activity() sent with each health reply
FORWARD_HELD_S = 5.0    # a forward goes again if its target moves this soon (health timeout +)
FORWARD_HELD_MAX = 256  # forwards held per name at most (the oldest are forgotten first)
# Keys every service applies live: they only matter to the base, the supervisor or the registry.
_BASE_LIVE_KEYS = frozenset({"log_level", "max_rss_mb", "depends_on", "restart",
                             "shutdown_timeout_s", "enabled"})


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (no orphaned actors).

    Thespian turns SIGTERM into an ActorExitRequest, so the child exits cleanly.
    """
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the stop sweep still catches leftovers
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def handles(mtype: protocol.MessageType) -> Callable:
    """Mark a method as the handler of one message type: ``handler(self, env, sender)``."""
    def mark(fn: Callable) -> Callable:
        fn.handles = mtype.name
        return fn
    return mark


class ErrorStats:
    """Per-service error counters: by class, rate over the last minute, last error."""

    def __init__(self) -> None:
        self.by_class: collections.Counter = collections.Counter()
        self.recent: collections.deque = collections.deque(maxlen=1000)
        self.last: str = ""
        self.last_at: float = 0.0

    def record(self, kind: str, text: str) -> None:
        now = time.time()
        self.by_class[kind] += 1
        self.recent.append(now)
        self.last, self.last_at = f"{kind}: {text}"[:500], now

    def snapshot(self) -> dict:
        cutoff = time.time() - 60
        return {"by_class": dict(self.by_class), "per_minute": sum(t > cutoff for t in self.recent),
                "last": self.last, "last_at": self.last_at}


def _reply_to(sender, env):
    if env is not None and env.rt:
        try:
            return protocol.address_from_wire(env.rt)
        except ValueError:  # not an address after all: the sender hears of it
            pass
    return sender


class _NamedCall:
    """One request_named (or forward_named) in flight: ``key`` is its entry in ``_pending``
    (the id of the copy sent last, the wait for an address, or how long a forward is held);
    ``addr`` where it went (None: not sent yet). A forward keeps the requester's id and
    address (``forward``) and whether it may go again (``repeatable``)."""

    __slots__ = ("addr", "body", "deadline", "forward", "key", "mtype", "name", "on_missing",
                 "on_reply", "repeatable")

    def __init__(self, name, mtype, body, on_reply, on_missing, deadline,
                 forward: tuple[str, str] | None = None, repeatable: bool = True) -> None:
        self.name, self.mtype, self.body = name, mtype, body
        self.on_reply, self.on_missing, self.deadline = on_reply, on_missing, deadline
        self.forward, self.repeatable = forward, repeatable
        self.key, self.addr = f"wait:{protocol.new_id()}", None


class SwarmActor(Actor):
    """Decode, dispatch, reply, recover: the part shared by supervisors and services."""

    kind = "service"
    tick_s: float | None = None

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls._handlers = {}
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                if hasattr(attr, "handles"):
                    cls._handlers[attr.handles] = attr

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        die_with_parent()
        self.name = "?"
        self.config: dict = {}
        self.registry: str | None = None
        self.root: str | None = None
        self.config_file: str | None = None
        self.log_level = LEVELS["info"]
        self.parent = None
        self.started_at = time.time()
        self.error_stats = ErrorStats()
        self.rejected_count = 0
        self.bridge = None
        self._current: protocol.Envelope | None = None
        self._retries: dict[str, int] = {}
        self._pending: dict[str, tuple[Callable, float]] = {}
        # request_named: name -> wire address, and the registry's version of the news of it;
        # the calls in flight by name; the names being looked up
        self._addresses: dict[str, str] = {}
        self._versions: dict[str, int] = {}
        self._calls: dict[str, set[_NamedCall]] = {}
        self._held: dict[str, collections.deque] = {}  # forwards sent, oldest first
        self._looking: set[str] = set()

    # -- logging and replies -------------------------------------------------
    def log(self, level: str, event: str, msg: str, **fields: Any) -> None:
        if LEVELS.get(level, LEVELS["info"]) < self.log_level:
            return
        if self._current is not None:
            fields.setdefault("msg_id", self._current.id)
            fields.setdefault("cid", self._current.cid)
        log(level, self.name, event, msg, **fields)

    def reply(self, to_addr, env: protocol.Envelope | None, mtype: protocol.MessageType,
              body: dict | None = None) -> None:
        """Answer ``env``: to ``to_addr`` (its sender), or where it says (``rt``: forwarded)."""
        self.send(_reply_to(to_addr, env), mtype.encode(body, re=env.id if env else None))

    def reply_error(self, to_addr, env, code: str, detail: str) -> None:
        self.send(_reply_to(to_addr, env), protocol.error_reply(env, code, detail))

    def request(self, addr, mtype: protocol.MessageType, body: dict | None,
                on_reply: Callable[[protocol.Envelope | None], None], timeout_s: float = 5.0) -> None:
        """Send a request; ``on_reply(env)`` runs with the reply, or with None after the timeout
        (timeouts are checked on the actor's tick)."""
        mid = protocol.new_id()
        self._pending[mid] = (on_reply, time.monotonic() + timeout_s)
        self.send(addr, mtype.encode(body, id=mid))

    def request_named(self, name: str, mtype: protocol.MessageType, body: dict | None,
                      on_reply: Callable[[protocol.Envelope | None], None], timeout_s: float,
                      on_missing: Callable[[protocol.Envelope | None], None]) -> None:
        """Ask the actor registered as ``name``, found through the registry.

        The first request looks the name up and asks the registry to *watch* it; from then on
        requests go straight to the cached address, and the registry tells this actor
        (``registry.moved``) whenever that name's address or state changes. A request that went
        to an actor which then moved (a restart: what went to the old address is lost without
        a word from Thespian) goes again to the new address as soon as it runs; one waiting
        for a restarting actor waits until it runs or the timeout. ``on_reply`` runs once,
        with the reply or None after ``timeout_s``; ``on_missing(notice)`` instead when the
        registry has no running ``name`` for it (its answer or notice: ``b["state"]`` says
        why; None if it did not answer). A second copy reaches an actor only if the old one
        took the request just before it exited: harmless for reads and for writes
        deduplicated by id (queue items carry one); a restart or nudge could then happen
        twice. Should a notice be lost (the registry restarted), a timeout drops the cached
        address and the next request looks it up again."""
        self._place(_NamedCall(name, mtype, body, on_reply, on_missing,
                               time.monotonic() + timeout_s))

    def forward_named(self, name: str, env: protocol.Envelope, sender, mtype: protocol.MessageType,
                      body: dict, on_missing: Callable[[protocol.Envelope | None], None],
                      timeout_s: float, repeatable: bool) -> None:
        """Forward the request ``env`` from ``sender`` to the actor registered as ``name``, as
        ``mtype`` with ``body``: it keeps the request's id and is answered to ``sender``
        directly (Akka's ``forward``: one hop fewer than asking and passing the answer on).
        Found and followed as :meth:`request_named`. Its answer is not seen here, so a forward
        is held for ``FORWARD_HELD_S`` after it was sent: if the actor moves meanwhile (it may
        have died before answering), a ``repeatable`` one (a read, or a write deduplicated by
        id) goes again to the new address; another is answered "interrupted" (the requester
        drops either if it had its answer). Waiting longer than ``timeout_s`` for an address is
        answered as a timeout; ``on_missing`` as for request_named."""
        requester = env.rt or protocol.address_to_wire(sender)  # forwarded twice: the first
        self._place(_NamedCall(name, mtype, body, None, on_missing, time.monotonic() + timeout_s,
                               forward=(env.id, requester), repeatable=repeatable))

    def _place(self, call: _NamedCall) -> None:
        """Send a new call to its name's cached address, or look the name up first."""
        if not self.registry:
            call.on_missing(None)
            return
        name = call.name
        self._calls.setdefault(name, set()).add(call)
        located = self._addresses.get(name)
        if located:
            self._send_call(call, located)
        else:
            self._pending[call.key] = (lambda _: self._call_done(call, None), call.deadline)
            self._look_up(name)

    def _look_up(self, name: str) -> None:
        """One lookup (with a watch) per name at a time; its answer places the waiting calls."""
        if name in self._looking or not self.registry:
            return
        self._looking.add(name)

        def found(lookup) -> None:
            self._looking.discard(name)
            if lookup is not None and lookup.t != "error":
                self._located(lookup)
                return
            # silent, or no such name (yet: a new registry learns the tree again): whoever waits
            # for an address gives up; a call sent already waits for its answer
            if lookup is not None:
                self._addresses.pop(name, None)
            for call in list(self._calls.get(name, ())):
                if call.addr is None:
                    self._call_missing(call, lookup)

        self.request(protocol.address_from_wire(self.registry), protocol.REGISTRY_LOOKUP,
                     {"name": name, "watch": True}, found, 5.0)

    @handles(protocol.REGISTRY_MOVED)
    def _watched_moved(self, env, sender) -> None:
        if protocol.address_to_wire(sender) != self.registry:
            raise PermanentError("registry.moved comes from the registry only")
        self._located(env)

    def _located(self, env: protocol.Envelope) -> None:
        """Where ``name`` is now (a lookup's answer or a registry.moved notice, whichever is
        newer: ``v`` orders them): cache it and send the calls that did not go there yet; a
        name that is not running drops the cache, and ends the calls unless it is on its way
        back (starting, restarting)."""
        b = env.b
        name, addr, version = b["name"], b.get("addr"), b.get("v", 0)
        if version < self._versions.get(name, -1):
            return  # overtaken: newer news of it came first
        self._versions[name] = version
        calls = list(self._calls.get(name, ()))
        if addr and b.get("state") == "running":
            self._addresses[name] = addr
            for call in calls:
                if call.addr == addr:
                    continue
                if call.forward is not None and call.addr is not None and not call.repeatable:
                    self._interrupted(call)  # it may have run at the old address already
                else:
                    self._send_call(call, addr)
            return
        self._addresses.pop(name, None)
        if b.get("state") not in ("starting", "restarting"):
            for call in calls:
                self._call_missing(call, env)

    def _send_call(self, call: _NamedCall, addr: str) -> None:
        """Send ``call`` to ``addr``; the copy sent before (or the wait) is superseded."""
        self._pending.pop(call.key, None)
        call.addr = addr
        if call.forward is None:
            call.key = protocol.new_id()
            self._pending[call.key] = (lambda reply: self._call_done(call, reply), call.deadline)
            self.send(protocol.address_from_wire(addr), call.mtype.encode(call.body, id=call.key))
            return
        call.key = f"held:{protocol.new_id()}"
        self._pending[call.key] = (lambda _: self._end(call), time.monotonic() + FORWARD_HELD_S)
        held = self._held.setdefault(call.name, collections.deque())
        held.append((call, call.key))
        if len(held) > FORWARD_HELD_MAX:  # the oldest were answered long ago, most likely
            old, key = held.popleft()
            if old.key == key:  # (not sent again since)
                self._end(old)
        rid, requester = call.forward
        self.send(protocol.address_from_wire(addr),
                  call.mtype.encode(call.body, id=rid, rt=requester))

    def _end(self, call: _NamedCall) -> bool:
        """Take ``call`` out of flight; False if it was out already (answered, ended)."""
        self._pending.pop(call.key, None)
        calls = self._calls.get(call.name, set())
        if call not in calls:
            return False
        calls.discard(call)
        return True

    def _call_done(self, call: _NamedCall, reply) -> None:
        if not self._end(call):
            return
        if reply is None and call.addr and self._addresses.get(call.name) == call.addr:
            del self._addresses[call.name]  # silent there: look it up before the next request
        if call.forward is None:
            call.on_reply(reply)
        else:  # a forward that never found an address in time
            self._tell_requester(call, "timeout", f"{call.name} did not answer in time")

    def _call_missing(self, call: _NamedCall, why) -> None:
        if self._end(call):
            call.on_missing(why)

    def _interrupted(self, call: _NamedCall) -> None:
        if self._end(call):
            self._tell_requester(call, "interrupted", f"{call.name} restarted while handling "
                                 "it; it may or may not have been done (check before trying "
                                 "again)")

    def _tell_requester(self, call: _NamedCall, code: str, detail: str) -> None:
        rid, requester = call.forward
        self.send(protocol.address_from_wire(requester),
                  protocol.ERROR.encode({"code": code, "detail": detail}, re=rid))

    def _registry_changed(self) -> None:
        """A new registry knows nothing of this actor's watches: look every name up again
        (the calls in flight go again where it says, if that is elsewhere)."""
        self._addresses.clear()
        self._versions.clear()
        self._looking.clear()
        for name, calls in self._calls.items():
            if calls:
                self._look_up(name)

    def _expire_requests(self) -> None:
        now = time.monotonic()
        for mid, (callback, deadline) in list(self._pending.items()):
            if now > deadline:
                del self._pending[mid]
                callback(None)

    def service_config(self) -> dict:
        return self.config.get("services", {}).get(self.name, {})

    def alert(self, severity: str, summary: str, details: str = "", key: str | None = None) -> None:
        """Raise an alert: the registry coalesces it and routes it to the configured sinks."""
        self.log("warning" if severity in ("info", "warning") else "error", "alert", summary,
                 details=details, severity=severity)
        if self.registry:
            self.send(protocol.address_from_wire(self.registry), protocol.ALERT.encode(
                {"severity": severity, "service": self.name, "summary": summary,
                 "details": details, "key": key or f"{self.name}:{summary}"}))

    def notify(self, kind: str, summary: str, details: str = "", severity: str = "info",
               key: str | None = None, **fields: Any) -> None:
        """Announce a milestone (``kind`` e.g. ``gas``) to the chat sinks, through the registry:
        the same path as alerts and state changes, without coalescing."""
        self.log("info", "notify", summary, kind=kind, details=details)
        if self.registry:
            self.send(protocol.address_from_wire(self.registry), protocol.NOTIFY.encode(
                {"kind": kind, "severity": severity, "service": self.name, "summary": summary,
                 "details": details, "key": key or f"{self.name}:{summary}", **fields}))

    def adopt_config(self, body: dict) -> None:
        """Take the lifecycle fields of ``svc.init`` / ``config.changed``: config, log level,
        secrets to redact, and (init only) where the registry, root and config file are."""
        self.config = body["config"]
        registry = self.registry
        for key in ("registry", "root", "config_file"):
            if key in body:
                setattr(self, key, body[key])
        if self.registry != registry:
            self._registry_changed()
        level = self.service_config().get("log_level") or self.config.get(
            "system", {}).get("log_level", "info")
        self.log_level = LEVELS.get(level, LEVELS["info"])
        redact_in_process(self.config.get("_secret_values", []))

    # -- the loop ----------------------------------------------------------------
    def receiveMessage(self, message, sender):
        try:
            if isinstance(message, (bytes, bytearray)):
                self._on_bytes(bytes(message), sender)
            elif isinstance(message, WakeupMessage):
                self._on_wakeup(message.payload)
            elif isinstance(message, WatchMessage):
                self._drain_bridge()
            elif isinstance(message, ActorExitRequest):
                self._stopping()
            elif isinstance(message, ChildActorExited):
                self.on_child_exited(message.childAddress)
            elif isinstance(message, PoisonMessage):
                self.log("warning", "poison", "a message could not be delivered or handled",
                         detail=str(message.details)[:200])
            else:  # other Thespian notices (DeadEnvelope, convention updates, ...), or junk
                self.log("debug", "ignored", f"ignored a {type(message).__name__} message")
        except Exception as exc:  # noqa: BLE001 - a bug here must not become a PoisonMessage loop
            self.error_stats.record("fatal", f"{type(exc).__name__}: {exc}")
            self.log("error", "internal_error", f"{type(message).__name__} handling failed: "
                     f"{type(exc).__name__}: {exc}", exc=exc)
        finally:
            self._current = None
            protocol.correlate("")
        if self.bridge is not None and self.bridge.running:
            return ThespianWatch([self.bridge.fileno()])
        return None

    def _on_bytes(self, data: bytes, sender) -> None:
        env = protocol.decode(data)
        if isinstance(env, protocol.BadMessage):
            self.rejected_count += 1
            self.error_stats.record("permanent", env.detail)
            self.log("warning", "bad_message", env.detail, code=env.code)
            self.reply_error(sender, env, env.code, env.detail)
            return
        self._current = env
        protocol.correlate(env.cid)
        try:
            if env.re is not None and env.re in self._pending:
                self._pending.pop(env.re)[0](env)
            elif env.t in self._handlers:
                self._handlers[env.t](self, env, sender)
            else:
                self.on_unhandled(env, sender)
        except Exception as exc:  # noqa: BLE001 - the one place errors are classified
            self._recover(exc, env, data, sender)
            return
        if self._retries:  # a retried message that succeeded at last
            self._retries.pop(env.id, None)

    def on_unhandled(self, env: protocol.Envelope, sender) -> None:
        """A valid message this actor does not handle (replies are dropped silently)."""
        if env.re is None and env.t != "error":
            self.rejected_count += 1
            self.reply_error(sender, env, "unknown_type", f"{self.name} does not handle {env.t}")

    def _recover(self, exc: Exception, env: protocol.Envelope, data: bytes, sender) -> None:
        kind = classify(exc)
        text = str(exc) or type(exc).__name__
        self.error_stats.record(kind, text)
        if kind == "transient":
            attempt = self._retries.get(env.id, 0) + 1
            if attempt <= TRANSIENT_RETRIES:
                self._retries[env.id] = attempt
                delay = TRANSIENT_BASE_S * 2 ** (attempt - 1)
                self.log("warning", "retry", f"transient error, retry {attempt} in {delay:.2f}s: "
                         f"{text}", type=env.t)
                self.wakeupAfter(datetime.timedelta(seconds=delay), payload=("retry", data, sender))
                return
            kind, text = "permanent", f"gave up after {TRANSIENT_RETRIES} retries: {text}"
        self._retries.pop(env.id, None)
        if kind == "permanent":
            self.log("warning", "rejected", text, type=env.t)
            self.reply_error(sender, env, "permanent", text)
        elif kind == "storage":
            self.log("error", "storage_error", text, type=env.t)
            self.reply_error(sender, env, "storage", f"not done, retry later: {text}")
        elif kind == "config":
            self.log("error", "config_error", text, type=env.t)
            self.reply_error(sender, env, "config", text)
            self.fail(text)
        else:
            self.log("error", "crash", f"{type(exc).__name__}: {text}", type=env.t, exc=exc)
            self.reply_error(sender, env, "internal", f"{type(exc).__name__}: {text}")
            self.send(self.myAddress, ActorExitRequest())

    def _on_wakeup(self, payload) -> None:
        if isinstance(payload, tuple) and payload and payload[0] == "retry":
            self._on_bytes(payload[1], payload[2])
            return
        try:  # a failing timer handler is recorded and logged; the actor and its tick go on
            if payload == "tick":
                self._expire_requests()
                self.on_tick()
            else:
                self.on_wakeup(payload)
        except Exception as exc:  # noqa: BLE001
            self.error_stats.record(classify(exc), str(exc))
            self.log("error", "timer_error", f"{payload!r:.40}: {type(exc).__name__}: {exc}",
                     exc=exc)
        if payload == "tick" and self.tick_s:
            self.wakeupAfter(datetime.timedelta(seconds=self.tick_s), payload="tick")

    def _drain_bridge(self) -> None:
        for event in self.bridge.drain():
            try:
                if isinstance(event, tuple) and event and event[0] == LOG_EVENT:
                    self._bridge_log(event[1])
                    continue
                self.on_event(event)
            except Exception as exc:  # noqa: BLE001
                self.error_stats.record(classify(exc), str(exc))
                self.log("error", "event_error", f"{type(exc).__name__}: {exc}", exc=exc)

    def _bridge_log(self, entry) -> None:
        if isinstance(entry, logging.LogRecord):  # a library's record, from the client's loop
            entry.service, entry.logger = self.name, entry.name
            logging.root.handle(entry)
        else:
            level, event, msg, fields = entry
            self.log(level, event, msg, **fields)

    def _stopping(self) -> None:
        try:
            self.on_stop()
        except Exception as exc:  # noqa: BLE001 - stopping must always finish
            self.log("error", "stop_error", f"{type(exc).__name__}: {exc}")
        if self.bridge is not None:
            self.bridge.stop()
        self.log("info", "stopped", f"{self.name} stopped")

    def start_ticking(self) -> None:
        if self.tick_s:
            self.wakeupAfter(datetime.timedelta(seconds=self.tick_s), payload="tick")

    # -- common handlers -------------------------------------------------------------
    @handles(protocol.HEALTH_PING)
    def _health_ping(self, env, sender) -> None:
        try:
            status, detail = self.health()
            if status not in ("ok", "degraded", "failing"):
                raise ValueError(f"health() returned status {status!r}")
            detail = str(detail)
        except Exception as exc:  # noqa: BLE001 - a broken health() is itself a finding
            status, detail = "failing", f"health check raised {type(exc).__name__}: {exc}"
        body = {"status": status, "detail": detail, "pid": os.getpid(),
                "errors": self.error_stats.snapshot(), "rejected": self.rejected_count}
        try:  # optional: a broken activity() is counted, and never costs the health reply
            if recent := self.activity():
                body["activity"] = list(recent)[-ACTIVITY_MAX:]
        except Exception as exc:  # noqa: BLE001
            self.error_stats.record(classify(exc), f"activity(): {exc}")
        self.reply(sender, env, protocol.HEALTH_PONG, body)

    @handles(protocol.TREE_REGISTRY)
    def _registry_moved(self, env, sender) -> None:
        if sender != self.parent:
            raise PermanentError("the registry's address comes from the supervisor only")
        if env.b["addr"] != self.registry:
            self.registry = env.b["addr"]
            self._registry_changed()

    def fail(self, reason: str, state: str = "failed") -> None:
        """Tell the supervisor this service cannot work until its config changes."""
        if self.parent is not None:
            self.send(self.parent, protocol.SVC_FAILED.encode(
                {"name": self.name, "reason": reason, "state": state}))

    # -- hooks -------------------------------------------------------------------------
    def health(self) -> tuple[str, str]:
        return "ok", ""

    def activity(self) -> list[dict]:
        """What this service did lately, newest last (a chat service: its last commands); the
        registry keeps it with the health reply, ``swarm status --json`` and ``swarm top``
        show it."""
        return []

    def on_tick(self) -> None:
        pass

    def on_wakeup(self, payload) -> None:
        pass

    def on_event(self, event) -> None:
        pass

    def on_stop(self) -> None:
        pass

    def on_child_exited(self, address) -> None:
        pass


class ServiceActor(SwarmActor):
    """A supervised service: receives ``svc.init`` with its config, then runs its hooks."""

    LIVE_KEYS: frozenset = frozenset()
    """Keys of this service's config block it applies without a restart (see on_config_changed)."""

    @handles(protocol.SVC_INIT)
    def _init(self, env, sender) -> None:
        if self.parent is not None:  # started already: only its supervisor starts it, once
            raise PermanentError(f"{self.name} is started already")
        self.name = env.b["name"]
        self.adopt_config(env.b)
        self.parent = sender
        try:
            self.on_start()
        except ConfigError as exc:
            state = getattr(exc, "state", "failed")
            self.error_stats.record("config", str(exc))
            self.log("warning" if state == "disabled" else "error", "config_error",
                     f"{self.name} cannot start: {exc}")
            self.reply(sender, env, protocol.SVC_FAILED,
                       {"name": self.name, "reason": str(exc), "state": state})
            return
        except Exception as exc:  # noqa: BLE001 - as OTP's init: exit, the supervisor restarts it
            self.error_stats.record(classify(exc), str(exc))
            self.log("error", "start_failed", f"{self.name} could not start: "
                     f"{type(exc).__name__}: {exc}", exc=exc)
            self.send(self.myAddress, ActorExitRequest())  # at once: not after the start timeout
            return
        self.started_at = time.time()
        self.start_ticking()
        self.log("info", "started", f"{self.name} started", pid=os.getpid())
        self.reply(sender, env, protocol.SVC_STARTED,
                   {"name": self.name, "pid": os.getpid(), "kind": self.kind})

    @handles(protocol.CONFIG_CHANGED)
    def _config_changed(self, env, sender) -> None:
        if sender != self.parent:
            raise PermanentError("config changes come from the service's supervisor only")
        changed = set(env.b["changed"])
        applied = changed <= (_BASE_LIVE_KEYS | self.LIVE_KEYS)
        if applied:
            old = self.config
            self.adopt_config(env.b)
            try:
                self.on_config_changed(old, changed)
            except Exception as exc:  # noqa: BLE001 - cannot apply live: restart with the new config
                self.log("warning", "reconfigure", f"cannot apply live ({exc}); restart needed")
                applied = False
        self.log("info", "reconfigure", f"config changed ({', '.join(sorted(changed)) or 'core'})"
                 f": {'applied live' if applied else 'restart needed'}")
        self.reply(sender, env, protocol.OK, {"applied": applied})

    def on_start(self) -> None:
        pass

    def on_config_changed(self, old: dict, changed: set[str]) -> None:
        """Apply a new ``self.config`` live (``changed`` is a subset of LIVE_KEYS); raise to ask
        for a restart instead."""
