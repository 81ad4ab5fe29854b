"""The wire contract: every application message type and the msgpack envelope codec.

    >>> data = HEALTH_PING.encode()
    >>> env = decode(data)
    >>> env.t, env.b
    ('health.ping', {})
    >>> decode(b"\\xc1").code
    'bad_message'

An envelope is a msgpack map ``{"t": type, "id": message id, "re": id replied to, "ts": unix
time, "b": body}``, plus ``"c"`` (correlation id) and ``"rt"`` (reply to: a forwarded request is
answered there, not to its sender) when set. Decoding never uses pickle or ext types, bounds every size, and turns
anything malformed or unknown into a :class:`BadMessage` (never an exception).
"""
from __future__ import annotations

import itertools
import os
import time
from typing import Any, NamedTuple

import msgpack

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_WIRE_SCHEMES = ("tcp:", "local:")  # see address_to_wire
_MAX_ITEMS = 1_000_000

_ids = itertools.count(1)
_id_prefix = os.urandom(5).hex()


def _reseed() -> None:
    global _id_prefix
    _id_prefix = os.urandom(5).hex()


# A forked child draws its own prefix, so it never repeats its parent's ids (checked at fork,
# not per id: a getpid() per message was a system call on every send).
os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """A message id unique across processes and restarts: random prefix per process + counter."""
    return f"{_id_prefix}{next(_ids):x}"


class Envelope(NamedTuple):
    """A decoded message."""

    t: str
    """Namespaced type, e.g. ``queue.enqueue``."""
    id: str
    """Message id; replies carry it in ``re``."""
    re: str | None
    """Id of the message this one answers, if it is a reply."""
    ts: float
    """Unix time the sender created it."""
    b: dict
    """Body: a map whose fields depend on the type."""
    cid: str = ""
    """Correlation id: the id of the request that started this chain of messages (``c`` on the
    wire; the message's own id when absent). Logged, so one request can be followed."""
    rt: str | None = None
    """Reply to: where the answer goes instead of the sender (a wire address), set when a
    request was forwarded on behalf of someone else (the admin forwarding a client's request
    to a service: the service answers the client directly)."""


class BadMessage(NamedTuple):
    """Why some bytes were not a valid message; ``id`` is set when it could be read."""

    code: str
    detail: str
    id: str | None = None
    rt: str | None = None
    """Where the error reply goes, when the envelope could be read that far (see Envelope)."""


class MessageType(NamedTuple):
    """A message type: its name and the body fields it requires (name -> accepted types)."""

    name: str
    required: dict
    doc: str

    def encode(self, body: dict | None = None, *, re: str | None = None,
               id: str | None = None, rt: str | None = None) -> bytes:
        """Pack ``body`` into an envelope of this type (carrying the current correlation id);
        ``rt``: answer there, not to the sender (a forwarded request keeps its ``id``)."""
        env = {"t": self.name, "id": id or new_id(), "re": re, "ts": time.time(), "b": body or {}}
        if _correlation:
            env["c"] = _correlation
        if rt:
            env["rt"] = rt
        return msgpack.packb(env, use_bin_type=True)

    def reply(self, to: Envelope, body: dict | None = None) -> bytes:
        """Pack a reply to ``to``."""
        return self.encode(body, re=to.id)


TYPES: dict[str, MessageType] = {}
_correlation = ""


def correlate(cid: str) -> None:
    """Make messages encoded from now on carry ``cid`` (the service base sets it to the message
    being handled, and clears it after). Actors are single-threaded, so a module value suffices."""
    global _correlation
    _correlation = cid


def define(type_name: str, doc: str, /, **required: type | tuple[type, ...]) -> MessageType:
    """Declare a message type; ``required`` maps body fields to the Python types they accept."""
    mt = MessageType(type_name, required, doc)
    TYPES[type_name] = mt
    return mt


_num = (int, float)
_opt_str = (str, type(None))

ERROR = define("error", "A request failed: code (bad_message, unknown_type, ...) and detail.",
               code=str, detail=str)
OK = define("ok", "A request succeeded; fields depend on the request.")

# Lifecycle: parent supervisor <-> child (service or supervisor)
SVC_INIT = define("svc.init", "Configure and start a child: name, config (wire form), registry.",
                  name=str, config=dict)
SVC_STARTED = define("svc.started", "A child is up: name, pid, kind.", name=str, pid=int)
SVC_FAILED = define("svc.failed", "A child cannot work for a reason a restart will not fix.",
                    name=str, reason=str, state=str)
TREE_REGISTRY = define("tree.registry", "The registry's address changed: addr.", addr=str)
TREE_STOP = define("tree.stop", "Stop the whole tree in reverse order: timeout_s.")
TREE_STOPPED = define("tree.stopped", "The tree is stopped: killed (names SIGKILLed).")
TREE_LOOKUP = define("tree.lookup", "Find an actor by name through the root (external clients).",
                     name=str)
SUP_RESTART = define("sup.restart", "Restart one child of this supervisor by name.", name=str)

# Configuration and alerts
CONFIG_CHANGED = define("config.changed", "New effective config; changed: keys of this actor's "
                        "block that differ. Answered applied true|false (false: restart me).",
                        config=dict, changed=list)
TREE_RECONFIGURE = define("tree.reconfigure", "Apply a new, validated config to this subtree.",
                          config=dict)
ALERT = define("alert", "Something an operator should know: severity, service, summary, details.",
               severity=str, service=str, summary=str)
NOTIFY = define("notify", "For the chat sinks (alerts.sinks): kind (alert | state | gas), severity, "
                "service, summary, details, key, ts, count. A service sends one to the registry "
                "(a milestone); the registry sends every alert, state change and milestone on.",
                kind=str, severity=str, service=str, summary=str)

# Health
HEALTH_PING = define("health.ping", "Are you alive? Answered with health.pong.")
HEALTH_PONG = define("health.pong", "Alive: status ok|degraded|failing, detail, pid, errors.",
                     status=str, pid=int)
HEALTH_SAMPLE = define("health.sample", "Sample CPU/RSS of these pids: pids {name: pid}.",
                       pids=dict)
HEALTH_SAMPLES = define("health.samples", "Samples: {name: {cpu, rss, uss}}.", samples=dict)

# Registry
REGISTRY_UPDATE = define("registry.update", "A supervisor reports a child's state.",
                         name=str, state=str)
REGISTRY_REMOVE = define("registry.remove", "A child is no longer supervised.", name=str)
REGISTRY_NOTE = define("registry.note", "Record an error against a child: name, error.",
                       name=str, error=str)
REGISTRY_LOOKUP = define("registry.lookup", "Find a service by name; watch: true also asks to "
                         "be told (registry.moved) whenever its address or state changes.",
                         name=str)
REGISTRY_FOUND = define("registry.found", "Lookup answer: name, addr, parent_addr, state, v "
                        "(the entry's version: a later answer or notice has a higher one).",
                        name=str)
REGISTRY_MOVED = define("registry.moved", "To the actors watching name: its addr, state and v "
                        "changed (a restart, a stop).", name=str, state=str, v=int)
REGISTRY_STATUS = define("registry.status", "Ask for the aggregated status (config: a map "
                         "passed on in the answer).")
REGISTRY_SNAPSHOT = define("registry.snapshot", "Aggregated status: healthy, services.",
                           healthy=bool, services=dict)

# Admin (CLI, Discord, Twitch enter here)
ADMIN_STATUS = define("admin.status", "The tree's status (shape of `swarm status --json`).")
ADMIN_LOOKUP = define("admin.lookup", "Where a service runs: addr, parent_addr, state, pid.",
                      name=str)
ADMIN_RELOAD = define("admin.reload", "Re-read the config file and apply what changed.")
ADMIN_RESTART = define("admin.restart", "Restart one service by name.", name=str)

# Queue ------------------------------------------------------------------------------------
# Payloads inside items/messages are opaque msgpack bytes (bin), passed through untouched.
# Replies are ``ok`` (fields below) or ``error``; see actors/queue/service.py for the details.
QUEUE_ENQUEUE = define(
    "queue.enqueue", "Store items (maps: recipient, payload bytes or text, priority, type, id, "
    "sender, headers, delay_s, max_attempts) once committed; ok: accepted, duplicates, "
    "rejected [[index, reason]], ids.", items=list)
QUEUE_LEASE = define(
    "queue.lease", "Pull: lease up to limit ready messages of recipient (or topic, a glob over "
    "recipients) for visibility_s, as owner (default: the sender's address); ok: messages.")
QUEUE_ACK = define(
    "queue.ack", "Done with leased messages: ids (held by the sender's address or the owner it "
    "names); quiet=true: no reply. ok: acked, not_held (ids leased to someone else).", ids=list)
QUEUE_NACK = define(
    "queue.nack", "Give leased messages back: ids, owner, error, retry (false: dead-letter "
    "now); quiet=true: no reply. ok: retried, dead, not_held.", ids=list)
QUEUE_SUBSCRIBE = define(
    "queue.subscribe", "Push: deliver messages of recipient (or topic, a glob over recipients) "
    "to the sender, at most max_in_flight unacked; idempotent; consumer: a name that replaces "
    "the same consumer's subscription from an older address; dropped unless repeated within "
    "ttl_s. ok: sub, incarnation, max_in_flight, ttl_s.")
QUEUE_UNSUBSCRIBE = define("queue.unsubscribe", "Drop the sender's subscriptions (or sub).")
QUEUE_DELIVER = define("queue.deliver", "A pushed batch: sub, incarnation, messages.",
                       sub=str, messages=list)
QUEUE_STATS = define("queue.stats", "Depths, rates, latency, in-flight per consumer, health.")
QUEUE_DLQ = define("queue.dlq", "Dead letters, oldest first: limit, offset; ok: messages (fewer "
                   "if they would pass 8 MiB: page on with offset), total.")
QUEUE_REQUEUE = define("queue.requeue", "Dead letters -> ready: ids, or all=true; ok: requeued.")
QUEUE_PURGE = define("queue.purge", "Delete messages: state (dead|ready|leased|all), recipient; "
                     "ok: purged.")
ADMIN_SEND = define("admin.send", "Enqueue items through the queue (see queue.enqueue).",
                    items=list)
ADMIN_QUEUE = define("admin.queue", "Queue operator command: op (stats|dlq|requeue|purge) and "
                     "that command's fields.", op=str)
# End of Queue ------------------------------------------------------------------------------

# Gas pipeline and swarm brain (actors/gas/) -------------------------------------------------
GAS_STATUS = define("gas.status", "Every watched agent: stage, progress, task, updated, next "
                    "agent, gas sent; ok: agents (list), relay (names).")
GAS_PROGRESS = define("gas.progress", "Report progress: agent, progress (0-100), task.",
                      agent=str)
GAS_UNSTALL = define("gas.unstall", "Nudge an agent again and restart its stall timer: agent.",
                     agent=str)
GAS_HISTORY = define("gas.history", "Gas sent, newest first: agent (optional), limit.")
BRAIN_ADD = define("brain.add", "Add a knowledge entry: title, content, category, tags, author; "
                   "ok: id.", title=str, content=str)
BRAIN_SEARCH = define("brain.search", "Ranked search: query, category, limit; ok: results.",
                      query=str)
BRAIN_SHOW = define("brain.show", "One entry by id.", id=int)
BRAIN_LIST = define("brain.list", "Entries, newest first: category, limit, offset.")
ADMIN_GAS = define("admin.gas", "Gas pipeline or brain command through the gas service: op "
                   "(status|progress|unstall|history|brain_add|brain_search|brain_show|"
                   "brain_list) and that command's fields.", op=str)
ADMIN_AGENTS = define("admin.agents", "Every agent of agents.names: inbox depth (queue) and gas "
                      "state (gas service, when running); ok: agents.")

# Test services (used by the test suite and the bridge burst test)
TEST_HANG = define("test.hang", "Block the actor inside a handler (tests hung-actor detection).")
TEST_ECHO = define("test.echo", "Echo the body back.")
TEST_RAISE = define("test.raise", "Raise an exception of class kind.", kind=str)
TEST_BURST = define("test.burst", "Push n events from the asyncio thread.", n=int)
TEST_LOG = define("test.log", "Log text through the runtime and through a library logger.",
                  text=str)
TEST_EVENTS = define("test.events", "Events received from the asyncio thread so far.")
TEST_WHERE = define("test.where", "Where handlers run: thread name and Python stack depth.")


def _check(body: Any, mtype: MessageType) -> str | None:
    if not isinstance(body, dict):
        return f"body of {mtype.name} must be a map, found {type(body).__name__}"
    for field, kinds in mtype.required.items():
        if field not in body:
            return f"{mtype.name}: missing field '{field}'"
        value = body[field]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
            return f"{mtype.name}: field '{field}' has type {type(value).__name__}"
    return None


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def decode(data: Any, max_bytes: int = MAX_MESSAGE_BYTES) -> Envelope | BadMessage:
    """Decode and validate an envelope; never raises."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return BadMessage("bad_message", f"expected bytes, found {type(data).__name__}")
    if len(data) > max_bytes:
        return BadMessage("too_large", f"message of {len(data)} bytes exceeds {max_bytes}")
    try:
        raw = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True, max_ext_len=0,
            max_bin_len=max_bytes, max_str_len=max_bytes,
            max_array_len=_MAX_ITEMS, max_map_len=_MAX_ITEMS)
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types for malformed input
        return BadMessage("bad_message", f"not a msgpack envelope: {type(exc).__name__}")
    if not isinstance(raw, dict):
        return BadMessage("bad_message", "envelope must be a map")
    mid = raw.get("id")
    mid = mid if isinstance(mid, str) and len(mid) <= 128 else None
    t, re, ts, body = raw.get("t"), raw.get("re"), raw.get("ts"), raw.get("b", {})
    if not isinstance(t, str) or mid is None:
        return BadMessage("bad_message", "envelope needs string fields 't' and 'id'", mid)
    rt = raw.get("rt")
    rt = rt if isinstance(rt, str) and len(rt) <= 128 and rt.startswith(_WIRE_SCHEMES) else None
    if not (re is None or isinstance(re, str)) or not isinstance(ts, _num):
        return BadMessage("bad_message", "envelope field 're' or 'ts' has the wrong type", mid, rt)
    mtype = TYPES.get(t)
    if mtype is None:
        return BadMessage("unknown_type", f"unknown message type {t[:64]!r}", mid, rt)
    problem = _check(body, mtype)
    if problem:
        return BadMessage("bad_message", problem, mid, rt)
    cid = raw.get("c")
    return Envelope(t, mid, re, float(ts), body, cid if isinstance(cid, str) and len(cid) <= 128
                    else mid, rt)


def error_reply(bad: BadMessage | Envelope | None, code: str, detail: str) -> bytes:
    """An ``error`` reply to a (possibly unreadable) request."""
    return ERROR.encode({"code": code, "detail": detail}, re=bad.id if bad else None)


def address_to_wire(addr: Any) -> str:
    """A Thespian actor address as a string that can travel inside a message body.

    Thespian pickles addresses; our envelope is msgpack, so addresses travel as
    ``tcp:HOST:PORT`` (TCP base) or ``local:ID`` (simpleSystemBase).
    """
    details = addr.addressDetails
    if isinstance(details, str):
        return "local:" + details
    host, port = details.sockname[:2]
    return f"tcp:{host}:{port}"


def address_from_wire(text: str) -> Any:
    """The inverse of :func:`address_to_wire`."""
    from thespian.actors import ActorAddress

    kind, _, rest = text.partition(":")
    if kind == "local":
        return ActorAddress(rest)
    if kind == "tcp":
        from thespian.system.transport.IPBase import TCPv4ActorAddress

        host, _, port = rest.rpartition(":")
        return ActorAddress(TCPv4ActorAddress(host, int(port)))
    raise ValueError(f"not an actor address: {text!r}")
