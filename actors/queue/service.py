"""Queue service: the persistent, at-least-once message queue of the swarm (a thin actor over
:class:`~actors.queue.store.QueueStore`, :class:`~actors.queue.inbox.InboxSink` and the pure
bookkeeping in :mod:`actors.queue.core`).

Producers send ``queue.enqueue`` (a batch of items); each is answered only after its commit
(``ok``: accepted, duplicates, rejected [[index, reason]], ids). Group commit
(:class:`core.GroupCommit`), with ``synchronous`` FULL or EXTRA (one fsync per commit):
requests are collected until every producer active in the last moments has one in the group
(each waits for its reply before sending again, so nobody else is about to join),
``batch_max`` items are pending, or ``group_commit_ms`` has passed since the group's first
request; then they are committed in ONE transaction. A lone producer is committed at once.
With NORMAL (no fsync per commit) or ``group_commit_ms: 0`` every request is committed at
once. An item from an agent to an agent over its ``agent_throttle`` caps is rejected with the
wait (:class:`core.AgentThrottle`). Delivery:
a subscriber with room for a recipient that has nothing ready gets the new messages in the
same transaction, stored already leased to it, and their ``queue.deliver`` right after the
replies (nothing waits, nothing is read back); everything else runs on a short "pump" wake-up,
scheduled only when a round has something to deliver.

Consumers either pull (``queue.lease`` for a recipient or a topic, then ``queue.ack`` /
``queue.nack`` by ids; only the holder of a lease settles it) or subscribe
(``queue.subscribe`` with ``recipient`` or ``topic``, a glob over recipient names, and
``max_in_flight``): the queue pushes ``queue.deliver`` batches to the
subscriber's address, never more than ``max_in_flight`` unacked, refills on each ack, and
redelivers what is not acked within the lease (``visibility_s``, default ``lease_s``).
Competing subscribers of one recipient are served round-robin.

**Subscriptions live in memory only.** After a queue restart the subscriber must subscribe
again: :class:`actors.queue.client.QueueConsumer` re-subscribes on its tick (subscribing is
idempotent). Leases held by the old incarnation's subscribers stay valid until they expire
(an ack still counts). A subscription whose leases expire 3 times in a row without any ack is
dropped as gone.

Inbox sink: recipients in ``agents.names`` or matching ``inbox_pattern`` are delivered by the
queue itself to ``WORKSPACE/AGENT/inbox/ID.md`` (exactly-once effect: a file named by id is
never written twice), acked after the files are durable; an unknown agent is dead-lettered at
once, a disk error is retried with backoff. Each round is sized to ~0.05 s of writing and
rounds are separated by a short wake-up gap, so health pings and enqueues interleave. At start
the previous incarnation's inbox leases are released and its temp files swept.
"""
from __future__ import annotations

import datetime
import heapq
import os
import sqlite3
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from operator import itemgetter
from pathlib import Path

from actors.queue import core
from actors.queue.inbox import InboxSink
from actors.queue.model import MAX_RECIPIENT_LEN, PURGE_LIMIT, QueueRepository, fitting
from actors.queue.store import QueueStore
from system import protocol
from system.errors import ConfigError, PermanentError, TransientError, classify
from system.service import ServiceActor, handles

PUMP_DELAY_S = 0.005      # enqueue -> delivery round: batches what arrives meanwhile
INBOX_BUDGET_S = 0.05     # target duration of one inbox round
# Gap between back-to-back inbox rounds. Never 0: Thespian's TCP loop does not read its
# sockets while a wakeup is already due, so chained 0 s wakeups starve every incoming message.
ROUND_GAP_S = 0.002
INBOX_OWNER = "inbox"
# Group commit shares fsyncs: only these levels fsync every commit. Without one a WAL commit
# (~0.1 ms) is cheaper than waiting for the other producers (~0.3 ms): bench/queue.py, part 6.
GROUP_COMMIT_SYNC = ("FULL", "EXTRA")
QUIET_BYTES_MIN = 2048    # envelopes above this size are sent as core.QuietBytes
# Messages per delivery, lease or dlq reply stop at this many bytes: half of what a receiver
# decodes (protocol.MAX_MESSAGE_BYTES), whatever batch sizes and payload sizes are configured.
REPLY_BYTES = protocol.MAX_MESSAGE_BYTES // 2
_STORAGE_ERRORS = (sqlite3.Error, OSError, TransientError)
_PURGE_STATES = ("dead", "ready", "leased", "all")
MAX_OFFSET = 2**63 - 1  # SQLite's largest integer


_arg = core.body_field
_SECONDS = {"check": lambda v: 0 < v <= 86_400, "what": "seconds in (0, 86400]"}
# Recipients, topics (globs: compiling one is quadratic in its length), owners and consumer
# names: each is kept, matched and listed, so each is bounded like a recipient.
_NAME = {"check": lambda s: 0 < len(s) <= MAX_RECIPIENT_LEN,
         "what": f"a name of 1..{MAX_RECIPIENT_LEN} characters"}
STATS_LIST_MAX = 1_000  # entries per list in a stats reply (the largest; the total is given)


def _largest(counts: dict[str, int]) -> dict[str, int]:
    """The STATS_LIST_MAX largest entries of ``counts``, by name (a reply must stay small)."""
    if len(counts) <= STATS_LIST_MAX:
        return counts
    return dict(sorted(heapq.nlargest(STATS_LIST_MAX, counts.items(), key=itemgetter(1))))


def _after(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=max(0.0, seconds))


class QueueService(ServiceActor):
    tick_s = 1.0

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.store: QueueRepository | None = None
        self.sink: InboxSink | None = None
        self.incarnation = os.urandom(3).hex()
        self.subs = core.Subscriptions(self.incarnation)
        self.inflight = core.InFlight()
        self.rates = core.RateWindow()
        self.latency = core.LatencyWindow()
        self.disk = core.StorageState()  # storage outages: health, the alert, the probe
        self.last_probe = 0.0
        self.pump_timer = False
        self.flush_timer = -1  # the group (GroupCommit.seq) whose window timer is running
        self.inbox_turn = self.pull_turn = 0  # who goes first in a round over recipients
        self.last_purge = time.monotonic()
        self.purge_more, self.dead_expired = False, 0  # a retention backlog; its dead count
        self.inbox_cost_s = 0.001  # EWMA of one inbox file write
        self.inbox_done = self.inbox_failed = 0
        self.throttle = core.AgentThrottle(lambda name: False)  # configured in on_start

    # -- lifecycle -------------------------------------------------------------------------
    def on_start(self) -> None:
        cfg = self.service_config()
        self.batch_max = int(cfg.get("batch_max", 500))
        self.lease_s = float(cfg.get("lease_s", 30.0))
        sync = str(cfg.get("synchronous", "NORMAL"))
        self.group_commit_s = float(cfg.get("group_commit_ms", 2)) / 1000 \
            if sync.upper() in GROUP_COMMIT_SYNC else 0.0
        self.max_depth = int(cfg.get("max_depth_warn", 100_000))
        self.max_age_s = float(cfg.get("max_age_warn_s", 600))
        self.retention_s = float(cfg.get("acked_retention_s", 86_400))
        self.dead_retention_s = float(cfg.get("dead_retention_s", 30 * 86_400))
        self.purge_every_s = float(cfg.get("purge_interval_s", 60))
        self.probe_every_s = float(cfg.get("write_probe_s", 10))
        self.fail_after = int(cfg.get("storage_errors_failing", 3))
        self.idle_expiries_max = int(cfg.get("subscriber_idle_expiries", 3))
        self.sub_ttl_s = float(cfg.get("subscription_ttl_s", 60))
        names = list(self.config.get("agents", {}).get("names") or [])
        caps = cfg.get("agent_throttle") or {}
        self.throttle = core.AgentThrottle(
            core.InboxRoute(True, names, cfg.get("inbox_pattern", "Agent-*")),
            float(caps.get("min_gap_s", 0)), *(int(caps.get(name, 0))
                                                for name, _ in core.AgentThrottle.WINDOWS))
        self.group = core.GroupCommit(int(cfg.get("max_payload_bytes", 1 << 20)),
                                      active_s=max(0.02, 10 * self.group_commit_s))
        retry_base = float(cfg.get("retry_base_s", 1.0))
        self.tick_s = min(1.0, max(0.05, min(self.lease_s, retry_base) / 2))
        data_dir = Path(self.config.get("system", {}).get("data_dir", "."))
        self.db_path = Path(cfg.get("db_path") or data_dir / "queue.db")
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            self.store = QueueStore(
                self.db_path, synchronous=sync,
                default_max_attempts=int(cfg.get("max_attempts", 5)), backoff_base_s=retry_base,
                backoff_max_s=float(cfg.get("retry_max_s", 300.0)),
                max_recipients=int(cfg.get("max_recipients", 10_000)))
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"cannot open the queue database {self.db_path}: {exc}") from exc
        agents = self.config.get("agents", {})
        enabled = bool(cfg.get("inbox_enabled", True))
        self.route = core.InboxRoute(enabled, names, cfg.get("inbox_pattern", "Agent-*"))
        released = swept = 0
        if enabled:
            try:
                self.sink = InboxSink(agents.get("workspace_root", "./agent_workspaces"), names)
            except ValueError as exc:
                self.on_stop()
                raise ConfigError(f"agents.names: {exc}") from exc
            swept = self.sink.sweep_temp()
            try:  # a write: on a full disk it fails, and a start must not (no restart loop)
                released = self._db(self.store.release_leases, INBOX_OWNER)
            except _STORAGE_ERRORS as exc:  # they come back at their lease expiry instead
                self.error_stats.record(classify(exc), str(exc))
                released = 0
        stats = self.store.stats()
        self.rates.sample(time.time(), stats["totals"])
        self.log("info", "queue_open", f"queue {self.db_path}: {stats['depth']['total']} "
                 f"messages", depth=stats["depth"], released=released, swept_temp=swept,
                 incarnation=self.incarnation)
        if stats["depth"]["ready"]:
            self._schedule_pump()

    def on_stop(self) -> None:
        if self.store is not None:
            self._flush()
            self.store.close()
            self.store = None

    def health(self) -> tuple[str, str]:
        if self.store is None:
            return "failing", "the queue database is not open"
        try:
            stats = self._db(self.store.stats)
        except _STORAGE_ERRORS:
            stats = None
        if stats is None:
            return "failing", f"{self.disk.problem}: {self.disk.last_error}"
        return core.health(stats, max_depth=self.max_depth, max_age_s=self.max_age_s,
                           storage=self.disk, fail_after=self.fail_after)

    def send(self, target, message) -> None:
        """Every send of the queue: large envelopes as :class:`core.QuietBytes`."""
        if message.__class__ is bytes and len(message) > QUIET_BYTES_MIN:
            message = core.QuietBytes(message)
        super().send(target, message)

    def _db(self, fn, *args, **kw):
        """Call the store. A storage error starts an outage (:class:`core.StorageState`), or
        counts towards health ``failing`` in one; the first of an outage is logged and raises
        the one alert (key ``NAME:storage``). Only a good write probe ends an outage (ticks
        probe at once while it lasts). The caller answers, and records the error in
        ``error_stats`` (the base does for what escapes a handler or a timer)."""
        try:
            return fn(*args, **kw)
        except _STORAGE_ERRORS as exc:
            self.last_probe = 0.0
            if self.disk.failed(exc, time.time()):
                self._outage_began()
            raise

    def _outage_began(self) -> None:
        what, error = self.disk.problem, self.disk.last_error
        self.log("error", "not_writable", f"the queue database {self.db_path} cannot be "
                 f"written ({what}): {error}", problem=what)
        self.alert("error", f"queue database {what}: {self.db_path}", details=(
            f"{error}. Enqueues are refused with error 'storage' (not committed: producers "
            f"retry with the same ids); delivery, lease expiry and retention wait; nothing "
            f"stored is lost. Clears itself once the database can be written again"
            + (f" with {core.MIN_FREE_BYTES >> 20} MiB free" if what == "disk full" else "")
            + "."), key=f"{self.name}:storage")

    # -- timers -----------------------------------------------------------------------------
    def on_wakeup(self, payload) -> None:
        if isinstance(payload, tuple) and payload[0] == "flush":
            if payload[1] == self.group.seq:  # else that group went already: not this one
                self._flush()
        elif payload == "pump":
            self.pump_timer = False
            try:
                self._pump()
            except Exception:
                self._schedule_pump(0.5)  # try again soon; the base records and logs the error
                raise

    def _schedule_pump(self, delay: float = PUMP_DELAY_S) -> None:
        if not self.pump_timer:
            self.pump_timer = True
            self.wakeupAfter(_after(delay), payload="pump")

    def on_tick(self) -> None:
        if self.store is None:
            return
        now = time.time()
        self.rates.sample(now, self.store.totals())
        if not self.disk.writable or time.monotonic() - self.last_probe >= self.probe_every_s:
            self._probe_write()  # every tick while it fails: recovery shows within a second
        if not self.disk.writable:
            return  # expiries, purge and delivery all write: they wait for a good probe
        self._db(self.store.expire_leases)
        for owner in self.inflight.expire(now):
            sub = self.subs.by_owner(owner)
            if sub is not None:
                sub.idle_expiries += 1
                if sub.idle_expiries >= self.idle_expiries_max:
                    self.subs.remove(sub.addr_key, sub.id)
                    self.log("warning", "subscriber_gone", f"dropped subscription {sub.id} of "
                             f"{sub.addr_key}: {sub.idle_expiries} lease expiries without an ack")
        for sub in self.subs.expire(time.monotonic(), self.sub_ttl_s):
            self.log("warning", "subscriber_gone", f"dropped subscription {sub.id} of "
                     f"{sub.addr_key}: not renewed for {self.sub_ttl_s:g}s; released "
                     f"{self._release(sub)} leases")
        if self.purge_more or time.monotonic() - self.last_purge >= self.purge_every_s:
            self._purge_retained()
        self._pump()

    def _release(self, sub: core.Subscription) -> int | str:
        """Release the leases of a dropped subscription, so they go out again now."""
        self.inflight.forget_owner(sub.owner)
        try:
            return self._db(self.store.release_leases, sub.owner)
        except _STORAGE_ERRORS as exc:
            self.error_stats.record(classify(exc), str(exc))
            return "none of its"  # they come back at their lease expiry instead

    def _purge_retained(self) -> None:
        """Retention deletes, PURGE_LIMIT rows each: a backlog is worked off one batch per
        tick (health pings are answered in between), then every purge_interval_s again."""
        self.last_purge = time.monotonic()
        self.throttle.forget_idle(time.monotonic())
        acked = self._db(self.store.purge_acked, self.retention_s, PURGE_LIMIT)
        dead = self._db(self.store.purge_dead, self.dead_retention_s, PURGE_LIMIT) \
            if self.dead_retention_s > 0 else 0
        self.purge_more, self.dead_expired = PURGE_LIMIT in (acked, dead), self.dead_expired + dead
        if self.dead_expired and not self.purge_more:
            self.log("info", "dead_letters_expired", f"deleted {self.dead_expired} dead letters "
                     f"older than dead_retention_s ({self.dead_retention_s / 86_400:g} days)")
            self.dead_expired = 0

    def _probe_write(self) -> None:
        """An empty write transaction: the only way an outage ends. Ending a disk-full one
        also needs core.MIN_FREE_BYTES free (SQLite can fit the probe into space its WAL
        holds already while the next real commit fails). A failure that starts an outage is
        recorded in error_stats once; those of the ticks after it count towards ``failing``."""
        self.last_probe = time.monotonic()
        was = self.disk.writable
        need = core.MIN_FREE_BYTES if self.disk.problem == "disk full" else 0
        try:
            self._db(self.store.probe_write, need)
        except _STORAGE_ERRORS as exc:
            if was:
                self.error_stats.record(classify(exc), str(exc))
            return
        lasted = self.disk.recovered(time.time())
        if lasted is not None:
            self.log("info", "writable", f"the queue database {self.db_path} is writable "
                     f"again after {lasted:.0f}s")

    # -- producers --------------------------------------------------------------------------
    @handles(protocol.QUEUE_ENQUEUE)
    def _enqueue(self, env, sender) -> None:
        items = env.b["items"]
        if len(items) > core.MAX_ITEMS_PER_REQUEST:
            raise PermanentError(f"more than {core.MAX_ITEMS_PER_REQUEST} items in one request")
        now = time.monotonic()
        producer = protocol.address_to_wire(sender) if self.group_commit_s > 0 else ""
        pending = self.group.add(sender, env, items, producer, now)
        if self.group_commit_s <= 0 or pending >= self.batch_max or self.group.complete(now):
            self._flush()  # group commit off, full, or every active producer is in
        elif self.flush_timer != self.group.seq:  # the window of this group starts
            self.flush_timer = self.group.seq
            self.wakeupAfter(_after(self.group_commit_s), payload=("flush", self.group.seq))

    def _flush(self) -> None:
        items, requests = self.group.take()
        if not requests:
            return
        recipients = {r for i in items if isinstance(r := i.get("recipient"), str)}
        takers = self.subs.takers(recipients, self._room, self.route) if self.subs.subs else None
        now = time.monotonic()
        admit, admitted = self.throttle.admitter(now) if self.throttle.span else (None, None)
        try:
            result = self._db(self.store.enqueue, items, takers, admit)
            if admitted:  # counted once stored: not a duplicate, not a failed commit
                self.throttle.record(admitted, now)
        except Exception as exc:  # noqa: BLE001 - every producer must get an answer
            self.error_stats.record(classify(exc), str(exc))
            why = f"{self.disk.problem}: {exc}" if isinstance(exc, _STORAGE_ERRORS) else str(exc)
            self.log("error", "enqueue_failed", f"{len(items)} items not committed: {why}")
            for req in requests:
                self.reply_error(req.sender, req.env, "storage", core.NOT_COMMITTED + why)
            return
        for sender, env, body in self.group.split(result, requests):
            self.reply(sender, env, protocol.OK, body)
        by_owner: dict[str, list] = {}
        for m in result.leased:  # stored already leased to a subscriber: deliver at once
            by_owner.setdefault(m.lease_owner, []).append(m)
        for owner, msgs in by_owner.items():
            self._deliver(self.subs.by_owner(owner), msgs)
        if len(result.accepted) > len(result.leased) and not self.pump_timer \
                and self.subs.wanted(recipients, self.route):
            self._schedule_pump()  # a wakeup costs ~0.1 ms: only when a round has work

    # -- delivery ---------------------------------------------------------------------------
    def _pump(self) -> None:
        if not self.disk.writable:
            return  # a lease could not be recorded; the tick's write probe resumes delivery
        for sub in self.subs.in_turn():
            self._push(sub)
        if self.sink is not None and self._inbox_round():
            self._schedule_pump(ROUND_GAP_S)

    def _ready(self, wanted: Callable[[str], bool]) -> dict[str, int]:
        """Ready counts of the recipients ``wanted`` accepts."""
        return {r: n for r, n in self.store.ready_counts().items() if wanted(r)}

    def _room(self, sub: core.Subscription) -> int:
        return min(sub.max_in_flight - self.inflight.count[sub.owner], sub.batch)

    def _push(self, sub: core.Subscription) -> None:
        room = self._room(sub)
        if room <= 0:
            return
        if sub.recipient is not None:
            wants = [(sub.recipient, room)]
        else:
            sub.turn += 1
            wants = core.allocate(self._ready(lambda r: sub.matches(r) and not self.route(r)),
                                  room, sub.turn)
        msgs = self._db(self.store.lease_each, wants, sub.owner, sub.visibility_s)
        if msgs:
            self._deliver(sub, msgs)

    def _deliver(self, sub: core.Subscription, msgs: list) -> None:
        """``queue.deliver`` the messages to the subscriber, in as many envelopes as
        REPLY_BYTES requires."""
        self.inflight.add(sub.owner, msgs, sub.addr_key)
        while msgs:
            n = fitting(msgs, REPLY_BYTES)
            self.send(sub.addr, protocol.QUEUE_DELIVER.encode(
                {"sub": sub.id, "incarnation": self.incarnation,
                 "messages": [core.wire_message(m) for m in msgs[:n]]}))
            msgs = msgs[n:]

    def _inbox_round(self) -> bool:
        """Deliver one batch to inbox files; True if more may be ready now."""
        agents = self._ready(self.route)
        if not agents:
            return False
        limit = max(16, min(self.batch_max, int(INBOX_BUDGET_S / self.inbox_cost_s)))
        self.inbox_turn += 1
        msgs = self._db(self.store.lease_each, core.allocate(agents, limit, self.inbox_turn),
                        INBOX_OWNER, self.lease_s)
        if not msgs:
            return False
        t0 = time.perf_counter()
        delivered, failures = self.sink.deliver_batch(msgs)
        per_msg = (time.perf_counter() - t0) / len(msgs)
        self.inbox_cost_s = 0.7 * self.inbox_cost_s + 0.3 * max(per_msg, 1e-5)
        if delivered:
            self._db(self.store.ack, delivered, INBOX_OWNER)
            done = set(delivered)
            self.latency.add(time.time(), [m.created_at for m in msgs if m.id in done])
        by_error: dict[tuple[bool, str], list[str]] = {}
        for mid, exc in failures:
            by_error.setdefault((isinstance(exc, TransientError), str(exc)), []).append(mid)
        for (retry, text), ids in by_error.items():
            res = self._db(self.store.nack, ids, text, INBOX_OWNER, retry=retry)
            self.log("warning", "inbox_failed", f"{len(ids)} inbox deliveries failed: {text}",
                     retried=len(res.retried), dead=len(res.dead), ids=ids[:10])
        self.inbox_done += len(delivered)
        self.inbox_failed += len(failures)
        return len(msgs) >= limit

    # -- consumers --------------------------------------------------------------------------
    @handles(protocol.QUEUE_LEASE)
    def _lease(self, env, sender) -> None:
        b = env.b
        recipient = _arg(b, "recipient", str, None, **_NAME)
        topic = _arg(b, "topic", str, None, **_NAME)
        if bool(recipient) == bool(topic):
            raise PermanentError("queue.lease needs exactly one of recipient or topic")
        most = 10 * self.batch_max
        limit = _arg(b, "limit", int, self.batch_max, check=lambda n: 1 <= n <= most,
                     what=f"an int in 1..{most}")
        vis = float(_arg(b, "visibility_s", (int, float), self.lease_s, **_SECONDS))
        key = protocol.address_to_wire(sender)
        owner = _arg(b, "owner", str, None, **_NAME) or "pull:" + key
        if recipient:
            wants = [(recipient, limit)]
        else:
            self.pull_turn += 1
            wants = core.allocate(self._ready(lambda r: fnmatchcase(r, topic)
                                              and not self.route(r)), limit, self.pull_turn)
        msgs = self._db(self.store.lease_each, wants, owner, vis, REPLY_BYTES)
        self.inflight.add(owner, msgs, key)
        self.reply(sender, env, protocol.OK, {"messages": [core.wire_message(m) for m in msgs]})

    def _settle(self, env, sender, action) -> tuple[list, list[str], list[float],
                                                  list[core.Subscription]]:
        """Apply ack/nack to the ids the sender holds (:meth:`core.InFlight.held_by`): a late
        ack must not delete a message another consumer is still working on. Ids this
        incarnation did not lease (leased before a restart) go to the store with the named
        owner, else with any. Returns (results, ids not held, created_at of the settled,
        subscriptions with room again)."""
        hint = _arg(env.b, "owner", str, None, **_NAME)
        groups, not_held = self.inflight.held_by(core.id_list(env.b),
                                                 protocol.address_to_wire(sender), hint)
        subs, out, settled = [], [], []
        for owner, group in groups.items():
            out.append(self._db(action, group, owner if owner is not None else hint))
            settled += group
            if (sub := self.subs.by_owner(owner or "")) is not None:
                sub.idle_expiries = 0
                subs.append(sub)
        return out, not_held, self.inflight.pop(settled), subs

    def _settled(self, env, sender, body: dict, not_held: list[str],
                 subs: list[core.Subscription]) -> None:
        if not_held:
            body["not_held"] = not_held
        if not _arg(env.b, "quiet", bool, False):
            self.reply(sender, env, protocol.OK, body)
        self._refill(subs)

    def _refill(self, subs: list[core.Subscription]) -> None:
        """Push to subscribers with room again, after the request was answered: a failure here
        is recorded and left to the pump; it must not answer the request a second time."""
        if not self.disk.writable:
            return  # the write probe resumes delivery
        try:
            for sub in subs:
                self._push(sub)
        except Exception as exc:  # noqa: BLE001
            self.error_stats.record(classify(exc), str(exc))
            self.log("error", "push_failed", f"{type(exc).__name__}: {exc}")
            self._schedule_pump(0.5)

    @handles(protocol.QUEUE_ACK)
    def _ack(self, env, sender) -> None:
        out, not_held, created, subs = self._settle(env, sender, self.store.ack)
        self.latency.add(time.time(), created)
        self._settled(env, sender, {"acked": sum(out)}, not_held, subs)

    @handles(protocol.QUEUE_NACK)
    def _nack(self, env, sender) -> None:
        error = _arg(env.b, "error", str, "nacked")[:1000]
        retry = _arg(env.b, "retry", bool, True)
        out, not_held, _, subs = self._settle(
            env, sender, lambda ids, owner: self.store.nack(ids, error, owner, retry=retry))
        self._settled(env, sender, {"retried": [i for r in out for i in r.retried],
                                    "dead": [i for r in out for i in r.dead]}, not_held, subs)

    @handles(protocol.QUEUE_SUBSCRIBE)
    def _subscribe(self, env, sender) -> None:
        b = env.b
        recipient = _arg(b, "recipient", str, None, **_NAME)
        topic = _arg(b, "topic", str, None, **_NAME)
        if bool(recipient) == bool(topic):
            raise PermanentError("queue.subscribe needs exactly one of recipient or topic")
        if recipient and self.route(recipient):
            raise PermanentError(f"{recipient!r} is delivered by the inbox sink")
        limit = _arg(b, "max_in_flight", int, 100, check=lambda n: 1 <= n <= 100_000,
                     what="an int in 1..100000")
        batch = _arg(b, "batch", int, self.batch_max, check=lambda n: 1 <= n <= 100_000,
                     what="an int in 1..100000")
        vis = _arg(b, "visibility_s", (int, float), self.lease_s, **_SECONDS)
        consumer = _arg(b, "consumer", str, None, **_NAME)
        sub, replaced = self.subs.subscribe(sender, protocol.address_to_wire(sender), recipient,
                                            topic, limit, min(batch, self.batch_max), float(vis),
                                            consumer, now=time.monotonic())
        for old in replaced:  # that consumer restarted: what its old self held goes out again
            self.log("info", "subscriber_replaced", f"{consumer} subscribed again from a new "
                     f"address: dropped subscription {old.id}, released "
                     f"{self._release(old)} leases")
        self.reply(sender, env, protocol.OK, {"sub": sub.id, "incarnation": self.incarnation,
                                              "max_in_flight": limit, "ttl_s": self.sub_ttl_s})
        self._refill([sub])

    @handles(protocol.QUEUE_UNSUBSCRIBE)
    def _unsubscribe(self, env, sender) -> None:
        gone = self.subs.remove(protocol.address_to_wire(sender), _arg(env.b, "sub", str, None))
        self.reply(sender, env, protocol.OK, {"removed": [s.id for s in gone]})

    # -- operators --------------------------------------------------------------------------
    @handles(protocol.QUEUE_STATS)
    def _stats(self, env, sender) -> None:
        stats = self._db(self.store.stats)
        now = time.time()
        status, detail = self.health()
        per_owner = self.inflight.per_owner()
        ready, subs = stats["ready_by_recipient"], list(self.subs.subs.values())
        stats.update(
            rates=self.rates.rates(now, stats["totals"]),
            latency_ms=self.latency.percentiles(now),
            ready_by_recipient=_largest(ready), recipients_ready=len(ready),
            in_flight=_largest(per_owner), in_flight_owners=len(per_owner),
            subscriptions=[s.view(per_owner.get(s.owner, 0)) for s in subs[:STATS_LIST_MAX]],
            subscription_count=len(subs),
            inbox={"enabled": self.sink is not None, "delivered": self.inbox_done,
                   "failed": self.inbox_failed, "ms_per_file": round(self.inbox_cost_s * 1e3, 3)},
            group_commit={"window_ms": self.group_commit_s * 1000, "commits": self.group.commits,
                          "items": self.group.committed_items, "largest": self.group.largest},
            throttled=self.throttle.refused,
            health={"status": status, "detail": detail}, storage_errors=self.disk.errors,
            storage=self.disk.view(),
            incarnation=self.incarnation, db_path=str(self.db_path))
        self.reply(sender, env, protocol.OK, stats)

    @handles(protocol.QUEUE_DLQ)
    def _dlq(self, env, sender) -> None:
        limit = _arg(env.b, "limit", int, 100, check=lambda n: 1 <= n <= 10_000,
                     what="an int in 1..10000")
        offset = _arg(env.b, "offset", int, 0, check=lambda n: 0 <= n <= MAX_OFFSET,
                      what=f"an int in 0..{MAX_OFFSET}")
        msgs = self._db(self.store.dead_letters, limit, offset)
        msgs = msgs[:fitting(msgs, REPLY_BYTES)]  # the rest: page on with offset
        self.reply(sender, env, protocol.OK, {
            "messages": [core.wire_message(m) for m in msgs],
            "total": self.store.stats()["depth"]["dead"]})

    @handles(protocol.QUEUE_REQUEUE)
    def _requeue(self, env, sender) -> None:
        if _arg(env.b, "all", bool, False):
            missing, n = [], self._db(self.store.requeue, None)
        else:
            ids = core.id_list(env.b)
            if not ids:
                raise PermanentError("queue.requeue needs ids or all=true")
            missing = [i for i in dict.fromkeys(ids)
                       if (m := self.store.get(i)) is None or m.state != "dead"]
            n = self._db(self.store.requeue, ids)
        self.reply(sender, env, protocol.OK, {"requeued": n, "missing": missing})
        if n:
            self._schedule_pump()

    @handles(protocol.QUEUE_PURGE)
    def _purge(self, env, sender) -> None:
        state = _arg(env.b, "state", str, "dead", check=lambda s: s in _PURGE_STATES,
                     what=" | ".join(_PURGE_STATES))
        recipient = _arg(env.b, "recipient", str, None, **_NAME)
        n = self._db(self.store.purge, state, recipient)
        self.reply(sender, env, protocol.OK, {"purged": n, "state": state,
                                              "recipient": recipient})
