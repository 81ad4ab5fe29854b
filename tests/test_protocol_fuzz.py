"""Protocol fuzz: every message type the swarm defines, malformed every way its declaration
allows, sent to every actor of a running tree over the real actor system (real processes, the
external endpoint the CLI uses).

The cases are generated from ``protocol.TYPES`` after every module under ``actors/`` is imported
(so a type defined anywhere is fuzzed with no change here) and from the handlers of the tree's
actor classes (the optional body fields a handler reads, found in its source):

* per type: the body not a map; each required field missing (plus junk fields); each required
  field of a wrong type (the str <-> int swap, None, and one more of int, uint64, int64, float,
  bool, str, a 100 kB string, bytes, list, map); the required fields valid with junk extra
  fields, as a request and as a reply (``re`` set); each optional field a handler reads with a
  wrong value;
* per actor, whatever the type: random garbage bytes, empty and never-used bytes, truncated
  msgpack, a non-map top level, ext types, non-string map keys, every envelope field of a
  wrong type or missing ("t" as int, "b" as list, ...), unknown and odd type names, a message
  one byte over the size limit, and non-bytes Thespian messages.

What is expected is decided per message by decoding it here with the actors' own decoder:

* what it rejects gets exactly one ``error`` reply with that code (``re`` = the id, if one was
  readable); a type defined outside ``system/protocol.py`` may also be ``unknown_type`` at an
  actor whose process never imported its module;
* a well-formed request gets exactly one reply: an ``error`` (any code but ``internal``, which
  means the handler crashed) or its answer, where the input is legitimately acceptable (a junk
  brain entry, a lookup that finds nothing, an enqueue whose items are all rejected);
* a well-formed one-way message (a reply: ``re`` set, or a type in ``ONE_WAY``) is ignored or
  refused: at most one reply (no reply storm), never ``internal``;
* a non-bytes Thespian message is ignored (no reply): it is not the protocol.

``DESTRUCTIVE`` lists the few well-formed messages that are real commands when they reach the
actor that handles them (``tree.stop`` is ``swarm stop``); they are sent there only malformed.

Afterwards every actor has the pid it had (health.ping answers with its pid), every service
``restarts == 0``, the tree is healthy, each actor counted at least the messages it rejected,
and ordinary requests still work. ``SWARM_FUZZ_SEED=N`` reruns another draw; failures print
the seed.
"""
from __future__ import annotations

import collections
import importlib
import inspect
import math
import os
import pkgutil
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
from thespian.actors import ActorSystemFailure

import actors
from actors.discord.harness import DiscordPlatform
from actors.tree import ROOT, SUPERVISOR, children_of
from actors.twitch.harness import TwitchPlatform
from system import protocol
from system.admin import AdminClient
from system.launcher import ROOT_CLASS, ROOT_NAME, connect
from tests.conftest import ROOT as REPO

SEED = int(os.environ.get("SWARM_FUZZ_SEED") or 20240611)

# Types that are not requests by protocol design: nobody waits for an answer, so an actor may
# ignore them (or refuse them with an error). Everything else is a request and must be answered.
ONE_WAY = {
    "ok": "a reply", "error": "a reply",
    "svc.started": "a child's answer to svc.init", "svc.failed": "a child's notice to its parent",
    "tree.registry": "a supervisor's notice that the registry moved",
    "tree.stopped": "the answer to tree.stop",
    "tree.reconfigure": "the admin and supervisors send it without waiting",
    "alert": "to the registry, never answered", "notify": "to the registry and the chat sinks",
    "health.pong": "the answer to health.ping", "health.samples": "the answer to health.sample",
    "registry.update": "a supervisor's report", "registry.remove": "a supervisor's report",
    "registry.note": "a supervisor's or the health monitor's report",
    "registry.found": "the answer to a lookup", "registry.snapshot": "the answer to a status",
    "queue.deliver": "the queue's push to a subscriber",
}
# Well-formed messages that are real commands at the actor handling them: sent there only
# malformed. (test.* are the probe's tools; the probe does not run here.)
DESTRUCTIVE = {
    "tree.stop": "stops the (sub)tree: it is `swarm stop`, which takes no required field",
    "test.hang": "blocks the probe for good (hung-actor detection)",
    "test.raise": "raises the error class it names, fatal included",
}

BIG = "Z" * 100_000
# Values of every msgpack kind; a field gets those its declaration does not accept.
POOL: dict[str, object] = {
    "int": 7, "uint64": 2**64 - 1, "int64": -2**63, "float": 1.5, "bool": True, "none": None,
    "str": "fz", "huge_str": BIG, "bytes": b"\x00\xff", "list": [1, "x", None],
    "map": {"x": {"y": [1]}},
}
SWAP = {str: "int", int: "str", float: "str", bool: "int", dict: "list", list: "map",
        bytes: "str", type(None): "str"}
# Wrong values for optional fields (whose types only the handler knows): none is plausible.
# The fields are those a handler reads as ``env.b.get("f")``, ``b["f"]`` or ``helper(b, "f")``.
OPTIONAL_JUNK = ("map", "list", "huge_str", "int64", "nan")
_FIELD_READ = re.compile(r"""(?:\benv\.b|(?<![\w.])b)(?:\.get\(\s*|\[\s*)["'](\w+)["']"""
                         r"""|\w\(\s*(?:env\.b|(?<![\w.])b)\s*,\s*["'](\w+)["']""")
_MISSING = object()


@dataclass
class Template:
    """One generated case: ``make(mid)`` builds the message with a fresh id for one actor."""

    label: str
    mtype: str | None
    make: Callable[[str], object]


@dataclass
class Sent:
    actor: str
    label: str
    mtype: str | None
    mid: str | None        # the id the actor can read (its reply carries it in re)
    codes: frozenset | None  # rejected by the decoder: the error codes allowed; None: well-formed
    request: bool          # an answer is due


# -- generation ------------------------------------------------------------------------------
def import_actor_modules() -> None:
    for module in pkgutil.walk_packages(actors.__path__, "actors."):
        importlib.import_module(module.name)


def protocol_only_types() -> set[str]:
    """The types system/protocol.py defines itself (a fresh interpreter imports no actor)."""
    code = "from system import protocol; print('\\n'.join(protocol.TYPES))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return set(out.split())


def accepts(kinds, value) -> bool:
    """As the decoder's check: isinstance, and bool only where bool is declared."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def valid_junk(kinds, rng: random.Random):
    """A value of the first declared kind, meaningless to every handler."""
    kind = (kinds if isinstance(kinds, tuple) else (kinds,))[0]
    return {str: f"fz-{rng.getrandbits(24):06x}", int: rng.randint(10**6, 10**9), float: 1.5,
            bool: False, dict: {"fz": "fz"}, list: ["fz"], bytes: b"fz",
            type(None): None}.get(kind, "fz")


def junk_fields(rng: random.Random) -> dict:
    keys = [f"zz_{rng.getrandbits(16):04x}", "", "ключ", "k" * 300, "__class__"]
    return {k: POOL[rng.choice(sorted(POOL))] for k in rng.sample(keys, rng.randint(1, 3))}


def envelope(t, body, mid: str, /, **fields) -> bytes:
    env = {"t": t, "id": mid, "re": None, "ts": time.time(), "b": body}
    env.update(fields)
    return msgpack.packb({k: v for k, v in env.items() if v is not _MISSING}, use_bin_type=True)


def handler_fields(classes) -> dict[str, set[str]]:
    """Type name -> the body fields its handlers read (from their source)."""
    fields: dict[str, set[str]] = collections.defaultdict(set)
    for cls in classes:
        for name, fn in cls._handlers.items():
            for a, b in _FIELD_READ.findall(inspect.getsource(fn)):
                fields[name].add(a or b)
    return fields


def type_templates(mt: protocol.MessageType, optional: set[str],
                   rng: random.Random) -> list[Template]:
    name, req = mt.name, mt.required
    out: list[Template] = []

    def add(label: str, body, **fields) -> None:
        out.append(Template(f"{name}: {label}", name,
                            lambda mid, b=body, f=fields: envelope(name, b, mid, **f)))

    def valid() -> dict:
        return {f: valid_junk(k, rng) for f, k in req.items()}

    for kind in rng.sample(["list", "str", "int", "none", "bytes", "float", "bool"], 2):
        add(f"body is {kind}", POOL[kind])
    for f, kinds in req.items():
        add(f"missing {f!r}, junk fields", {**{k: v for k, v in valid().items() if k != f},
                                           **junk_fields(rng)})
        wrong = [k for k in POOL if not accepts(kinds, POOL[k])]
        first = (kinds if isinstance(kinds, tuple) else (kinds,))[0]
        picks = {SWAP.get(first, "none"), "none"} & set(wrong)
        picks.add(rng.choice(sorted(set(wrong) - picks)))
        for kind in sorted(picks):
            add(f"{f!r} is {kind}", {**valid(), f: POOL[kind]})
    add("valid fields + junk fields", {**valid(), **junk_fields(rng)})
    add("as a reply (re set), junk fields", {**valid(), **junk_fields(rng)},
        re=f"fz-re-{rng.getrandbits(32):08x}")
    for f in sorted(optional - set(req)):
        for kind in rng.sample(OPTIONAL_JUNK, 2):
            value = math.nan if kind == "nan" else POOL[kind]
            add(f"optional {f!r} is {kind}", {**valid(), f: value})
    return out


def envelope_templates(rng: random.Random) -> list[Template]:
    """Malformed whatever the type: bytes that are no envelope, envelope fields of wrong types."""
    ping = protocol.HEALTH_PING.name
    raw: list[tuple[str, object]] = [
        (f"{n} random bytes", rng.randbytes(n)) for n in (1, 7, 64, 1024)]
    raw += [("empty bytes", b""), ("never-used byte 0xc1", b"\xc1"),
            ("top level is a list", msgpack.packb([ping, "x1"])),
            ("top level is a str", msgpack.packb(ping)), ("top level is nil", msgpack.packb(None)),
            ("ext type", msgpack.packb(msgpack.ExtType(1, b"x"))),
            ("int map keys in the body", msgpack.packb({"t": ping, "id": "x", "ts": 1.0,
                                                       "b": {1: 2}})),
            ("array header of 2**32-1 items, no items", b"\xdd\xff\xff\xff\xff"),
            ("one byte over the size limit", b"\x00" * (protocol.MAX_MESSAGE_BYTES + 1)),
            ("non-bytes: str", "health.ping"), ("non-bytes: int", 42),
            ("non-bytes: dict", {"t": ping, "id": "x", "ts": 1.0, "b": {}}),
            ("non-bytes: list", [b"\x81"])]
    out = [Template(label, None, lambda mid, d=data: d) for label, data in raw]
    for frac in sorted(rng.random() for _ in range(3)):
        out.append(Template(f"truncated to {frac:.0%}", ping, lambda mid, f=frac: (
            data := envelope(ping, {"zz": "z" * 20}, mid))[:max(1, int(len(data) * f))]))
    bad = {"t": [7, None, ["health", "ping"], b"health.ping", {"t": ping}, _MISSING],
           "id": [7, None, b"x1", "i" * 129, _MISSING], "re": [7, ["x"], b"x"],
           "ts": ["now", None, [1.0], _MISSING], "b": [[1, 2], "body", 7, _MISSING],
           "c": [7, "c" * 200]}
    for field, values in bad.items():
        for value in values:
            what = "missing" if value is _MISSING else type(value).__name__
            out.append(Template(f"envelope {field!r} is {what}", ping,
                                lambda mid, f=field, v=value: envelope(ping, {}, mid, **{f: v})))
    for t in ("no.such", "", "x" * 10_000, "health.ping\x00", "héllo.wörld", "HEALTH.PING"):
        out.append(Template(f"unknown type {t[:20]!r}", None,
                            lambda mid, t=t: envelope(t, {}, mid)))
    out.append(Template("a bytearray envelope", ping,
                        lambda mid: bytearray(envelope(ping, {"zz": 1}, mid))))
    return out


def expect(actor: str, tpl: Template, data: object, base: set[str]) -> Sent:
    """What the actor must do with ``data``: decided by the decoder it runs."""
    if not isinstance(data, (bytes, bytearray)):
        return Sent(actor, tpl.label, tpl.mtype, None, None, False)
    got = protocol.decode(bytes(data))
    if isinstance(got, protocol.BadMessage):
        codes = {got.code}
        if tpl.mtype is not None and tpl.mtype not in base and got.code == "bad_message":
            codes.add("unknown_type")  # its module may not be imported in that actor's process
        return Sent(actor, tpl.label, tpl.mtype, got.id, frozenset(codes), True)
    request = got.re is None and got.t not in ONE_WAY
    return Sent(actor, tpl.label, got.t, got.id, None, request)


# -- the swarm -------------------------------------------------------------------------------
class Endpoint:
    """One external endpoint: sends, and sorts what comes back by the id it answers."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.by_re: dict[str, list[protocol.Envelope]] = collections.defaultdict(list)
        self.no_re: list = []  # answers to messages whose id was unreadable, pushes, junk
        self.undelivered: list[str] = []

    def tell(self, addr, data, sent: Sent) -> None:
        try:
            self.ctx.tell(addr, data)
        except ActorSystemFailure as exc:  # the actor is gone: what killed it is in the log
            self.undelivered.append(f"{sent.actor} <- {sent.label}: not delivered: {exc}")

    def listen(self, timeout: float) -> str | None:
        """Wait for one message; returns the id it answers, if any."""
        msg = self.ctx.listen(max(0.01, timeout))
        if msg is None:
            return None
        env = protocol.decode(msg) if isinstance(msg, (bytes, bytearray)) else msg
        if isinstance(env, protocol.Envelope) and env.re is not None:
            self.by_re[env.re].append(env)
            return env.re
        self.no_re.append(env)
        return None

    def call(self, addr, mtype: protocol.MessageType, body: dict | None = None,
             timeout: float = 10.0) -> protocol.Envelope:
        mid = protocol.new_id()
        self.ctx.tell(addr, mtype.encode(body, id=mid))
        deadline = time.monotonic() + timeout
        while not self.by_re.get(mid) and time.monotonic() < deadline:
            self.listen(deadline - time.monotonic())
        assert self.by_re.get(mid), f"no answer to {mtype.name} (seed {SEED})"
        return self.by_re.pop(mid)[0]


def actor_classes(config: dict) -> dict[str, type]:
    """Name -> actor class of every actor the config's tree starts (the root included)."""
    def load(path: str) -> type:
        module, _, cls = path.rpartition(".")
        return getattr(importlib.import_module(module), cls)

    out = {ROOT: load(SUPERVISOR)}
    for d in children_of(ROOT, config):
        out[d.spec.name] = load(d.actor)
        for child in children_of(d.spec.name, config):
            out[child.spec.name] = load(child.actor)
    return out


def test_every_malformed_message_at_every_actor_is_answered_and_crashes_nothing(
        make_swarm, monkeypatch):
    t_start = time.monotonic()
    rng = random.Random(SEED)
    import_actor_modules()
    base_types = protocol_only_types()
    assert set(ONE_WAY) | set(DESTRUCTIVE) <= set(protocol.TYPES), "stale names in the lists"

    platforms = [DiscordPlatform(), TwitchPlatform()]  # the chat services, on simulated platforms
    try:
        for p in platforms:
            p.start({}, {})
            for key, value in p.env().items():
                monkeypatch.setenv(key, value)
        swarm = make_swarm({
            "services": {"queue": {"enabled": True}, "gas": {"enabled": True},
                         "probe": {"enabled": False},
                         **{p.name: p.overlay({}) for p in platforms}},
            # the packaged timeout: the 16 MiB messages keep an actor busy a moment
            "health": {"timeout_s": 3.0}})
        swarm.start()
        for p in platforms:
            p.wait_connected(timeout=15)
        _fuzz(swarm, rng, base_types, t_start)
    finally:
        for p in platforms:
            p.stop()


def _fuzz(swarm, rng: random.Random, base_types: set[str], t_start: float) -> None:
    classes = actor_classes(swarm.config)
    swarm.wait_for(lambda s: s["healthy"] and all(
        s["services"][n]["state"] == "running" for n in classes if n != ROOT),
        timeout=20, what="every actor running")
    asys = connect(swarm.config)
    admin = AdminClient(swarm.config)
    addrs = {ROOT: asys.createActor(ROOT_CLASS, globalName=ROOT_NAME)}
    for name in classes:
        if name != ROOT:
            addrs[name] = protocol.address_from_wire(
                admin.call(protocol.ADMIN_LOOKUP, {"name": name})["addr"])

    optional = handler_fields(classes.values())
    templates = envelope_templates(rng)
    for name in sorted(protocol.TYPES):
        templates += type_templates(protocol.TYPES[name], optional.get(name, set()), rng)
    handled = {name: set(cls._handlers) for name, cls in classes.items()}

    with asys.private() as ctx:
        ep = Endpoint(ctx)
        before = {name: ep.call(addr, protocol.HEALTH_PING).b for name, addr in addrs.items()}
        sent: list[Sent] = []
        idless: dict[str, list[tuple[object, Sent]]] = collections.defaultdict(list)
        bulk: list[tuple[object, object, Sent]] = []
        for name, addr in addrs.items():
            for tpl in templates:
                data = tpl.make(protocol.new_id())
                s = expect(name, tpl, data, base_types)
                if s.codes is None and s.mtype in DESTRUCTIVE and s.mtype in handled[name]:
                    continue
                sent.append(s)
                if s.mid is None:
                    idless[name].append((data, s))
                else:
                    bulk.append((addr, data, s))

        # 1. messages without a readable id, one actor at a time: their answers (re None) are
        # told apart by who was asked last
        no_re: dict[str, list] = {}
        for name, items in idless.items():
            for data, s in items:
                ep.tell(addrs[name], data, s)
            want = sum(s.codes is not None for _, s in items)
            ep.no_re = []
            deadline = time.monotonic() + 10
            while len(ep.no_re) < want and time.monotonic() < deadline:
                ep.listen(deadline - time.monotonic())
            no_re[name] = ep.no_re
        # 2. everything else, all actors interleaved, in bulk; then collect with a deadline
        rng.shuffle(bulk)
        t_send = time.monotonic()
        for addr, data, s in bulk:
            ep.tell(addr, data, s)
        send_s = time.monotonic() - t_send
        ep.no_re = []
        due = {s.mid for _, _, s in bulk if s.request} - ep.by_re.keys()
        deadline = time.monotonic() + 20
        while due and time.monotonic() < deadline:
            due.discard(ep.listen(deadline - time.monotonic()))
        quiet = time.monotonic() + 1.0  # late or second answers: a storm shows here
        while time.monotonic() < quiet:
            ep.listen(quiet - time.monotonic())
        stray, after = ep.no_re, {}
        for name, addr in addrs.items():
            try:
                after[name] = ep.call(addr, protocol.HEALTH_PING, timeout=5).b
            except (AssertionError, ActorSystemFailure) as exc:
                after[name] = {"pid": None, "status": "gone", "detail": str(exc)}

    problems, unanswered = _judge(bulk, ep.by_re, idless, no_re, stray)
    # what crashed first: everything sent to that actor afterwards may be lost with it
    problems.sort(key=lambda p: "crashed" not in p)
    problems[:0] = ep.undelivered[:5]
    rejected = collections.Counter(s.actor for s in sent if s.codes is not None)
    for name in addrs:
        if after[name]["pid"] != before[name]["pid"]:
            problems.append(f"{name}: pid {before[name]['pid']} -> {after[name]['pid']}")
        if after[name]["status"] != "ok":
            problems.append(f"{name}: health {after[name]['status']}: {after[name]['detail']}")
        counted = after[name].get("rejected", 0) - before[name].get("rejected", 0)
        if counted < rejected[name]:
            problems.append(f"{name}: counted {counted} rejected messages, sent it "
                            f"{rejected[name]} malformed ones")
    try:
        final = swarm.status()
    except Exception as exc:  # noqa: BLE001 - reported with the rest
        final = {"healthy": False, "services": {}}
        problems.append(f"swarm status failed: {exc}")
    for name, view in final["services"].items():
        if view["restarts"] or (name in classes and view["state"] != "running"):
            problems.append(f"{name}: {view['state']}, {view['restarts']} restarts, "
                            f"{view['detail']!r}")
    if not final["healthy"]:
        problems.append("the tree is not healthy after the fuzz")
    report = (f"seed {SEED} (SWARM_FUZZ_SEED): {len(protocol.TYPES)} types, {len(templates)} "
              f"cases x {len(addrs)} actors = {len(sent)} messages ({send_s:.1f}s to send), "
              f"{unanswered} unanswered")
    shown = "\n".join(problems[:40]) + (f"\n... {len(problems) - 40} more"
                                        if len(problems) > 40 else "")
    assert unanswered == 0 and not problems, f"{report}\n{shown}"

    # ordinary requests still work, through the admin and directly
    assert swarm.ask("queue", protocol.QUEUE_STATS).t == "ok", report
    assert swarm.ask("gas", protocol.GAS_STATUS).t == "ok", report
    assert admin.call(protocol.ADMIN_QUEUE, {"op": "stats"})["depth"] is not None, report
    assert swarm.ask("registry", protocol.REGISTRY_LOOKUP, {"name": "queue"}).b["state"] == \
        "running", report
    print(f"{report}; {time.monotonic() - t_start:.1f}s in all")


def _judge(bulk, by_re, idless, no_re, stray) -> tuple[list[str], int]:
    """(what went wrong, one line each; how many requests got no answer)."""
    problems, unanswered = [], 0
    for _, _, s in bulk:
        got = by_re.get(s.mid, [])
        where = f"{s.actor} <- {s.label}"
        if len(got) > 1:
            problems.append(f"{where}: {len(got)} answers to one message")
        if s.request and not got:
            unanswered += 1
            problems.append(f"{where}: unanswered" + ("" if s.codes is not None else
                            f" (if {s.mtype} is one-way by design, add it to ONE_WAY)"))
        for env in got[:1]:
            if s.codes is not None and (env.t != "error" or env.b["code"] not in s.codes):
                problems.append(f"{where}: answered {env.t} {env.b.get('code')!r}, "
                                f"expected error {sorted(s.codes)}")
            elif env.t == "error" and env.b["code"] == "internal":
                problems.append(f"{where}: the handler crashed: {env.b['detail']}")
    for name, items in idless.items():
        # each answer (re None) must match one rejected message; the non-bytes get none
        left = [s for _, s in items if s.codes is not None]
        for env in no_re[name]:
            code = env.b.get("code") if isinstance(env, protocol.Envelope) \
                and env.t == "error" else None
            match = next((s for s in left if code in s.codes), None)
            if match is None:
                problems.append(f"{name}: an answer to no message without an id: {env!r:.200}")
            else:
                left.remove(match)
        unanswered += len(left)
        problems += [f"{name} <- {s.label}: unanswered (expected error {sorted(s.codes)})"
                     for s in left]
    for env in stray:
        problems.append(f"an answer nobody asked for: {env!r:.200}")
    return problems, unanswered
