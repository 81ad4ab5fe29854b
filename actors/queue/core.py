"""Pure bookkeeping of the queue actor: group commit, in-flight leases, push subscriptions,
rates, latency and health. No Thespian, no SQLite: the actor shell (``service.py``) calls it.

    >>> g = GroupCommit(max_payload=16)
    >>> g.add("p1", "e1", [{"recipient": "a", "text": "hi"}, 7])  # items pending: 7 is rejected
    1
    >>> items, _ = g.take()
    >>> [sorted(i) for i in items]
    [['payload', 'recipient']]
"""
from __future__ import annotations

import errno
import math
import sqlite3
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import msgpack

from actors.queue.model import PRIORITY_LABELS, EnqueueResult, Message
from system.errors import PermanentError

MAX_ITEMS_PER_REQUEST = 10_000
RATE_WINDOW_S = 60.0
LATENCY_SAMPLES = 4096


# -- enqueue: validation and group commit ----------------------------------------------------
def normalize(item: Any, max_payload: int) -> tuple[dict | None, str | None]:
    """An enqueue item as the store takes it, or (None, reason). ``text`` becomes the payload
    ``msgpack({"text": text})``; an int priority 0..3 becomes its label. The item itself is
    returned when nothing changes (the common case: no copy)."""
    if not isinstance(item, dict):
        return None, f"item must be a map, not {type(item).__name__}"
    out = item
    if "text" in out:
        if "payload" in out:
            return None, "give text or payload, not both"
        if not isinstance(out["text"], str):
            return None, "text must be a str"
        out = dict(item)
        out["payload"] = msgpack.packb({"text": out.pop("text")})
    prio = out.get("priority")
    if isinstance(prio, int) and not isinstance(prio, bool):
        if prio not in PRIORITY_LABELS:
            return None, f"unknown priority {prio!r}"
        out = dict(out) if out is item else out
        out["priority"] = PRIORITY_LABELS[prio]
    payload = out.get("payload")
    if isinstance(payload, (bytes, bytearray)) and len(payload) > max_payload:
        return None, f"payload of {len(payload)} bytes exceeds {max_payload}"
    return out, None


@dataclass
class _Request:
    sender: Any
    env: Any
    size: int
    producer: str = ""
    rejected: list[tuple[int, str]] = field(default_factory=list)
    slots: list[tuple[int, int]] = field(default_factory=list)  # (index in request, in batch)


class GroupCommit:
    """Enqueue requests waiting for one shared transaction, and the split of its result.

    ``add`` validates and returns the number of items pending; ``complete`` says whether the
    group can go now; ``take`` hands the batch to commit; ``split`` turns the store's result
    into one reply body per request.

    When to commit: a producer sends its next request only after the reply to this one. So a
    group is complete once every producer active in the last ``active_s`` (they will send
    again soon) has a request in it: nobody else is about to join, and waiting longer would
    only delay everyone. A lone producer is always complete (committed at once); producers
    that went quiet hold a group back only until the window timer of the caller fires.
    """

    def __init__(self, max_payload: int, active_s: float = 0.02):
        self.max_payload = max_payload
        self.active_s = active_s
        self.requests: list[_Request] = []
        self.items: list[dict] = []
        self.seen: dict[str, float] = {}  # producer -> time of its last request
        self.seq = 0  # which group is pending: one more at each take()
        self.commits = 0
        self.committed_items = 0
        self.largest = 0

    def __len__(self) -> int:
        return len(self.items)

    def complete(self, now: float) -> bool:
        """Has every recently active producer a request in this group? (Forgets the others.)"""
        pending = {r.producer for r in self.requests}
        for producer, at in list(self.seen.items()):
            if now - at > self.active_s:
                del self.seen[producer]
            elif producer not in pending:
                return False
        return True

    def add(self, sender: Any, env: Any, items: Sequence[Any], producer: str = "",
            now: float = 0.0) -> int:
        if producer:  # "": not tracked (group commit off)
            self.seen[producer] = now
        req = _Request(sender, env, len(items), producer)
        for i, item in enumerate(items):
            norm, reason = normalize(item, self.max_payload)
            if norm is None:
                req.rejected.append((i, reason))
            else:
                req.slots.append((i, len(self.items)))
                self.items.append(norm)
        self.requests.append(req)
        return len(self.items)

    def take(self) -> tuple[list[dict], list[_Request]]:
        items, requests = self.items, self.requests
        self.items, self.requests = [], []
        self.seq += 1
        return items, requests

    def split(self, result: EnqueueResult, requests: list[_Request]) -> list[tuple[Any, Any, dict]]:
        """(sender, env, reply body) per request. An id accepted once in the batch is a
        duplicate at every later position (the store's own rule)."""
        self.commits += 1
        self.committed_items += len(result.ids)
        self.largest = max(self.largest, len(result.ids))
        if len(requests) == 1 and not requests[0].rejected and not result.rejected:
            req = requests[0]  # every item of the batch is this request's, in order
            return [(req.sender, req.env, {"accepted": result.accepted, "rejected": [],
                                           "duplicates": result.duplicates, "ids": result.ids})]
        store_rejects = dict(result.rejected)
        accepted, first_seen = set(result.accepted), set()
        out = []
        for req in requests:
            body = {"accepted": [], "duplicates": [], "rejected": list(req.rejected),
                    "ids": [None] * req.size}
            for i, pos in req.slots:
                mid = result.ids[pos] if pos < len(result.ids) else None
                if mid is None:
                    body["rejected"].append((i, store_rejects.get(pos, "rejected")))
                    continue
                body["ids"][i] = mid
                if mid in accepted and mid not in first_seen:
                    first_seen.add(mid)
                    body["accepted"].append(mid)
                else:
                    body["duplicates"].append(mid)
            body["rejected"] = [list(r) for r in sorted(body["rejected"])]
            out.append((req.sender, req.env, body))
        return out


# -- request fields ------------------------------------------------------------------------------
def body_field(body: dict, name: str, kinds, default=None, *, check=None, what: str = ""):
    """A body field of the given type (bool is not an int), else PermanentError."""
    value = body.get(name, default)
    if value is default:
        return value
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in (
            kinds if isinstance(kinds, tuple) else (kinds,))) or (check and not check(value)):
        raise PermanentError(f"field {name!r} must be {what or kinds}, got {value!r:.80}")
    return value


def id_list(body: dict) -> list[str]:
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise PermanentError("field 'ids' must be a list of str")
    if len(ids) > MAX_ITEMS_PER_REQUEST:
        raise PermanentError(f"more than {MAX_ITEMS_PER_REQUEST} ids in one request")
    return ids


# -- leases in flight ---------------------------------------------------------------------------
class InFlight:
    """Leases this incarnation handed out: id -> (owner, created_at, expires_at, holder: the
    address (wire form) the message went to)."""

    def __init__(self) -> None:
        self.by_id: dict[str, tuple[str, float, float, str]] = {}
        self.count: Counter[str] = Counter()

    def add(self, owner: str, msgs: Sequence[Message], holder: str) -> None:
        by_id = self.by_id
        for m in msgs:
            old = by_id.get(m.id)
            if old is not None:
                self._less(old[0])
            by_id[m.id] = (owner, m.created_at, m.lease_expires_at or 0.0, holder)
        if msgs:
            self.count[owner] += len(msgs)

    def _less(self, owner: str) -> None:
        """One fewer lease for ``owner``; an owner with none left is forgotten (pull owners
        come and go with client addresses: over months they would pile up)."""
        if (left := self.count[owner] - 1) > 0:
            self.count[owner] = left
        else:
            self.count.pop(owner, None)

    def held_by(self, ids: Iterable[str], holder: str, owner: str | None
                ) -> tuple[dict[str | None, list[str]], list[str]]:
        """({owner: ids} of the ids the sender may settle, the ids it may not): those it was
        sent (``holder``), leased under the ``owner`` it names, or not leased by this
        incarnation (owner None: leased before a restart, or not at all); not those now
        leased to someone else."""
        out: dict[str | None, list[str]] = {}
        others: list[str] = []
        get = self.by_id.get
        for mid in ids:
            lease = get(mid)
            if lease is None:
                out.setdefault(None, []).append(mid)
            elif lease[3] == holder or lease[0] == owner:
                out.setdefault(lease[0], []).append(mid)
            else:
                others.append(mid)
        return out, others

    def pop(self, ids: Iterable[str]) -> list[float]:
        """Forget ids; returns the created_at of those known (for latency)."""
        created, pop = [], self.by_id.pop
        for mid in ids:
            lease = pop(mid, None)
            if lease is not None:
                self._less(lease[0])
                created.append(lease[1])
        return created

    def expire(self, now: float) -> Counter[str]:
        """Forget leases past their expiry; returns how many each owner lost."""
        lost: Counter[str] = Counter()
        for mid in [m for m, lease in self.by_id.items() if lease[2] < now]:
            owner = self.by_id.pop(mid)[0]
            self._less(owner)
            lost[owner] += 1
        return lost

    def forget_owner(self, owner: str) -> None:
        """Forget every lease of ``owner`` (its leases were released in the store)."""
        for mid in [m for m, lease in self.by_id.items() if lease[0] == owner]:
            del self.by_id[mid]
        self.count.pop(owner, None)

    def per_owner(self) -> dict[str, int]:
        return {o: n for o, n in sorted(self.count.items()) if n > 0}


# -- push subscriptions ---------------------------------------------------------------------------
@dataclass
class Subscription:
    id: str
    addr: Any                 # the subscriber's actor address (where deliveries go)
    addr_key: str             # its wire form
    recipient: str | None
    topic: str | None
    max_in_flight: int
    batch: int
    visibility_s: float
    idle_expiries: int = 0    # lease expiries since the last ack: a gone subscriber
    consumer: str | None = None  # the consumer's name (stable across its restarts)
    turn: int = 0             # rounds over several recipients (a topic): who goes first
    renewed_at: float = 0.0   # monotonic time of its last subscribe (see Subscriptions.expire)

    @property
    def owner(self) -> str:
        return f"sub:{self.id}"

    def matches(self, recipient: str) -> bool:
        if self.recipient is not None:
            return recipient == self.recipient
        return fnmatchcase(recipient, self.topic or "")

    def view(self, in_flight: int) -> dict:
        return {"sub": self.id, "addr": self.addr_key, "recipient": self.recipient,
                "topic": self.topic, "max_in_flight": self.max_in_flight,
                "in_flight": in_flight}


class Subscriptions:
    """Subscriptions by id; one per (subscriber address, recipient/topic): re-subscribing
    updates the limits and keeps the id."""

    def __init__(self, incarnation: str):
        self.incarnation = incarnation
        self.subs: dict[str, Subscription] = {}
        self._n = 0
        self._turn = 0

    def subscribe(self, addr: Any, addr_key: str, recipient: str | None, topic: str | None,
                  max_in_flight: int, batch: int, visibility_s: float,
                  consumer: str | None = None, *, now: float,
                  ) -> tuple[Subscription, list[Subscription]]:
        """(the subscription, the subscriptions it replaces). ``consumer`` names the consumer
        across restarts: its subscription from another (older) address to the same target is
        replaced, so a restarted consumer does not leave a dead one taking batches."""
        replaced = [s for s in self.subs.values() if consumer and s.consumer == consumer
                    and (s.recipient, s.topic) == (recipient, topic) and s.addr_key != addr_key]
        for old in replaced:
            del self.subs[old.id]
        for sub in self.subs.values():
            if (sub.addr_key, sub.recipient, sub.topic) == (addr_key, recipient, topic):
                sub.addr, sub.max_in_flight, sub.batch = addr, max_in_flight, batch
                sub.visibility_s, sub.consumer, sub.renewed_at = visibility_s, consumer, now
                return sub, replaced
        self._n += 1
        sub = Subscription(f"{self.incarnation}.{self._n}", addr, addr_key, recipient, topic,
                           max_in_flight, batch, visibility_s, consumer=consumer, renewed_at=now)
        self.subs[sub.id] = sub
        return sub, replaced

    def expire(self, now: float, ttl_s: float) -> list[Subscription]:
        """Drop and return the subscriptions not renewed within ``ttl_s``. Thespian drops a
        message to a dead actor silently and a quiet recipient sends nothing, so renewal is
        the only sign of life a subscriber that receives nothing can give."""
        gone = [s for s in self.subs.values() if now - s.renewed_at > ttl_s]
        for sub in gone:
            del self.subs[sub.id]
        return gone

    def remove(self, addr_key: str, sub_id: str | None = None) -> list[Subscription]:
        gone = [s for s in self.subs.values()
                if s.addr_key == addr_key and (sub_id is None or s.id == sub_id)]
        for sub in gone:
            del self.subs[sub.id]
        return gone

    def by_owner(self, owner: str) -> Subscription | None:
        return self.subs.get(owner[4:]) if owner.startswith("sub:") else None

    def takers(self, recipients: Iterable[str], room: Callable[[Subscription], int],
               routed: Callable[[str], bool]) -> dict[str, tuple[str, int, float]]:
        """recipient -> (owner, room, visibility_s) of a subscription with ``room`` for new
        messages of it (taken in turn; at most one recipient per subscription, none for the
        inbox sink's ``routed`` ones): the ``lease`` of ``QueueStore.enqueue``."""
        out: dict[str, tuple[str, int, float]] = {}
        subs = self.in_turn()
        for rcpt in recipients:
            if routed(rcpt):
                continue
            for sub in subs:
                if sub.matches(rcpt) and (n := room(sub)) > 0:
                    out[rcpt] = (sub.owner, n, sub.visibility_s)
                    subs.remove(sub)
                    break
        return out

    def wanted(self, recipients: Iterable[str], routed: Callable[[str], bool]) -> bool:
        """Would a delivery round have work for these recipients: one goes to the inbox sink
        (``routed``) or matches a subscription? (Pull consumers need no round.)"""
        subs = self.subs.values()
        return any(routed(r) or any(s.matches(r) for s in subs) for r in recipients)

    def in_turn(self) -> list[Subscription]:
        """All subscriptions, starting one further each call (round-robin between competing
        consumers of the same recipient)."""
        subs = list(self.subs.values())
        if not subs:
            return []
        self._turn = (self._turn + 1) % len(subs)
        return subs[self._turn:] + subs[:self._turn]


def allocate(ready: Mapping[str, int], limit: int, turn: int) -> list[tuple[str, int]]:
    """(recipient, how many to lease) for one round over several recipients with ``ready``
    messages each: shares as equal as their counts allow (water-filling), the first ones in
    the list rotated by ``turn`` getting the odd ones (pass a counter that grows by one each
    round: who goes first changes). One busy recipient cannot starve the others."""
    names = [r for r, n in ready.items() if n > 0]
    if not names or limit <= 0:
        return []
    k = turn % len(names)
    order = [*names[k:], *names[:k]]
    got = dict.fromkeys(order, 0)
    left, active = limit, order
    while left > 0 and active:
        share, odd = divmod(left, len(active))
        for i, rcpt in enumerate(active):
            n = min(share + (i < odd), ready[rcpt] - got[rcpt])
            got[rcpt] += n
            left -= n
        active = [r for r in active if got[r] < ready[r]]
    return [(r, n) for r, n in got.items() if n]


# -- routing ---------------------------------------------------------------------------------------
class InboxRoute:
    """Which recipients the built-in inbox sink delivers: every name in ``agents.names`` and
    every recipient matching ``inbox_pattern`` (those not in the names are unknown agents and
    are dead-lettered)."""

    CACHE_MAX = 10_000

    def __init__(self, enabled: bool, names: Iterable[str], pattern: str | None):
        self.enabled, self.names, self.pattern = enabled, frozenset(names), pattern or None
        self._known: dict[str, bool] = {}  # recipient -> routed (fnmatch is ~1 us a call)

    def __call__(self, recipient: str) -> bool:
        routed = self._known.get(recipient)
        if routed is None:
            routed = self.enabled and (recipient in self.names or (
                self.pattern is not None and fnmatchcase(recipient, self.pattern)))
            if len(self._known) >= self.CACHE_MAX:
                self._known.clear()
            self._known[recipient] = routed
        return routed


class AgentThrottle:
    """Caps on the messages one agent sends to agents (sender and recipient both agents, by
    ``is_agent``): at most ``per_minute`` / ``per_hour`` / ``per_day`` in a sliding window, and
    ``min_gap_s`` apart; 0 turns a cap off. Two agents answering each other in a loop would
    otherwise fill both inboxes as fast as they can write. A message over a cap is refused
    with the wait after which every cap admits it. Only stored messages count (a duplicate or
    a failed commit does not); the windows are kept in memory, so a restart of the queue starts
    them afresh."""

    WINDOWS = (("per_minute", 60.0), ("per_hour", 3600.0), ("per_day", 86_400.0))

    def __init__(self, is_agent: Callable[[str], bool], min_gap_s: float = 0.0,
                 per_minute: int = 0, per_hour: int = 0, per_day: int = 0):
        self.is_agent, self.min_gap_s = is_agent, min_gap_s
        caps = (per_minute, per_hour, per_day)
        self.caps = [(name, span, cap) for (name, span), cap in zip(self.WINDOWS, caps) if cap]
        self.span = max([span for _, span, _ in self.caps] + [min_gap_s])
        self.sent: dict[str, list[float]] = {}  # agent -> times of its stored agent messages
        self.refused = 0

    def admitter(self, now: float) -> tuple[Callable[[str, str], str | None], Counter[str]]:
        """For one transaction: ``admit(sender, recipient)`` (of a validated item) -> None or
        why not, counting the batch's earlier admitted items as sent ``now``; the Counter
        collects what it admitted, for :meth:`record` once committed."""
        admitted: Counter[str] = Counter()

        def admit(sender: str, recipient: str) -> str | None:
            if not (self.is_agent(sender) and self.is_agent(recipient)):
                return None
            why = self.refusal(sender, now, admitted[sender])
            if why is None:
                admitted[sender] += 1
            else:
                self.refused += 1
            return why
        return admit, admitted

    def refusal(self, sender: str, now: float, pending: int = 0) -> str | None:
        """Why one more message from ``sender`` (after ``pending`` more at ``now``) is over a
        cap, with the longest wait any cap needs, rounded up; None if every cap admits it."""
        times = self.sent.get(sender, [])
        del times[:bisect_right(times, now - self.span)]
        waits = []
        last = now if pending else times[-1] if times else None
        if last is not None and now - last < self.min_gap_s:
            what = (f"sent a message to an agent {now - last:.1f}s ago "
                    f"(agent_throttle.min_gap_s {self.min_gap_s:g})")
            waits.append((last + self.min_gap_s - now, what))
        for name, span, cap in self.caps:
            window = times[bisect_right(times, now - span):] + [now] * pending
            if len(window) >= cap:  # the oldest beyond cap - 1 must leave the window first
                what = (f"sent {len(window)} messages to agents in the last {span:g}s "
                        f"(agent_throttle.{name} {cap})")
                waits.append((window[len(window) - cap] + span - now, what))
        if not waits:
            return None
        wait, what = max(waits)
        return f"throttled: {sender} {what}; retry in {max(1, math.ceil(wait))}s"

    def record(self, admitted: Counter[str], now: float) -> None:
        for sender, n in admitted.items():
            self.sent.setdefault(sender, []).extend([now] * n)

    def forget_idle(self, now: float) -> None:
        """Drop agents with nothing sent within the longest window (names can be invented)."""
        for sender in [s for s, times in self.sent.items() if not times
                       or now - times[-1] > self.span]:
            del self.sent[sender]


# -- statistics ------------------------------------------------------------------------------------
RATE_KEYS = {"enqueue": "enqueued", "deliver": "leased", "ack": "acked", "nack": "nacked",
             "dead": "dead"}


class RateWindow:
    """Per-second rates over the last minute from samples of monotonically growing totals."""

    def __init__(self, window_s: float = RATE_WINDOW_S):
        self.window_s = window_s
        self.samples: deque[tuple[float, dict]] = deque()

    def sample(self, now: float, totals: dict) -> None:
        self.samples.append((now, {k: totals.get(v, 0) for k, v in RATE_KEYS.items()}))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def rates(self, now: float, totals: dict) -> dict[str, float]:
        if not self.samples:
            return dict.fromkeys(RATE_KEYS, 0.0)
        t0, first = self.samples[0]
        span = max(now - t0, 1.0)
        return {k: round((totals.get(v, 0) - first[k]) / span, 3) for k, v in RATE_KEYS.items()}


class LatencyWindow:
    """Enqueue -> ack latencies: a bounded reservoir of the most recent samples in the window."""

    def __init__(self, size: int = LATENCY_SAMPLES, window_s: float = RATE_WINDOW_S):
        self.samples: deque[tuple[float, float]] = deque(maxlen=size)
        self.window_s = window_s

    def add(self, now: float, created: Iterable[float]) -> None:
        self.samples.extend((now, max(now - c, 0.0)) for c in created)

    def percentiles(self, now: float) -> dict:
        values = sorted(v for t, v in self.samples if now - t <= self.window_s)
        if not values:
            return {"p50": None, "p95": None, "p99": None, "samples": 0}

        def pct(p: float) -> float:
            return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 3)
        return {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "samples": len(values)}


def health(stats: dict, *, max_depth: int, max_age_s: float, storage: StorageState,
           fail_after: int) -> tuple[str, str]:
    """(ok|degraded|failing, detail) from a stats snapshot and the storage state."""
    depth = stats["depth"]
    summary = (f"ready {depth['ready']}, leased {depth['leased']}, dead {depth['dead']}, "
               f"oldest {stats['oldest_ready_age_s']:.1f}s")
    if storage.errors >= fail_after:
        return "failing", (f"{storage.problem}: {storage.last_error} ({storage.errors} storage "
                           f"errors in a row; {summary})")
    problems = []
    if not storage.writable:
        problems.append(f"{storage.problem}: {storage.last_error or 'database not writable'}")
    if depth["ready"] > max_depth:
        problems.append(f"depth {depth['ready']} > {max_depth}")
    if stats["oldest_ready_age_s"] > max_age_s:
        problems.append(f"oldest ready {stats['oldest_ready_age_s']:.0f}s > {max_age_s:g}s")
    return ("degraded", "; ".join(problems) + f" ({summary})") if problems else ("ok", summary)


# -- storage outages -------------------------------------------------------------------------------
NOT_COMMITTED = "not committed, retry with the same ids: "  # + why: an enqueue's storage error
MIN_FREE_BYTES = 1 << 20  # free space beside the database that ends a disk-full outage
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, or SQLite's SQLITE_FULL ("database or disk is full").

    >>> is_disk_full(sqlite3.OperationalError("database or disk is full"))
    True
    >>> is_disk_full(sqlite3.OperationalError("disk I/O error"))
    False
    """
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    return isinstance(exc, sqlite3.Error) and (
        getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(exc))


class StorageState:
    """Whether the queue's database can be written: an outage starts at the first storage error
    (any call of the store: a commit, a read, the write probe) and ends only when the write
    probe succeeds, never with a write that happened to succeed in between. On a full disk
    SQLite still fits a small commit into space its files hold already (a failed commit's WAL
    frames are overwritten by the next one) while the next larger commit fails, so "a write
    worked" would end and restart the outage over and over. So the probe that ends a disk-full
    outage also asks for MIN_FREE_BYTES of free space: it fails until space was really freed.
    (A full disk on which SQLite still has room, in its WAL and free pages, is no outage:
    nothing fails there.)

        >>> s = StorageState()
        >>> s.failed(OSError(28, "No space left on device"), now=10.0)  # the outage starts
        True
        >>> s.failed(sqlite3.OperationalError("database or disk is full"), now=11.0)
        False
        >>> s.writable, s.errors, s.problem
        (False, 2, 'disk full')
        >>> s.recovered(now=15.0), s.writable, s.errors
        (5.0, True, 0)
    """

    def __init__(self) -> None:
        self.errors = 0        # storage errors since the outage began (0: no outage)
        self.last_error = ""
        self.problem = ""      # "disk full" | "storage error"
        self.since: float | None = None  # when the outage began

    @property
    def writable(self) -> bool:
        return self.since is None

    def failed(self, exc: BaseException, now: float) -> bool:
        """Record a storage error; True if it starts an outage (alert once, then)."""
        self.errors += 1
        full = is_disk_full(exc)
        if full or self.problem != "disk full":  # a full disk stays the named cause
            self.problem = "disk full" if full else "storage error"
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        if self.since is None:
            self.since = now
            return True
        return False

    def recovered(self, now: float) -> float | None:
        """The write probe succeeded: the outage (if any) is over; returns how long it lasted."""
        since, self.since, self.errors, self.problem = self.since, None, 0, ""
        return None if since is None else max(now - since, 0.0)

    def view(self) -> dict:
        return {"writable": self.writable, "problem": self.problem, "errors": self.errors,
                "last_error": self.last_error, "since": self.since}


class QuietBytes(bytes):
    """Envelope bytes with a constant-time ``str()``, for what the queue sends.

    Thespian formats every message it sends for DEBUG log lines (``thesplog("Attempting intent
    %s", intent.identify())``: the argument is built even when the line is dropped), i.e.
    ``str(message)`` two or three times per send: ~0.6 ms each for a 170 KB delivery of 500
    messages. It pickles as plain bytes: receivers see ordinary bytes.
    """

    __slots__ = ()

    def __str__(self) -> str:
        return f"<{len(self)} bytes>"

    __repr__ = __str__

    def __reduce__(self):
        return bytes, (bytes(self),)


def wire_message(m: Message) -> dict:
    """A leased/dead message as it travels in ``queue.deliver`` / lease / dlq replies."""
    out = {"id": m.id, "recipient": m.recipient, "sender": m.sender, "type": m.type,
           "priority": m.priority, "payload": m.payload, "headers": m.headers,
           "created_at": m.created_at, "attempts": m.attempts, "max_attempts": m.max_attempts}
    if m.state == "dead":
        out.update(dead_at=m.dead_at, last_error=m.last_error)
    return out
