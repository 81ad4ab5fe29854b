"""Throughput of the persistent queue, end to end and in parts, against SQLite queue libraries.

One run, one machine, one 200-byte payload (msgpack ``{"text": ...}``). Our SQLite is WAL with
``synchronous=NORMAL``: a commit survives a process crash; the last commits may be lost on power
loss or an OS crash (``FULL`` would fsync every commit).

1. batched, end to end: a producer actor (``bench.queue:Producer``, a service of the bench's
   swarm) enqueues N items in ``queue.enqueue`` batches of B=500, 4 requests in flight -> queue
   actor -> SQLite -> ``queue.deliver`` to a consumer actor (``bench.queue:Consumer``, the
   ``QueueConsumer`` mixin, max_in_flight 5,000) that acks each batch; timed from the first
   enqueue to the reply to the ack that completes N (i.e. that ack's commit). Median of 3;
   ``queue_actor_cpu_batched`` is the queue process's CPU share meanwhile (1.0 = one core).
2. unbatched, one item per request, the next after the reply (each answered after its commit):
   a producer actor in the swarm (``bench.queue:Asker``) against the queue, vs the same actor
   class asking an echo actor in a stock Thespian system (``bench.common.raw_system``: Thespian
   as shipped, without ``system.transport``'s poll loop) -> ``unbatched_ratio_vs_raw_ask``; vs
   an echo actor in the swarm (the queue's own transport) -> ``unbatched_ratio_vs_swarm_echo``;
   and this process as an external client (Thespian's own transport, like the CLI) against the
   queue vs against the stock echo -> ``unbatched_external_ratio_vs_raw_ask``. Rounds of ROUND
   requests, the five cases back to back in a rotating order; each ratio is the median of the
   per-round ratios. Also the queue's CPU time per request.
3. persist-queue ``SQLiteAckQueue`` (put N, then get+ack N) at synchronous=NORMAL like ours
   (``persist_queue_*``) and at its default FULL (``persist_queue_default_*``); litequeue
   (put N, then pop+done N; it sets NORMAL itself). Drain and put rates with a smaller N: both
   drains slow down as done rows pile up, so these rates (and our ratio to them) depend on N.
4. raw sqlite3 (insert a batch / lease a batch with UPDATE..RETURNING / delete the acked batch,
   one transaction each, B=500) and QueueStore alone (enqueue / lease / ack, no actors).
5. backlog: the QueueStore loop of 4 with BACKLOG rows already stored (half ready rows of another
   recipient, half rows of the same recipient delayed by a day) vs an empty table, alternated.
6. concurrent producers and group commit: P=4 Askers in the swarm each enqueue one message at a
   time (the next after the reply), concurrently, vs the same actors asking the swarm's echo
   actor. One swarm per setting: ``synchronous`` NORMAL (the default; no group commit), FULL
   with ``group_commit_ms`` 2 (default) and FULL with 0 (off) ->
   ``concurrent_{normal,full,full_no_group}_msgs_per_s``, requests per commit and
   ``..._ratio_vs_echo`` (median paired ratio to the echo in the same swarm: the swarms run
   one after the other, so compare these ratios, not the rates);
   ``concurrent_full_group_gain`` = FULL grouped ratio / FULL ungrouped ratio.

    python -m bench.queue [--json] [--quick]      (from the repository root, as a module)
"""
from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import msgpack
import psutil
from thespian.actors import Actor

from actors.queue.client import QueueConsumer
from actors.queue.store import QueueStore
from bench.common import BenchSwarm, emit, parser, raw_system
from system import protocol
from system.admin import AdminClient
from system.launcher import connect, swarm_processes
from system.service import ServiceActor, handles

PAYLOAD = msgpack.packb({"text": "x" * 192})  # 200 bytes
TEXT = "x" * 200                                # litequeue stores TEXT
B, WINDOW, MAX_IN_FLIGHT, ROUND, REPS, RCPT, TIMEOUT_S = 500, 4, 5_000, 100, 3, "bench", 120.0
SIZES = {False: {"n": 100_000, "asks": 3_000, "lib": 20_000, "store": 100_000,
                 "backlog": 1_000_000, "loop": 50_000, "concurrent": 300},
         True: {"n": 20_000, "asks": 1_000, "lib": 5_000, "store": 20_000,
                "backlog": 200_000, "loop": 10_000, "concurrent": 100}}
PRODUCERS = 4
TARGETS = {"batched_msgs_per_s": 20_000, "batched_vs_persist_queue": 25,
           "batched_vs_persist_queue_default": 25, "unbatched_ratio_vs_raw_ask": 0.8,
           "backlog_1m_ratio": 0.7}


# -- actors (imported by name in the swarm's processes) ------------------------------------
class Echo(Actor):
    """The raw Thespian peer: answers any bytes with the same bytes."""

    def receiveMessage(self, message, sender):
        if isinstance(message, bytes):
            self.send(sender, message)


class Asker(Actor):
    """``("run", target, n, data)``: send ``data`` to ``target`` n times, each after the reply
    to the previous one; then answers ``("done", seconds)``. The same driver for the queue and
    the echo actor (any bytes reply counts)."""

    def receiveMessage(self, message, sender):
        if isinstance(message, tuple) and message[0] == "run":
            _, self.target, self.left, self.data = message
            self.boss, self.t0 = sender, time.perf_counter()
            self.send(self.target, self.data)
        elif isinstance(message, bytes) and getattr(self, "left", 0) > 0:
            self.left -= 1
            if self.left:
                self.send(self.target, self.data)
            else:
                self.send(self.boss, ("done", time.perf_counter() - self.t0))


class Producer(ServiceActor):
    """``test.echo {cmd: run, queue, recipient, n, batch, window}``: enqueue n items in batches,
    ``window`` requests in flight; answered {t0, accepted, failed} once every batch is."""

    tick_s = 1.0

    @handles(protocol.TEST_ECHO)
    def _run(self, env, sender) -> None:
        b = env.b
        self.queue, self.waiter = protocol.address_from_wire(b["queue"]), (sender, env)
        self.left, self.open, self.accepted, self.failed = b["n"], 0, 0, 0
        self.items = [{"recipient": b["recipient"], "payload": PAYLOAD}] * b["batch"]
        self.t0 = time.time()
        for _ in range(b["window"]):
            self._next()

    def _next(self) -> None:
        if self.left > 0:
            k = min(self.left, len(self.items))
            self.left, self.open = self.left - k, self.open + 1
            self.request(self.queue, protocol.QUEUE_ENQUEUE, {"items": self.items[:k]},
                         self._enqueued, TIMEOUT_S)
        elif self.open == 0:
            self.reply(*self.waiter, protocol.OK,
                       {"t0": self.t0, "accepted": self.accepted, "failed": self.failed})

    def _enqueued(self, reply) -> None:
        self.open -= 1
        if reply is None or reply.t != protocol.OK.name:
            self.failed += 1
        else:
            self.accepted += len(reply.b["accepted"])
        self._next()


class Consumer(QueueConsumer, ServiceActor):
    """Subscribes to ``options.recipient``, acks every delivered batch (quietly). ``test.echo
    {cmd: arm, n}`` resets the count; ``{cmd: wait}`` is answered once n are acked: the ack that
    completes n asks for a reply, and t_done is when that reply (after its commit) arrives."""

    tick_s = 0.5

    def on_start(self) -> None:
        opts = self.service_config().get("options", {})
        self.target, self.acked, self.t_done, self.waiter = 0, 0, None, None
        self.queue_subscribe(recipient=opts["recipient"], max_in_flight=opts["max_in_flight"],
                             batch=B)

    def on_tick(self) -> None:
        self.queue_keepalive()

    def on_queue_messages(self, messages: list[dict]) -> None:
        ids = [m["id"] for m in messages]
        self.acked += len(ids)
        if self.acked - len(ids) < self.target <= self.acked:
            self.request(self.queue_addr, protocol.QUEUE_ACK, {"ids": ids}, self._last, TIMEOUT_S)
        else:
            self.queue_ack(ids)

    def _last(self, reply) -> None:
        self.t_done = time.time() if reply is not None and reply.t == protocol.OK.name else -1.0
        self._answer()

    def _answer(self) -> None:
        if self.waiter is not None and self.t_done is not None:
            self.reply(*self.waiter, protocol.OK, {"t_done": self.t_done, "acked": self.acked})
            self.waiter = None

    @handles(protocol.TEST_ECHO)
    def _command(self, env, sender) -> None:
        if env.b.get("cmd") == "arm":
            self.target, self.acked, self.t_done = env.b["n"], 0, None
            self.reply(sender, env, protocol.OK, {"sub": getattr(self, "queue_sub", None)})
        else:
            self.waiter = (sender, env)
            self._answer()


# -- 1 and 2: through the actor system ----------------------------------------------------
def _ask(asys, addr: str, body: dict) -> dict:
    with asys.private() as ctx:
        reply = ctx.ask(protocol.address_from_wire(addr), protocol.TEST_ECHO.encode(body),
                        TIMEOUT_S)
    env = protocol.decode(reply) if isinstance(reply, bytes) else None
    if not isinstance(env, protocol.Envelope) or env.t != protocol.OK.name:
        raise RuntimeError(f"{body.get('cmd')}: bad answer {reply!r:.200}")
    return env.b


def batched_once(asys, addr: dict, n: int) -> float:
    deadline = time.monotonic() + 30
    while not _ask(asys, addr["bench_consumer"], {"cmd": "arm", "n": n})["sub"]:
        if time.monotonic() > deadline:
            raise RuntimeError("the consumer did not subscribe to the queue")
        time.sleep(0.1)
    p = _ask(asys, addr["bench_producer"], {"cmd": "run", "queue": addr["queue"], "n": n,
                                            "recipient": RCPT, "batch": B, "window": WINDOW})
    c = _ask(asys, addr["bench_consumer"], {"cmd": "wait"})
    if p["accepted"] != n or p["failed"] or c["t_done"] <= 0 or c["acked"] != n:
        raise RuntimeError(f"batched run incomplete: producer {p}, consumer {c}")
    return n / (c["t_done"] - p["t0"])


def unbatched(asys, raw, queue_addr: str, asks: int, queue_pid: int) -> dict:
    """Requests/s, one request at a time, of: an Asker in the swarm against the queue and
    against the swarm's echo; an Asker in the stock system against its echo; this process (an
    external client on Thespian's own transport) against the queue and against the stock echo.
    In rounds of ROUND requests, the five back to back (the order rotates). The median of the
    per-round ratios keeps a burst of load from another process on this shared machine, which
    lands in one case of one round, from deciding the result. Also the queue's CPU time per
    request."""
    queue = protocol.address_from_wire(queue_addr)
    data = protocol.QUEUE_ENQUEUE.encode({"items": [{"recipient": RCPT + "-unbatched",
                                                      "payload": PAYLOAD}]})  # nobody consumes it
    echo, asker = asys.createActor("bench.queue.Echo"), asys.createActor("bench.queue.Asker")
    raw_echo, raw_asker = raw.createActor("bench.queue.Echo"), raw.createActor("bench.queue.Asker")

    def by_actor(system, who, target):
        def run(n: int) -> float:
            reply = system.ask(who, ("run", target, n, data), TIMEOUT_S)
            if not (isinstance(reply, tuple) and reply[0] == "done"):
                raise RuntimeError(f"an asker did not finish: {reply!r:.200}")
            return reply[1]
        return run

    def by_client(system, target):
        def run(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                if system.ask(target, data, TIMEOUT_S) is None:
                    raise RuntimeError("no answer to an external ask")
            return time.perf_counter() - t0
        return run

    def enqueued() -> int:
        stats = protocol.decode(asys.ask(queue, protocol.QUEUE_STATS.encode(), TIMEOUT_S)).b
        return stats["totals"].get("enqueued", 0)

    cases = [by_actor(asys, asker, queue), by_actor(asys, asker, echo),
             by_actor(raw, raw_asker, raw_echo), by_client(asys, queue), by_client(raw, raw_echo)]
    for case in cases:  # warm-up
        case(20)
    queue_proc, first, rounds = psutil.Process(queue_pid), enqueued(), []
    cpu0 = sum(queue_proc.cpu_times()[:2])
    for r in range(asks // ROUND):
        took = [0.0] * len(cases)
        for i in range(len(cases)):
            k = (r + i) % len(cases)
            took[k] = cases[k](ROUND)
        rounds.append(took)
    n = len(rounds) * ROUND
    cpu = (sum(queue_proc.cpu_times()[:2]) - cpu0) / (2 * n) * 1e6
    if enqueued() - first != 2 * n:
        raise RuntimeError(f"{2 * n} enqueues asked, {enqueued() - first} accepted")
    rate = [n / sum(t[i] for t in rounds) for i in range(len(cases))]

    def ratio(peer: int, case: int) -> float:
        return statistics.median(t[peer] / t[case] for t in rounds)

    return {"unbatched_msgs_per_s": rate[0], "swarm_echo_ask_per_s": rate[1],
            "raw_ask_per_s": rate[2], "unbatched_ratio_vs_raw_ask": ratio(2, 0),
            "unbatched_ratio_vs_swarm_echo": ratio(1, 0),
            "unbatched_external_msgs_per_s": rate[3], "raw_external_ask_per_s": rate[4],
            "unbatched_external_ratio_vs_raw_ask": ratio(4, 3),
            "unbatched_queue_cpu_us_per_ask": cpu}


def through_actors(size: dict) -> dict:
    services = {"queue": {"synchronous": "NORMAL", "batch_max": B},
                "bench_consumer": {"actor": "bench.queue:Consumer", "depends_on": ["queue"],
                                   "options": {"recipient": RCPT, "max_in_flight": MAX_IN_FLIGHT}},
                "bench_producer": {"actor": "bench.queue:Producer", "depends_on": ["queue"]}}
    with raw_system() as raw, BenchSwarm({"services": services}) as swarm:
        swarm.start()
        admin, asys = AdminClient(swarm.config), connect(swarm.config)
        found = {name: admin.call(protocol.ADMIN_LOOKUP, {"name": name})
                 for name in ("queue", "bench_consumer", "bench_producer")}
        addr = {name: f["addr"] for name, f in found.items()}
        queue_proc = psutil.Process(found["queue"]["pid"])
        batched_once(asys, addr, 2 * B)  # warm-up
        cpu0, t0 = sum(queue_proc.cpu_times()[:2]), time.perf_counter()
        samples = [batched_once(asys, addr, size["n"]) for _ in range(REPS)]
        cpu = (sum(queue_proc.cpu_times()[:2]) - cpu0) / (time.perf_counter() - t0)
        unbatched_result = unbatched(asys, raw, addr["queue"], size["asks"],
                                     found["queue"]["pid"])
        stats = protocol.decode(asys.ask(protocol.address_from_wire(addr["queue"]),
                                         protocol.QUEUE_STATS.encode(), TIMEOUT_S)).b
        if stats["depth"]["leased"] or stats["ready_by_recipient"].get(RCPT):
            raise RuntimeError(f"messages left unacked: {stats['depth']}")
    return {"batched_msgs_per_s": statistics.median(samples),
            "batched_samples": [round(x) for x in samples], "queue_actor_cpu_batched": cpu,
            **unbatched_result,
            "swarm_processes_left": len(swarm_processes(swarm.port))}


def concurrent_once(sync: str, group_ms: int, asks: int) -> dict:
    """P askers at once against the queue and against an echo actor, in paired rounds."""
    with BenchSwarm({"services": {"queue": {"synchronous": sync, "group_commit_ms": group_ms}}}
                    ) as swarm:
        swarm.start()
        asys = connect(swarm.config)
        queue = protocol.address_from_wire(AdminClient(swarm.config).call(
            protocol.ADMIN_LOOKUP, {"name": "queue"})["addr"])
        echo = asys.createActor("bench.queue.Echo")
        askers = [asys.createActor("bench.queue.Asker") for _ in range(PRODUCERS)]
        data = protocol.QUEUE_ENQUEUE.encode({"items": [{"recipient": RCPT, "payload": PAYLOAD}]})

        def rate(target, n: int) -> float:
            t0 = time.perf_counter()
            with asys.private() as ctx:
                for asker in askers:
                    ctx.tell(asker, ("run", target, n, data))
                for _ in askers:
                    if (ctx.listen(TIMEOUT_S) or (None,))[0] != "done":
                        raise RuntimeError("an asker did not finish")
            return PRODUCERS * n / (time.perf_counter() - t0)

        rate(queue, 20), rate(echo, 20)  # warm-up
        rounds = [(rate(queue, asks), rate(echo, asks)) for _ in range(REPS + 2)]
        stats = protocol.decode(asys.ask(queue, protocol.QUEUE_STATS.encode(), TIMEOUT_S)).b
    gc = stats["group_commit"]
    return {"msgs_per_s": statistics.median(q for q, _ in rounds),
            "echo_per_s": statistics.median(e for _, e in rounds),
            "ratio": statistics.median(q / e for q, e in rounds),
            "per_commit": gc["items"] / max(gc["commits"], 1)}


def concurrent(asks: int) -> dict:
    out: dict = {"concurrent_producers": PRODUCERS}
    for key, sync, group_ms in (("normal", "NORMAL", 2), ("full", "FULL", 2),
                                ("full_no_group", "FULL", 0)):
        got = concurrent_once(sync, group_ms, asks)
        out[f"concurrent_{key}_msgs_per_s"] = got["msgs_per_s"]
        out[f"concurrent_{key}_echo_per_s"] = got["echo_per_s"]
        out[f"concurrent_{key}_ratio_vs_echo"] = got["ratio"]
        out[f"concurrent_{key}_requests_per_commit"] = got["per_commit"]
    out["concurrent_full_group_gain"] = (out["concurrent_full_ratio_vs_echo"]
                                         / out["concurrent_full_no_group_ratio_vs_echo"])
    return out


# -- 3, 4, 5: libraries, raw SQLite and the store, no actors -------------------------------
def _drain_rates(n: int, put, take) -> tuple[float, float]:
    """(puts/s, takes/s): n puts, then n takes."""
    t0 = time.perf_counter()
    for _ in range(n):
        put()
    t1 = time.perf_counter()
    for _ in range(n):
        take()
    return n / (t1 - t0), n / (time.perf_counter() - t1)


def libraries(n: int, tmp: Path) -> dict:
    import persistqueue
    from litequeue import LiteQueue

    out = {}
    for key, sync in (("persist_queue", "NORMAL"), ("persist_queue_default", None)):
        q = persistqueue.SQLiteAckQueue(str(tmp / key))  # WAL; synchronous defaults to FULL
        if sync:
            q._conn.execute(f"PRAGMA synchronous = {sync}")
        out[f"{key}_put_per_s"], out[f"{key}_msgs_per_s"] = _drain_rates(
            n, lambda q=q: q.put(PAYLOAD), lambda q=q: q.ack(q.get(block=False)))
        q.close()
    lq = LiteQueue(str(tmp / "lq.db"))
    out["litequeue_put_per_s"], out["litequeue_msgs_per_s"] = _drain_rates(
        n, lambda: lq.put(TEXT), lambda: lq.done(lq.pop().message_id))
    lq.conn.close()
    return out


def raw_sqlite(n: int, tmp: Path) -> float:
    conn = sqlite3.connect(tmp / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, recipient TEXT NOT NULL, payload BLOB "
                 "NOT NULL, state INTEGER NOT NULL DEFAULT 0, available_at REAL NOT NULL, "
                 "attempts INTEGER NOT NULL DEFAULT 0, lease_expires_at REAL)")
    conn.execute("CREATE INDEX ix_ready ON q(recipient, available_at, id) WHERE state = 0")
    lease = ("UPDATE q SET state = 1, attempts = attempts + 1, lease_expires_at = ? WHERE id IN "
             "(SELECT id FROM q WHERE state = 0 AND recipient = ? AND available_at <= ? "
             "ORDER BY available_at, id LIMIT ?) RETURNING id, payload")

    def tx(sql: str, args, many: bool = True) -> list:  # one transaction
        conn.execute("BEGIN IMMEDIATE")
        rows = (conn.executemany if many else conn.execute)(sql, args).fetchall()
        conn.execute("COMMIT")
        return rows

    t0 = time.perf_counter()
    for _ in range(n // B):
        now = time.time()
        tx("INSERT INTO q (recipient, payload, available_at) VALUES (?, ?, ?)",
           [(RCPT, PAYLOAD, now)] * B)
        leased = tx(lease, (now + 30, RCPT, time.time(), B), many=False)
        tx("DELETE FROM q WHERE id = ? AND state = 1", [(r[0],) for r in leased])
    rate = n // B * B / (time.perf_counter() - t0)
    conn.close()
    return rate


def store_loop(store: QueueStore, n: int) -> float:
    """Batched enqueue, lease, ack through QueueStore (the calls the queue actor makes)."""
    items = [{"recipient": RCPT, "payload": PAYLOAD}] * B
    t0 = time.perf_counter()
    for _ in range(n // B):
        store.enqueue(items)
        if store.ack([m.id for m in store.lease(RCPT, B, "bench", 30.0)], "bench") != B:
            raise RuntimeError("store loop: not every leased message was acked")
    return n // B * B / (time.perf_counter() - t0)


def backlog(rows: int, n: int, tmp: Path) -> tuple[float, float]:
    """(median rate on an empty table, median rate with ``rows`` stored), alternated."""
    other = [{"recipient": "other", "payload": PAYLOAD}] * 5_000
    later = [{"recipient": RCPT, "payload": PAYLOAD, "delay_s": 86_400.0}] * 5_000
    with QueueStore(tmp / "empty.db") as empty, QueueStore(tmp / "full.db") as full:
        for i in range(rows // 5_000):
            full.enqueue(later if i % 2 else other)
        rates: dict[str, list[float]] = {"empty": [], "full": []}
        for _ in range(REPS):
            for name, store in (("empty", empty), ("full", full)):
                rates[name].append(store_loop(store, n))
    return statistics.median(rates["empty"]), statistics.median(rates["full"])


def run(quick: bool) -> dict:
    size = SIZES[quick]
    r: dict = {"quick": quick, "payload_bytes": len(PAYLOAD), "batch": B, "synchronous": "NORMAL",
               "n_batched": size["n"], "n_unbatched_asks": size["asks"], "n_libraries": size["lib"],
               "n_store": size["store"], "backlog_rows": size["backlog"],
               "n_backlog_loop": size["loop"], **through_actors(size),
               **concurrent(size["concurrent"])}
    with tempfile.TemporaryDirectory(prefix="queue-bench-") as tmp:
        r.update(libraries(size["lib"], Path(tmp)))
        r["raw_sqlite_msgs_per_s"] = raw_sqlite(size["store"], Path(tmp))
        with QueueStore(Path(tmp) / "store.db") as store:
            r["store_msgs_per_s"] = store_loop(store, size["store"])
        r["backlog_empty_msgs_per_s"], r["backlog_msgs_per_s"] = backlog(
            size["backlog"], size["loop"], Path(tmp))
    for key, num, den in (
            ("backlog_1m_ratio", "backlog_msgs_per_s", "backlog_empty_msgs_per_s"),
            ("batched_vs_persist_queue", "batched_msgs_per_s", "persist_queue_msgs_per_s"),
            ("batched_vs_persist_queue_default", "batched_msgs_per_s",
             "persist_queue_default_msgs_per_s"),
            ("batched_vs_store", "batched_msgs_per_s", "store_msgs_per_s"),
            ("store_vs_raw_sqlite", "store_msgs_per_s", "raw_sqlite_msgs_per_s")):
        r[key] = r[num] / r[den]
    r = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
    r["targets_met"] = {k: r[k] >= t for k, t in TARGETS.items()}
    return r


def main() -> None:
    args = parser(__doc__).parse_args()
    r = run(args.quick)
    rows = [(k, v) for k, v in r.items() if k != "targets_met"]
    rows += [(f"target {k} >= {t:g}", "met" if r["targets_met"][k] else "MISSED")
             for k, t in TARGETS.items()]
    emit(args, r, rows)


if __name__ == "__main__":
    main()
