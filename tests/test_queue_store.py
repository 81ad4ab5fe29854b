"""QueueStore behaviour on a real SQLite file in tmp_path with a fake clock."""
from __future__ import annotations

import pickle
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from actors.queue import schema
from actors.queue.model import IdGenerator, NewMessage, Priority, check_message_id
from actors.queue.store import LEASE_ONE_SQL, READY_SIZED_SQL, SCHEMA_VERSION, QueueStore
from system.errors import ConfigError, TransientError

T0 = 1_700_000_000.0
ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


@pytest.fixture
def store(db: Path, clock: FakeClock):
    s = QueueStore(db, clock=clock)
    yield s
    s.close()


def msg(recipient: str = "alice", text: str = "hi", **kw) -> NewMessage:
    return NewMessage(recipient=recipient, payload=msgpack.packb(text), **kw)


def ids_of(leased) -> list[str]:
    return [m.id for m in leased]


def test_enqueue_lease_ack_round_trip(store, clock):
    res = store.enqueue([msg(text="one", sender="bob", headers={"trace": "t1"}), msg(text="two")])
    assert len(res.accepted) == 2 and res.duplicates == [] and res.rejected == []
    assert res.ids == res.accepted
    leased = store.lease("alice", 10, "consumer-1", visibility_s=30)
    assert ids_of(leased) == res.accepted
    first = leased[0]
    assert (first.recipient, first.sender, first.type, first.priority) == (
        "alice", "bob", "text", "normal")
    assert first.headers == {"trace": "t1"} and leased[1].headers == {}
    assert msgpack.unpackb(first.payload) == "one"
    assert first.state == "leased" and first.attempts == 1 and first.max_attempts == 5
    assert first.lease_owner == "consumer-1" and first.lease_expires_at == T0 + 30
    assert first.created_at == T0 and first.available_at == T0
    assert store.lease("alice", 10, "consumer-1", 30) == []  # already leased
    assert store.ack(ids_of(leased), owner="consumer-1") == 2
    assert store.get(first.id) is None
    assert store.ack(ids_of(leased)) == 0  # already acked: no-op
    assert store.ack(["no-such-id"]) == 0
    assert store.stats()["depth"]["total"] == 0


def test_batch_with_duplicates_and_invalid_items_rejects_only_those(store):
    items = [
        msg(id="m1"),
        msg(recipient=""),                                          # 1 empty recipient
        msg(id="m1"),                                               # 2 duplicate in batch
        msg(priority="asap"),                                       # 3 unknown priority
        NewMessage(recipient="alice", payload="not bytes"),         # 4 payload not bytes
        msg(delay_s=-1),                                            # 5 negative delay
        msg(id="../etc/passwd"),                                    # 6 unsafe id
        {"recipient": "alice", "payload": b"\xa1x", "bogus": 1},    # 7 unknown field
        {"recipient": "carol", "payload": msgpack.packb("m"), "priority": "high"},
        msg(headers={"k": 1}),                                      # 9 header not str
        msg(max_attempts=0),                                        # 10
        msg(max_attempts=2**63),                                    # 11 beyond SQLite's int
        msg(id="m2"),
        msg(recipient=5),                                           # 13 not a str
        msg(recipient="alice "),                                    # 14 trailing space
        msg(recipient="a\nforged line"),                            # 15 control character
        msg(sender="s\x00y"),                                       # 16
        msg(type="t\x1b[2Jx"),                                      # 17
        msg(delay_s=1e300),                                         # 18 never due
        msg(delay_s=366 * 86_400, id="m3"),                         # the longest delay: ok
    ]
    res = store.enqueue(items)
    assert [i for i, _ in res.rejected] == [1, 3, 4, 5, 6, 7, 9, 10, 11, 13, 14, 15, 16, 17, 18]
    assert dict(res.rejected)[13] == "recipient must be a str, not int"
    assert all("control characters" in dict(res.rejected)[i] for i in (14, 15, 16, 17))
    assert dict(res.rejected)[18] == "delay_s over 366 days"
    assert "1..1000" in dict(res.rejected)[11]
    reasons = dict(res.rejected)
    assert reasons[1] == "empty recipient" and "unknown priority" in reasons[3]
    assert "bytes" in reasons[4] and reasons[5] == "negative delay"
    assert res.duplicates == ["m1"]
    assert res.accepted[0] == "m1" and res.accepted[-1] == "m3" and len(res.accepted) == 4
    assert res.ids[0] == res.ids[2] == "m1" and res.ids[1] is None and res.ids[8] is not None
    assert store.get(res.ids[8]).priority == "high"
    assert store.stats()["depth"]["ready"] == 4


def test_duplicate_ids_detected_in_every_state_and_after_ack(store, clock):
    store.enqueue([msg(id=i) for i in ("ready", "leased", "dead", "acked")])
    store.lease("alice", 10, "c", 30)
    store.nack(["ready"], "retry me")          # back to ready
    store.nack(["dead"], "boom", retry=False)
    store.ack(["acked"])
    states = {i: (store.get(i).state if store.get(i) else None)
              for i in ("ready", "leased", "dead", "acked")}
    assert states == {"ready": "ready", "leased": "leased", "dead": "dead", "acked": None}
    res = store.enqueue([msg(id=i) for i in ("ready", "leased", "dead", "acked", "new")])
    assert res.duplicates == ["ready", "leased", "dead", "acked"] and res.accepted == ["new"]
    clock.advance(100)
    assert store.purge_acked(older_than_s=50) == 1  # dedup window of acked ids ends
    assert store.enqueue([msg(id="acked")]).accepted == ["acked"]


def test_without_remember_acked_an_acked_id_can_be_enqueued_again(db, clock):
    with QueueStore(db, clock=clock, remember_acked=False) as store:
        store.enqueue([msg(id="x")])
        store.ack(ids_of(store.lease("alice", 1, "c", 30)))
        assert store.enqueue([msg(id="x")]).accepted == ["x"]


def test_lease_orders_by_priority_then_available_at_then_enqueue_order(store, clock):
    store.enqueue([msg(id="n-late", priority="normal")])
    clock.advance(1)
    store.enqueue([msg(id=i, priority=p) for i, p in (
        ("l-1", "low"), ("n-b", "normal"), ("n-a", "normal"), ("h-1", "high"),
        ("u-1", "urgent"), ("u-0", Priority.URGENT))])
    store.enqueue([msg(id="n-early", priority="normal", delay_s=0)])
    clock.advance(1)
    order = ids_of(store.lease("alice", 3, "c", 30)) + ids_of(store.lease("alice", 10, "c", 30))
    # normal: n-late is the oldest; n-b/n-a/n-early share available_at -> enqueue order
    assert order == ["u-1", "u-0", "h-1", "n-late", "n-b", "n-a", "n-early", "l-1"]


def test_generated_ids_keep_enqueue_order(store):
    res = store.enqueue([msg(text=str(i)) for i in range(50)])
    assert res.accepted == sorted(res.accepted) and len(set(res.accepted)) == 50
    leased = store.lease("alice", 50, "c", 30)
    assert [msgpack.unpackb(m.payload) for m in leased] == [str(i) for i in range(50)]


def test_id_generator_is_monotonic_even_if_the_clock_steps_back(clock):
    gen = IdGenerator(clock)
    ids = [gen()]
    for step in (0, 0.001, -5, 0, 10):
        clock.advance(step)
        ids.append(gen())
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 26 and i.isalnum() for i in ids)


def test_delayed_message_is_not_leased_before_available_at(store, clock):
    store.enqueue([msg(id="later", delay_s=10), msg(id="now")])
    assert ids_of(store.lease("alice", 10, "c", 30)) == ["now"]
    assert store.next_available_at() == T0 + 10
    clock.advance(9.999)
    assert store.lease("alice", 10, "c", 30) == []
    clock.advance(0.001)
    assert ids_of(store.lease("alice", 10, "c", 30)) == ["later"]


def test_lease_is_per_recipient_and_lease_each_serves_several_in_one_call(store, clock):
    store.enqueue([msg("alice", id="a1", priority="low"), msg("bob", id="b1"),
                   msg("carol", id="c1", priority="urgent"), msg("bob", id="b2"),
                   msg("carol", id="c2", delay_s=5)])
    assert store.ready_counts() == {"alice": 1, "bob": 2, "carol": 2}  # delayed ones included
    assert ids_of(store.lease("bob", 1, "c", 30)) == ["b1"]
    assert store.lease("nobody", 10, "c", 30) == []
    store.enqueue([msg("bob", id="b3", priority="high")])
    got = store.lease_each([("carol", 2), ("bob", 1), ("alice", 0), ("nobody", 3)], "c", 30)
    # c2 is not due yet: carol's unused share goes to bob, then to anyone listed (alice);
    # each recipient's messages in its own order
    assert ids_of(got) == ["c1", "b3", "b2", "a1"]
    assert store.ready_counts() == {"carol": 1}
    assert store.counted() == store.recount() and store.stats()["totals"]["leased"] == 5


def test_lease_each_fills_a_round_from_any_recipient_when_one_has_nothing_due(store):
    store.enqueue([msg("a", id=f"a{i}") for i in range(20)] + [msg("b", id="b0", delay_s=60)])
    for wants in ([("a", 5), ("b", 5)], [("b", 5), ("a", 5)]):  # b last, then b first
        assert ids_of(store.lease_each(wants, "c", 30)) == [f"a{i}" for i in range(10)] \
            if wants[0][0] == "a" else [f"a{i}" for i in range(10, 20)]


def test_a_lease_with_nothing_ready_takes_no_lock(db, clock):
    store = QueueStore(db, clock=clock, busy_timeout_s=0.05)
    store.enqueue([msg("alice", delay_s=60)])
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        assert store.lease("bob", 10, "c", 30) == []
        assert store.lease_each([("alice", 0), ("carol", 5)], "c", 30) == []
        with pytest.raises(TransientError):  # alice has a (delayed) row: that one must lock
            store.lease("alice", 10, "c", 30)
    finally:
        other.execute("ROLLBACK")
        other.close()
        store.close()


def test_expired_lease_becomes_ready_again_and_attempt_is_counted(store, clock):
    store.enqueue([msg(id="m")])
    store.lease("alice", 1, "dead-consumer", visibility_s=30)
    assert store.next_lease_expiry() == T0 + 30
    clock.advance(30)
    assert store.expire_leases() == 0  # not yet past lease_expires_at
    clock.advance(0.5)
    assert store.expire_leases() == 1
    m = store.get("m")
    assert (m.state, m.attempts, m.lease_owner, m.last_error) == ("ready", 1, None,
                                                                  "lease expired")
    assert m.available_at == T0  # keeps its queue position
    again = store.lease("alice", 1, "consumer-2", 30)
    assert again[0].attempts == 2 and again[0].lease_owner == "consumer-2"
    assert store.ack(["m"], owner="dead-consumer") == 0  # the old owner lost the lease
    assert store.ack(["m"], owner="consumer-2") == 1


def test_expired_last_attempt_is_dead_lettered_as_lease_expired(store, clock):
    store.enqueue([msg(id="m", max_attempts=2)])
    for _ in range(2):
        assert ids_of(store.lease("alice", 1, "c", 5)) == ["m"]
        clock.advance(6)
        assert store.expire_leases() == 1
    dead = store.dead_letters()
    assert [(d.id, d.attempts, d.last_error, d.dead_at) for d in dead] == [
        ("m", 2, "lease expired", clock.t)]
    assert store.stats()["totals"]["expired"] == 2


def test_nack_backoff_timing_is_exact_and_capped(db, clock):
    with QueueStore(db, clock=clock, default_max_attempts=20, backoff_base_s=1.0,
                    backoff_max_s=300.0) as store:
        store.enqueue([msg(id="m")])
        expected = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
        for attempt, delay in enumerate(expected, start=1):
            [leased] = store.lease("alice", 1, "c", 30)
            assert leased.attempts == attempt
            res = store.nack(["m"], f"fail {attempt}")
            assert res.retried == ["m"] and res.dead == []
            m = store.get("m")
            assert m.available_at == clock.t + delay and m.last_error == f"fail {attempt}"
            clock.advance(delay - 0.001)
            assert store.lease("alice", 1, "c", 30) == []
            clock.advance(0.001)


def test_lease_stops_at_max_bytes_and_leaves_the_rest_untouched(store):
    big = msgpack.packb("x" * 100_000)
    store.enqueue([NewMessage(recipient="alice", payload=big, id=f"b{i}") for i in range(5)])
    first = store.lease("alice", 10, "c", 30, max_bytes=250_000)
    assert ids_of(first) == ["b0", "b1"]
    assert store.stats()["depth"]["ready"] == 3 and store.stats()["depth"]["leased"] == 2
    assert ids_of(store.lease("alice", 10, "c", 30, max_bytes=1)) == ["b2"]  # at least one
    rest = store.lease("alice", 10, "c", 30)
    assert ids_of(rest) == ["b3", "b4"] and [m.attempts for m in rest] == [1, 1]
    assert store.stats()["totals"]["leased"] == 5
    assert sorted(store.recount().items()) == sorted(store.counted().items())
    # across recipients the budget is shared; "at least one" only for the very first message
    store.enqueue([NewMessage(recipient=r, payload=big, id=f"{r}{i}") for r in ("x", "y")
                   for i in range(2)])
    both = store.lease_each([("x", 1), ("y", 5)], "c", 30, max_bytes=250_000)
    assert ids_of(both) == ["x0", "y0"]
    assert ids_of(store.lease_each([("x", 5), ("y", 5)], "c", 30, max_bytes=150_000)) == ["x1"]


def test_backoff_stays_capped_for_any_attempt_count(store):
    assert store.backoff(1) == 1.0
    assert store.backoff(1000) == store.backoff(10**9) == store.backoff_max_s


def test_nack_after_max_attempts_moves_to_dead_letters_with_last_error(store, clock):
    store.enqueue([msg(id="m")])
    for attempt in range(1, 6):
        [leased] = store.lease("alice", 1, "c", 30)
        res = store.nack([leased.id], f"error {attempt}")
        clock.advance(store.backoff(attempt))
    assert res.dead == ["m"] and res.retried == []
    [dead] = store.dead_letters()
    assert (dead.id, dead.state, dead.attempts, dead.last_error) == ("m", "dead", 5, "error 5")
    assert store.lease("alice", 1, "c", 30) == []


def test_nack_without_retry_dead_letters_at_once(store):
    store.enqueue([msg(id="m"), msg(id="other")])
    store.lease("alice", 2, "c", 30)
    res = store.nack(["m", "unknown"], "PermanentError: bad input", retry=False)
    assert (res.retried, res.dead, res.count) == ([], ["m"], 1)
    assert store.get("m").last_error == "PermanentError: bad input"
    assert store.nack(["other"], "x", owner="someone-else").count == 0  # not the owner
    assert store.get("other").state == "leased"


def test_requeue_one_and_all_dead_letters(store, clock):
    store.enqueue([msg(id=i) for i in ("a", "b", "c")])
    store.lease("alice", 3, "c", 30)
    store.nack(["a", "b", "c"], "nope", retry=False)
    assert [d.id for d in store.dead_letters(limit=2)] == ["a", "b"]
    assert [d.id for d in store.dead_letters(limit=2, offset=2)] == ["c"]
    clock.advance(5)
    assert store.requeue(["b", "missing"]) == 1
    b = store.get("b")
    assert (b.state, b.attempts, b.available_at, b.dead_at) == ("ready", 0, clock.t, None)
    assert store.requeue([]) == 0
    assert store.requeue() == 2
    assert store.dead_letters() == []
    assert ids_of(store.lease("alice", 10, "c", 30)) == ["a", "b", "c"]


def test_purge_by_state_and_recipient(store):
    store.enqueue([msg("alice", id="a1"), msg("alice", id="a2"), msg("bob", id="b1"),
                   msg("bob", id="b2"), msg("carol", id="c1")])
    store.lease("alice", 1, "c", 30)                                   # a1 leased
    store.lease("bob", 1, "c", 30)
    store.nack(["b1"], "x", retry=False)                               # b1 dead
    with pytest.raises(ValueError, match="purge state"):
        store.purge("done")
    assert store.purge("ready", recipient="bob") == 1                  # b2
    assert store.purge("dead") == 1                                    # b1
    assert store.purge("ready") == 2                                   # a2, c1
    assert store.stats()["depth"] == {"ready": 0, "leased": 1, "dead": 0, "total": 1}
    assert store.purge("all") == 1
    assert store.ack(["a1"]) == 0


def test_stats_after_scripted_sequence(store, clock):
    store.enqueue([msg("alice", id="a1", priority="urgent"), msg("alice", id="a2"),
                   msg("bob", id="b1", priority="low"), msg("bob", id="b2", delay_s=60),
                   msg("bob", id="b1"), msg("")])
    clock.advance(10)
    store.lease("alice", 2, "c", 30)                 # a1, a2 leased
    store.ack(["a1"])
    store.nack(["a2"], "boom", retry=False)          # a2 dead
    store.enqueue([msg("carol", id="c1", priority="high")])
    clock.advance(5)
    st = store.stats()
    assert st["depth"] == {"ready": 3, "leased": 0, "dead": 1, "total": 4}
    assert st["by_priority"]["ready"] == {"urgent": 0, "high": 1, "normal": 1, "low": 1}
    assert st["by_priority"]["dead"]["normal"] == 1
    assert st["ready_by_recipient"] == {"bob": 2, "carol": 1}
    assert st["oldest_ready_age_s"] == 15.0          # b1, available since T0
    assert st["totals"] == {"enqueued": 5, "duplicates": 1, "rejected": 1, "leased": 2,
                            "acked": 1, "nacked": 1, "retried": 0, "dead": 1, "expired": 0,
                            "requeued": 0, "purged": 0, "dead_expired": 0}
    store.purge("ready", recipient="bob")
    assert store.stats()["oldest_ready_age_s"] == 5.0  # c1
    store.purge("ready")
    assert store.stats()["oldest_ready_age_s"] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_in_memory_counters_always_match_a_full_recount(store, clock, seed):
    rnd = random.Random(seed)
    for _ in range(150):
        op = rnd.choice(["enq", "enq", "lease", "lease_each", "ack", "nack", "expire",
                         "requeue", "purge"])
        if op == "enq":
            store.enqueue([msg(rnd.choice("xyz"), id=f"m{rnd.randrange(60)}",
                               priority=rnd.choice(list(Priority)),
                               delay_s=rnd.choice([0, 0, 3])) for _ in range(rnd.randrange(6))])
        elif op in ("lease", "lease_each"):
            n = rnd.randrange(5)
            got = (store.lease(rnd.choice("xyz"), n, "c", 5) if op == "lease" else
                   store.lease_each([(r, n) for r in "zxy"], "c", 5, rnd.choice([None, 300])))
            assert len(got) <= (n if op == "lease" else 3 * n)
        elif op in ("ack", "nack"):
            ids = [f"m{rnd.randrange(60)}" for _ in range(4)]
            store.ack(ids) if op == "ack" else store.nack(ids, "e", retry=rnd.random() < 0.7)
        elif op == "expire":
            store.expire_leases()
        elif op == "requeue":
            store.requeue(None if rnd.random() < 0.3 else [f"m{rnd.randrange(60)}"])
        else:
            store.purge(rnd.choice(["ready", "dead", "all"]), rnd.choice([None, "x"]))
        clock.advance(rnd.random() * 2)
        assert store.counted() == store.recount()


def test_a_grown_wal_file_is_cut_back_once_it_can_be_reset(db, monkeypatch):
    monkeypatch.setattr(schema, "WAL_SIZE_LIMIT", 1 << 20)
    wal = Path(f"{db}-wal")
    with QueueStore(db) as store:
        reader = sqlite3.connect(db)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM messages").fetchone()  # holds the WAL back
        for _ in range(8):
            store.enqueue([NewMessage("alice", bytes(300_000))])
        assert wal.stat().st_size > 2 << 20
        reader.close()
        store._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        store.enqueue([msg()])  # the next write resets the WAL and cuts it back
        assert wal.stat().st_size <= 1 << 20


def test_committed_batches_survive_close_and_reopen(db, clock):
    payloads = [bytes([i]) * i for i in range(1, 20)]
    with QueueStore(db, clock=clock, synchronous="FULL") as store:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        ids = store.enqueue([NewMessage("alice", p, priority="high") for p in payloads]).accepted
        store.lease("alice", 2, "c", 30)
        store.ack(ids[:1])
    with QueueStore(db, clock=clock) as store:
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        st = store.stats()
        assert st["depth"] == {"ready": 17, "leased": 1, "dead": 0, "total": 18}
        assert st["by_priority"]["ready"]["high"] == 17
        leased = store.lease("alice", 100, "c", 30)
        assert [m.payload for m in leased] == payloads[2:]
        assert store.enqueue([msg(id=ids[0])]).duplicates == [ids[0]]  # acked id remembered


def test_leases_of_a_crashed_process_become_ready_after_expiry_on_reopen(db, clock):
    script = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
from actors.queue.store import QueueStore
from actors.queue.model import NewMessage
s = QueueStore({str(db)!r}, clock=lambda: {T0!r})
s.enqueue([NewMessage("alice", b"\\x01", id="m%d" % i) for i in range(5)])
s.lease("alice", 3, "consumer", 60)
s.ack(["m0"])
os._exit(0)  # crash: no close(), no checkpoint
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with QueueStore(db, clock=clock) as store:
        assert store.stats()["depth"] == {"ready": 2, "leased": 2, "dead": 0, "total": 4}
        assert ids_of(store.lease("alice", 10, "c2", 300)) == ["m3", "m4"]
        clock.advance(59)
        assert store.expire_leases() == 0
        clock.advance(2)
        assert store.expire_leases() == 2
        again = store.lease("alice", 10, "c2", 30)
        assert ids_of(again) == ["m1", "m2"] and [m.attempts for m in again] == [2, 2]


def test_lease_query_plan_is_a_bounded_range_on_the_partial_index(store):
    def plan(sql: str) -> str:
        params = {"owner": "o", "exp": 1.0, "rcpt": "alice", "prio": 2, "now": 1.0, "lim": 100}
        return " | ".join(r[3] for r in store._conn.execute("EXPLAIN QUERY PLAN " + sql, params))

    one, many = plan(LEASE_ONE_SQL), plan(READY_SIZED_SQL)  # a lease with a byte budget
    assert "INDEX ix_ready (recipient=? AND priority=? AND available_at<?)" in one
    assert "INDEX ix_ready (recipient=? AND priority=? AND available_at<?)" in many
    assert "SCAN messages" not in one + many and "TEMP B-TREE" not in one + many
    expiry = " | ".join(r[3] for r in store._conn.execute(
        "EXPLAIN QUERY PLAN UPDATE messages SET state = 0 "
        "WHERE state = 1 AND lease_expires_at < ?", (1.0,)))
    assert "INDEX ix_leased (lease_expires_at<?)" in expiry


def test_lease_with_many_delayed_rows_and_few_ready_does_not_walk_the_delayed_tail(store):
    delayed = [msg(delay_s=3600 + i) for i in range(20_000)]
    for i in range(0, len(delayed), 5000):
        store.enqueue(delayed[i:i + 5000])
    store.enqueue([msg(id=f"r{i}") for i in range(5)])
    ticks = [0]  # SQLite VM work, in units of 100 instructions: deterministic, unlike time

    def tick() -> int:
        ticks[0] += 1
        return 0

    store._conn.set_progress_handler(tick, 100)
    started = time.perf_counter()
    got = store.lease_each([("alice", 100)], "c", 30, max_bytes=1 << 20)  # sizes read first
    again = store.lease("alice", 100, "c", 30)
    elapsed = time.perf_counter() - started
    ours = ticks[0]
    assert ids_of(got) == [f"r{i}" for i in range(5)] and again == []
    assert elapsed < 0.05, f"lease walked the delayed tail: {elapsed * 1000:.1f} ms"
    # The pitfall this avoids: one ORDER BY over all priorities walks all 20k delayed rows.
    ticks[0] = 0
    store._conn.execute(
        "SELECT id FROM messages WHERE state = 0 AND recipient = 'alice' AND available_at <= ? "
        "ORDER BY priority, available_at, id LIMIT 100", (T0,)).fetchall()
    assert ours < 100 and ticks[0] > 10 * max(ours, 1), (ours, ticks[0])


def test_payload_bytes_are_returned_identical(store):
    payloads = [b"", b"\x00\xff\x00", bytes(range(256)) * 40, msgpack.packb({"a": [1, 2.5]}),
                bytearray(b"\xc1 invalid msgpack is still opaque")]
    store.enqueue([NewMessage("alice", p) for p in payloads])
    leased = store.lease("alice", 10, "c", 30)
    assert [m.payload for m in leased] == [bytes(p) for p in payloads]
    assert all(type(m.payload) is bytes for m in leased)


def test_leased_message_survives_pickle_and_to_dict(store):
    store.enqueue([msg(headers={"h": "v"})])
    [m] = store.lease("alice", 1, "c", 30)
    assert pickle.loads(pickle.dumps(m)) == m
    d = m.to_dict()
    assert d["payload"] == m.payload and d["headers"] == {"h": "v"}
    msgpack.packb(d)


def test_locked_database_raises_transient_error_and_leaves_state_intact(db, clock):
    store = QueueStore(db, clock=clock, busy_timeout_s=0.05)
    store.enqueue([msg(id="a")])
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(TransientError):
            store.enqueue([msg(id="b")])
        with pytest.raises(TransientError):
            store.lease("alice", 1, "c", 30)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.counted() == store.recount() == {("ready", "alice", "normal"): 1}
    assert store.enqueue([msg(id="b")]).accepted == ["b"]
    store.close()


def test_config_errors_bad_synchronous_and_newer_schema(db):
    with pytest.raises(ConfigError):
        QueueStore(db, synchronous="SOMETIMES")
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigError, match="schema version"):
        QueueStore(db)


def test_perf_sanity_10k_in_batches_of_500(db):
    """Prints the rates (see them with -s); no timing assertion."""
    with QueueStore(db) as store:
        payload = msgpack.packb({"text": "x" * 180})
        started = time.perf_counter()
        for _ in range(20):
            store.enqueue([NewMessage(f"agent{j % 4}", payload) for j in range(500)])
        enqueued = time.perf_counter()
        n = 0
        while leased := store.lease_each([(f"agent{j}", 125) for j in range(4)], "c", 30):
            n += store.ack([m.id for m in leased])
        done = time.perf_counter()
    assert n == 10_000
    print(f"\n[queue perf] enqueue 10k: {(enqueued - started) * 1000:.0f} ms, "
          f"lease+ack 10k: {(done - enqueued) * 1000:.0f} ms")


def test_enqueue_stores_new_messages_leased_to_a_waiting_consumer(store, clock):
    res = store.enqueue([msg(id="n1"), msg(id="n0"), msg(id="u", priority="urgent"),
                         msg(id="later", delay_s=5), msg(id="n2"), msg("bob", id="b")],
                        lease={"alice": ("c", 3, 30.0)})
    assert res.accepted == ["n1", "n0", "u", "later", "n2", "b"]
    assert ids_of(res.leased) == ["u", "n1", "n0"]  # what lease() would have taken, in order
    assert all(m == store.get(m.id) for m in res.leased)  # exactly as stored
    first = res.leased[0]
    assert (first.state, first.attempts, first.lease_owner, first.lease_expires_at) == (
        "leased", 1, "c", T0 + 30)
    assert store.counted() == store.recount()
    assert store.stats()["totals"]["leased"] == 3
    # alice now has ready messages: new ones would overtake them, so nothing is leased
    assert store.enqueue([msg(id="n3")], lease={"alice": ("c", 10, 30.0)}).leased == []
    assert ids_of(store.lease("alice", 10, "c", 30)) == ["n2", "n3"]
    assert store.ack(["u", "n0", "n1", "n2", "n3"], owner="c") == 5
    clock.advance(5)
    assert ids_of(store.lease("alice", 10, "c", 30)) == ["later"]


def test_leases_from_memory_equal_what_is_stored(store, clock):
    store.enqueue([msg(text=str(i), sender="s", headers={"h": str(i)}, type="t",
                       priority="high", max_attempts=3) for i in range(5)])
    first = store.lease("alice", 2, "c", 30)          # from memory
    store.nack([first[0].id], "again")                # back to ready: read back next time
    clock.advance(60)
    again = store.lease("alice", 10, "c", 30)         # three from memory, one read back
    assert ids_of(again)[-1] == first[0].id           # it is available later than the rest
    assert len(again) == 4 and again[-1].last_error == "again" and again[-1].attempts == 2
    assert all(m == store.get(m.id) for m in first[1:] + again)
    assert store.counted() == store.recount()


@pytest.mark.parametrize("version", [1, 2])
def test_older_schema_versions_are_migrated(db, version):
    """1 had a second ready index; 1 and 2 ordered ties by id instead of enqueue order."""
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE messages (id TEXT PRIMARY KEY, recipient TEXT NOT NULL, "
        "sender TEXT NOT NULL, type TEXT NOT NULL, priority INTEGER NOT NULL, "
        "payload BLOB NOT NULL, headers BLOB, created_at REAL NOT NULL, "
        "available_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
        "max_attempts INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0, last_error TEXT, "
        "lease_owner TEXT, lease_expires_at REAL, dead_at REAL);"
        "CREATE INDEX ix_ready ON messages(recipient, priority, available_at, id) "
        "WHERE state = 0;"
        + ("CREATE INDEX ix_ready_any ON messages(priority, available_at, id) WHERE state = 0;"
           if version == 1 else "") +
        "CREATE INDEX ix_leased ON messages(lease_expires_at) WHERE state = 1;"
        "CREATE INDEX ix_dead ON messages(dead_at, id) WHERE state = 2;"
        "CREATE TABLE acked_ids (id TEXT PRIMARY KEY, acked_at REAL NOT NULL) WITHOUT ROWID;"
        "CREATE INDEX ix_acked_at ON acked_ids(acked_at);"
        "INSERT INTO messages (id, recipient, sender, type, priority, payload, created_at, "
        "available_at, max_attempts) VALUES ('old-b', 'alice', '', 'text', 2, x'c0', 1, 1, 5),"
        "('old-a', 'alice', '', 'text', 2, x'c0', 1, 1, 5);"
        "INSERT INTO acked_ids VALUES ('gone', 1);"
        f"PRAGMA user_version = {version};")
    conn.close()
    with QueueStore(db) as store:
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        indexes = {r[0]: r[1] for r in store._conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index'")}
        assert "ix_ready_any" not in indexes and "available_at, id" not in indexes["ix_ready"]
        assert ids_of(store.lease("alice", 10, "c", 30)) == ["old-b", "old-a"]  # rowid order
        assert store.enqueue([msg(id="gone")]).duplicates == ["gone"]


def test_messages_available_together_go_out_in_enqueue_order_whatever_their_ids(store):
    res = store.enqueue([msg(id="order-9"), msg(id="order-10"), msg(), msg(id="aaa")])
    assert ids_of(store.lease("alice", 10, "c", 30)) == res.accepted
    store.enqueue([msg(id="z"), msg(id="y", priority="high"), msg(id="x")])
    assert ids_of(store.lease("alice", 10, "c", 30)) == ["y", "z", "x"]


def test_generated_ids_are_safe_file_names_and_differ_between_generators(clock):
    a, b = IdGenerator(clock), IdGenerator(clock)  # same clock, same millisecond
    ids = [a(), a(), b()]
    assert len(set(ids)) == 3 and all(check_message_id(i) is None for i in ids)


def test_locked_database_fails_a_single_item_enqueue_transiently(db, clock):
    store = QueueStore(db, clock=clock, busy_timeout_s=0.05)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(TransientError):  # one INSERT, its own transaction (no BEGIN)
            store.enqueue([msg()])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.counted() == store.recount() == {}
    assert len(store.enqueue([msg()]).accepted) == 1 and store.recount()
    store.close()


def test_dead_letters_of_many_recipients_are_counted_by_priority_only(store, db):
    """Unknown agents can have any name: a counter per dead (recipient, priority) grew with
    every new name and was scanned by every lease and tick. Dead letters are counted per
    priority; ready and leased stay per recipient."""
    store.enqueue([msg(f"ghost-{i}", priority="high" if i % 2 else "low") for i in range(500)]
                  + [msg("alice")])
    for leased in (store.lease(f"ghost-{i}", 1, "c", 30) for i in range(500)):
        store.nack([m.id for m in leased], "nobody home", retry=False)
    assert store.counted() == store.recount() == {
        ("dead", "*", "high"): 250, ("dead", "*", "low"): 250, ("ready", "alice", "normal"): 1}
    assert store.ready_counts() == {"alice": 1}
    assert store.stats()["depth"] == {"ready": 1, "leased": 0, "dead": 500, "total": 501}
    assert store.requeue(None) == 500  # and back: counted per recipient again
    assert store.ready_counts()["ghost-7"] == 1 and store.counted() == store.recount()
    with QueueStore(db) as reopened:  # counted from the table the same way
        assert reopened.counted() == store.counted()


def test_dead_letters_past_their_retention_are_deleted(store, clock):
    store.enqueue([msg(id="old-1"), msg(id="old-2"), msg(id="young")])
    store.nack([m.id for m in store.lease("alice", 2, "c", 30)], "boom", retry=False)
    clock.advance(100)
    store.nack([m.id for m in store.lease("alice", 1, "c", 30)], "boom", retry=False)
    clock.advance(50)
    assert store.purge_dead(older_than_s=120, limit=1) == 1  # at most limit per call
    assert store.purge_dead(older_than_s=120) == 1
    assert [m.id for m in store.dead_letters()] == ["young"]
    assert store.counted() == store.recount() and store.totals()["dead_expired"] == 2
    assert store.purge_dead(older_than_s=120) == 0


def test_recipients_with_waiting_messages_are_capped(tmp_path, clock):
    """A producer that invents a recipient per message (a bug) would make every delivery
    round, stats and health check walk them all: past max_recipients they are rejected."""
    with QueueStore(tmp_path / "cap.db", clock=clock, max_recipients=3) as store:
        res = store.enqueue([msg("a"), msg("b"), msg("c"), msg("d"), msg("a"), msg("e")])
        assert [i for i, _ in res.rejected] == [3, 5] and len(res.accepted) == 4
        assert "max_recipients" in res.rejected[0][1]
        assert store.enqueue([msg("c")]).accepted  # one that has messages waiting: fine
        for m in store.lease("c", 10, "w", 30):
            store.ack([m.id])
        assert store.enqueue([msg("d")]).accepted  # c has none waiting now: room for d
        assert set(store.ready_counts()) == {"a", "b", "d"}


def test_the_oldest_ready_time_is_one_scan_when_many_recipients_wait(store, clock, monkeypatch):
    from actors.queue import store as store_module

    store.enqueue([msg(f"r{i}", delay_s=i) for i in range(1, 6)] + [msg("late", delay_s=99)])
    per_pair = store.next_available_at()
    monkeypatch.setattr(store_module, "MIN_BY_PAIR_MAX", 2)
    assert store.next_available_at() == per_pair == clock() + 1


def test_purge_and_requeue_all_go_in_bounded_transactions(store, monkeypatch):
    from actors.queue import store as store_module

    monkeypatch.setattr(store_module, "BULK_ROWS", 2)
    store.enqueue([msg(id=f"m{i}") for i in range(5)] + [msg("bob", id="b1")])
    for m in store.lease("alice", 5, "c", 30):
        store.nack([m.id], "boom", retry=False)
    assert store.requeue(None) == 5 and store.stats()["depth"]["ready"] == 6
    assert store.purge("ready", "alice") == 5 and store.ready_counts() == {"bob": 1}
    assert store.counted() == store.recount() and store.totals()["purged"] == 5
