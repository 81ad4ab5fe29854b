"""The queue service: pure bookkeeping, then the real actor on a real swarm (multiprocTCPBase)."""
from __future__ import annotations

import contextlib
import doctest
import os
import re
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import msgpack
import psutil
import pytest

from actors.queue import core
from actors.queue.model import EnqueueResult, Message, QueueRepository
from actors.queue.service import QueueService
from actors.queue.store import QueueStore
from system import protocol
from system.admin import AdminClient
from system.launcher import connect
from tests.conftest import Swarm

AGENTS = ["Agent-1", "Agent-2"]


# -- pure core ------------------------------------------------------------------------------------
def test_docstring_examples():
    from actors.queue import commands
    assert doctest.testmod(core).failed == 0 and doctest.testmod(commands).failed == 0


def test_group_commit_splits_one_result_into_one_reply_per_request():
    g = core.GroupCommit(max_payload=100)
    g.add("p1", "e1", [{"recipient": "a", "text": "x", "id": "i1"}, "junk",
                       {"recipient": "a", "payload": b"\x00" * 101}])
    g.add("p2", "e2", [{"recipient": "a", "payload": b"\xa1x", "id": "i1"},
                       {"recipient": "b", "payload": b"\xa1y", "priority": 0, "id": "i2"},
                       {"recipient": "b", "payload": b"\xa1y", "priority": 9}])
    items, requests = g.take()
    assert len(g) == 0 and len(items) == 3 and items[2]["priority"] == "urgent"
    assert msgpack.unpackb(items[0]["payload"]) == {"text": "x"}
    result = EnqueueResult(accepted=["i1", "i2"], duplicates=["i1"], rejected=[],
                           ids=["i1", "i1", "i2"])
    (s1, e1, b1), (s2, e2, b2) = g.split(result, requests)
    assert (s1, e1, s2, e2) == ("p1", "e1", "p2", "e2")
    assert b1 == {"accepted": ["i1"], "duplicates": [], "ids": ["i1", None, None], "rejected": [
        [1, "item must be a map, not str"], [2, "payload of 101 bytes exceeds 100"]]}
    assert b2 == {"accepted": ["i2"], "duplicates": ["i1"], "ids": ["i1", "i2", None],
                  "rejected": [[2, "unknown priority 9"]]}
    assert (g.commits, g.committed_items, g.largest) == (1, 3, 3)


def _msg(mid: str, expires: float, created: float = 100.0) -> Message:
    return Message(mid, "r", "", "text", "normal", b"\xc0", {}, created, created, 1, 5, "leased",
                   lease_owner="o", lease_expires_at=expires)


def test_a_group_is_complete_once_every_active_producer_is_in():
    g = core.GroupCommit(max_payload=100, active_s=0.02)
    item = {"recipient": "a", "payload": b"\xa1x"}
    g.add("A", "e", [item], "A", now=0.0)
    assert g.complete(0.0)  # a lone producer never waits
    g.take()
    g.add("B", "e", [item], "B", now=0.001)
    assert not g.complete(0.001)  # A sent 1 ms ago: its next request is coming
    g.add("A", "e", [item], "A", now=0.002)
    assert g.complete(0.002)
    items, _ = g.take()
    assert len(items) == 2 and g.seq == 2
    g.add("B", "e", [item], "B", now=0.05)  # A has been quiet for longer than active_s
    assert g.complete(0.05) and set(g.seen) == {"B"}
    g.add("C", "e", [item], "", now=0.06)  # group commit off: producers are not tracked
    assert set(g.seen) == {"B"}


def test_in_flight_tracks_owners_holders_expiry_and_latency_sources():
    f = core.InFlight()
    f.add("sub:a", [_msg("1", 10), _msg("2", 20)], "tcp:a")
    f.add("pull:b", [_msg("3", 30)], "tcp:b")
    f.add("team", [_msg("4", 30)], "tcp:t1")
    f.add("team", [_msg("5", 30)], "tcp:t2")
    assert f.per_owner() == {"pull:b": 1, "sub:a": 2, "team": 2}
    # a sender settles what was sent to its address or leased under the owner it names
    assert f.held_by(["1", "3", "9"], "tcp:a", None) == ({"sub:a": ["1"], None: ["9"]}, ["3"])
    assert f.held_by(["4", "5"], "tcp:t1", None) == ({"team": ["4"]}, ["5"])
    assert f.held_by(["4", "5"], "tcp:x", "team") == ({"team": ["4", "5"]}, [])
    assert f.expire(15) == Counter({"sub:a": 1})
    f.add("sub:c", [_msg("2", 40)], "tcp:c")  # re-leased to someone else
    assert f.held_by(["2"], "tcp:a", None) == ({}, ["2"])
    assert f.per_owner() == {"pull:b": 1, "sub:c": 1, "team": 2}
    assert f.pop(["2", "3", "4", "5", "nope"]) == [100.0] * 4 and f.per_owner() == {}
    assert not f.count  # owners with nothing in flight are forgotten, not kept at 0
    f.add("sub:d", [_msg("6", 50), _msg("7", 50)], "tcp:d")
    f.add("sub:e", [_msg("8", 50)], "tcp:e")
    f.forget_owner("sub:d")  # a dropped subscription: its leases were released
    assert f.per_owner() == {"sub:e": 1} and set(f.by_id) == {"8"}


def test_stats_lists_stay_small_whatever_their_number():
    from actors.queue import service

    counts = {f"r{i:05d}": i for i in range(service.STATS_LIST_MAX + 500)}
    top = service._largest(counts)
    assert len(top) == service.STATS_LIST_MAX and min(top.values()) == 500
    assert list(top) == sorted(top) and service._largest({"a": 1}) == {"a": 1}


def test_a_retention_backlog_is_deleted_one_batch_per_tick():
    """Months of dead letters reaching retention at once took seconds in one tick: the actor
    missed its health pings and was killed, again and again."""
    from actors.queue.model import PURGE_LIMIT

    svc = QueueService()
    svc.retention_s, svc.dead_retention_s, svc.purge_every_s = 86_400.0, 86_400.0, 60.0
    left = {"acked": PURGE_LIMIT + 5, "dead": 2 * PURGE_LIMIT + 3}
    logged = []

    class Store:
        def _take(self, kind, limit):
            n = min(left[kind], limit)
            left[kind] -= n
            return n

        def purge_acked(self, older_than_s, limit):
            return self._take("acked", limit)

        def purge_dead(self, older_than_s, limit):
            return self._take("dead", limit)

    svc.store = Store()
    svc.log = lambda level, event, text, **kw: logged.append(text)
    rounds = 0
    while True:
        svc._purge_retained()
        rounds += 1
        if not svc.purge_more:
            break
    assert rounds == 3 and left == {"acked": 0, "dead": 0}
    assert logged == [f"deleted {2 * PURGE_LIMIT + 3} dead letters older than "
                      + "dead_retention_s (1 days)"]


def test_a_consumer_renews_at_least_three_times_per_subscription_ttl():
    from actors.queue.client import QueueConsumer

    consumer, looked_up = QueueConsumer(), []
    consumer._queue_lookup = lambda: looked_up.append(1)
    consumer._queue_spec, consumer._queue_subscribed_at = {"recipient": "r"}, time.monotonic() - 1.2
    consumer.queue_keepalive()
    assert looked_up == []  # default: every queue_resubscribe_s (5 s)
    consumer._queue_ttl_s = 3.0  # as the subscribe reply said
    consumer.queue_keepalive()
    assert looked_up == [1]


def test_agent_throttle_caps_gaps_and_windows_per_sending_agent():
    agents = {"a", "b", "c"}.__contains__
    t = core.AgentThrottle(agents, min_gap_s=1.0, per_minute=3, per_hour=4)

    def send(sender, recipient, now):
        admit, admitted = t.admitter(now)
        why = admit(sender, recipient)
        t.record(admitted, now)  # as after a commit
        return why

    assert send("a", "b", 0.0) is None
    assert send("a", "b", 0.5) == ("throttled: a sent a message to an agent 0.5s ago "
                                   "(agent_throttle.min_gap_s 1); retry in 1s")
    assert send("a", "c", 1.0) is None and send("a", "b", 2.0) is None
    assert send("b", "a", 2.0) is None  # each agent has its own windows
    assert send("a", "ops", 2.5) is None and send("ops", "a", 2.5) is None  # a person
    assert send("", "a", 2.5) is None  # no sender given
    assert send("a", "b", 30.0) == ("throttled: a sent 3 messages to agents in the last 60s "
                                    "(agent_throttle.per_minute 3); retry in 30s")
    assert send("a", "b", 60.0) is None  # the first one left the minute
    assert "per_hour 4); retry in 3400s" in send("a", "b", 200.0)  # the first at 0
    assert send("a", "b", 3600.0) is None and t.refused == 3
    t.forget_idle(3600.0 + 3601.0)
    assert t.sent == {}
    off = core.AgentThrottle(agents)
    assert off.span == 0


def test_agent_throttle_waits_for_every_cap_and_counts_a_batch_as_sent_together():
    t = core.AgentThrottle({"a", "b"}.__contains__, min_gap_s=5.0, per_minute=2, per_hour=2)
    admit, admitted = t.admitter(0.0)
    assert admit("a", "b") is None  # one in a batch passes; the next one in it is 0 s after it
    assert admit("a", "b") == ("throttled: a sent a message to an agent 0.0s ago "
                               "(agent_throttle.min_gap_s 5); retry in 5s")
    assert admitted == {"a": 1}
    t.record(admitted, 0.0)
    admit, admitted = t.admitter(30.0)  # the minute and the gap would say less: the hour rules
    assert admit("a", "b") is None
    t.record(admitted, 30.0)
    admit, _ = t.admitter(31.0)
    assert admit("a", "b") == ("throttled: a sent 2 messages to agents in the last 3600s "
                               "(agent_throttle.per_hour 2); retry in 3569s")
    admit, _ = t.admitter(3600.0 - 0.04)
    assert admit("a", "b").endswith("retry in 1s")  # rounded up, never "0s"
    admit, _ = t.admitter(3600.0)
    assert admit("a", "b") is None


def test_the_store_asks_about_new_items_only_and_rejects_refused_ones_by_index(tmp_path):
    from actors.queue.store import QueueStore

    asked = []

    def admit(sender, recipient):
        asked.append((sender, recipient))
        return "no" if recipient == "refused" else None

    with QueueStore(tmp_path / "q.db") as store:
        store.enqueue([{"recipient": "r", "payload": b"x", "id": "old"}])
        items = [{"recipient": "r", "payload": b"x", "id": "old", "sender": "s"},
                 {"recipient": "refused", "payload": b"x", "id": "n1", "sender": "s"},
                 {"recipient": "r", "payload": b"x", "id": "n2", "sender": "s"}]
        result = store.enqueue(items, admit=admit)
    assert asked == [("s", "refused"), ("s", "r")]  # not the duplicate
    assert result.duplicates == ["old"] and result.accepted == ["n2"]
    assert result.rejected == [(1, "no")] and result.ids == ["old", None, "n2"]


def test_allocate_shares_a_round_fairly_and_rotates_who_goes_first():
    assert core.allocate({"a": 100, "b": 1, "c": 3}, 9, 0) == [("a", 5), ("b", 1), ("c", 3)]
    assert core.allocate({"a": 100, "b": 100}, 3, 0) == [("a", 2), ("b", 1)]
    assert core.allocate({"a": 100, "b": 100}, 3, 1) == [("b", 2), ("a", 1)]
    assert core.allocate({"a": 100, "b": 0, "c": 100}, 1, 1) == [("c", 1)]
    served = [core.allocate({"a": 50, "b": 50, "c": 50}, 1, t)[0][0] for t in range(6)]
    assert served == ["a", "b", "c", "a", "b", "c"]  # a limit of 1 still reaches everyone
    assert core.allocate({}, 5, 0) == [] and core.allocate({"a": 3}, 0, 0) == []
    busy = dict.fromkeys("abcd", 100)
    assert core.allocate(busy, 10, 0) == [("a", 3), ("b", 3), ("c", 2), ("d", 2)]
    assert core.allocate(busy, 5, 0) == [("a", 2), ("b", 1), ("c", 1), ("d", 1)]
    assert core.allocate({"a": 2}, 10, 7) == [("a", 2)]


def test_a_push_failing_after_the_reply_is_recorded_and_left_to_the_pump():
    """After a request was answered, a failing refill must not escape: the base would answer
    the request a second time (with an error)."""
    svc = QueueService()
    logged, pumps = [], []
    svc.log = lambda level, event, text, **kw: logged.append(event)
    svc._schedule_pump = lambda delay=0.0: pumps.append(delay)

    def push(sub):
        raise sqlite3.OperationalError("disk I/O error")

    svc._push = push
    svc._refill(["a subscription"])
    assert logged == ["push_failed"] and pumps == [0.5]
    assert svc.error_stats.by_class == {"storage": 1}


def test_rates_latency_and_health():
    r = core.RateWindow(window_s=60)
    r.sample(0, {"enqueued": 0, "acked": 0})
    r.sample(30, {"enqueued": 300, "acked": 30})
    assert r.rates(60, {"enqueued": 600, "acked": 60})["enqueue"] == 10.0
    r.sample(100, {"enqueued": 1000})
    assert r.samples[0][0] == 30  # older than the window is dropped
    lat = core.LatencyWindow(size=100)
    lat.add(10.0, [10.0 - i / 1000 for i in range(1, 101)])
    assert lat.percentiles(10.0) == {"p50": 51.0, "p95": 96.0, "p99": 100.0, "samples": 100}
    assert lat.percentiles(100.0)["samples"] == 0
    stats = {"depth": {"ready": 5, "leased": 0, "dead": 0, "total": 5}, "oldest_ready_age_s": 2}
    disk = core.StorageState()
    kw = {"max_depth": 10, "max_age_s": 60, "fail_after": 3, "storage": disk}
    assert core.health(stats, **kw)[0] == "ok"
    assert core.health(stats, **{**kw, "max_depth": 4})[1].startswith("depth 5 > 4")
    assert "oldest ready" in core.health(stats, **{**kw, "max_age_s": 1})[1]
    disk.failed(sqlite3.OperationalError("disk I/O error"), now=0.0)
    assert core.health(stats, **kw) == (
        "degraded", ("storage error: OperationalError: disk I/O error (ready 5, leased 0, "
                     "dead 0, oldest 2.0s)"))
    disk.failed(sqlite3.OperationalError("disk I/O error"), now=1.0)
    disk.failed(sqlite3.OperationalError("disk I/O error"), now=2.0)
    assert core.health(stats, **kw)[1].startswith(
        "storage error: OperationalError: disk I/O error (3 storage errors in a row; ready 5")
    disk.recovered(now=3.0)
    assert core.health(stats, **kw)[0] == "ok"


def test_subscriptions_are_idempotent_per_address_and_target():
    subs = core.Subscriptions("inc")
    a, _ = subs.subscribe("A", "tcp:a", "work", None, 5, 10, 30.0, now=0.0)
    again, replaced = subs.subscribe("A", "tcp:a", "work", None, 7, 10, 30.0, now=0.0)
    assert again is a and a.max_in_flight == 7 and replaced == []
    b, _ = subs.subscribe("B", "tcp:b", None, "disc*", 5, 10, 30.0, now=0.0)
    assert b.matches("discord") and not b.matches("work") and a.matches("work")
    assert subs.by_owner(b.owner) is b
    assert [s.id for s in subs.remove("tcp:a")] == [a.id] and list(subs.subs) == [b.id]
    # a named consumer that comes back from a new address replaces its old subscription
    w1, _ = subs.subscribe("W1", "tcp:w1", "work", None, 5, 10, 30.0, consumer="worker", now=0.0)
    other, _ = subs.subscribe("X", "tcp:x", "work", None, 5, 10, 30.0, consumer="other", now=0.0)
    w2, replaced = subs.subscribe("W2", "tcp:w2", "work", None, 5, 10, 30.0, consumer="worker",
                                  now=0.0)
    assert replaced == [w1] and w2.id != w1.id and set(subs.subs) == {b.id, other.id, w2.id}
    route = core.InboxRoute(True, ["alice"], "Agent-*")
    assert route("alice") and route("Agent-9") and not route("bob")
    assert not core.InboxRoute(False, ["alice"], "Agent-*")("alice")


def test_a_restarted_subscriber_gets_what_its_old_self_held_at_once(make_swarm):
    """SIGKILL a consumer holding messages (30 s visibility): its restart subscribes under
    the same name, which drops the dead subscription and releases its leases, instead of
    the dead one taking batches until its leases expire."""
    swarm = make_swarm({"services": {"queue": {"enabled": True},
                                     "holder": consumer("kept", "hold", 10, visibility_s=30)}})
    swarm.start()
    enqueue(swarm, [text("kept", f"k{i}", id=f"k-{i}") for i in range(3)])
    assert wait(lambda: events(swarm, "holder")["held"] == 3, what="held by the first holder")
    os.kill(swarm.service("holder")["pid"], signal.SIGKILL)
    swarm.wait_for(lambda s: s["services"]["holder"]["restarts"] == 1
                   and s["services"]["holder"]["healthy"], what="holder restarted")
    got = wait(lambda: (e := events(swarm, "holder"))["held"] == 3 and e, timeout=10,
               what="redelivered to the restarted holder well before 30 s")
    assert got["redelivered"] == {} and got["distinct"] == 3  # this incarnation saw each once
    subs = stats(swarm)["subscriptions"]
    assert len(subs) == 1 and subs[0]["in_flight"] == 3


def test_subscriptions_not_renewed_expire():
    subs = core.Subscriptions("inc")
    quiet, _ = subs.subscribe("a1", "tcp:a1", "quiet", None, 10, 10, 30.0, now=100.0)
    busy, _ = subs.subscribe("a2", "tcp:a2", "busy", None, 10, 10, 30.0, now=100.0)
    assert subs.expire(150.0, 60) == []
    assert subs.subscribe("a2", "tcp:a2", "busy", None, 10, 10, 30.0, now=150.0)[0] is busy
    assert subs.expire(161.0, 60) == [quiet] and list(subs.subs.values()) == [busy]


def test_a_vanished_subscriber_of_a_quiet_recipient_is_dropped_and_releases_its_leases(
        make_swarm):
    """Nothing tells the queue that a subscriber is gone while its recipient is quiet (no
    lease to expire): subscriptions that are not renewed expire; what they held goes out again
    at once instead of at the end of a 30 s lease."""
    swarm = make_swarm({"services": {"queue": {"enabled": True, "subscription_ttl_s": 3}}})
    swarm.start()
    queue = protocol.address_from_wire(
        AdminClient(swarm.config).call(protocol.ADMIN_LOOKUP, {"name": "queue"})["addr"])
    with connect(swarm.config).private() as ctx:
        for target in ({"topic": "nobody-*"}, {"recipient": "held"}):
            ok = protocol.decode(ctx.ask(queue, protocol.QUEUE_SUBSCRIBE.encode(
                {**target, "visibility_s": 30}), 5))
            assert ok.t == "ok", ok
        enqueue(swarm, [text("held", "x", id="held-1")])
        got = protocol.decode(ctx.listen(5))
        assert got.t == "queue.deliver" and [m["id"] for m in got.b["messages"]] == ["held-1"]
    assert len(stats(swarm)["subscriptions"]) == 2  # the client is gone; nobody renews
    wait(lambda: stats(swarm)["subscriptions"] == [], timeout=8, what="subscriptions expired")
    leased = ask(swarm, protocol.QUEUE_LEASE, {"recipient": "held"}).b["messages"]
    assert [(m["id"], m["attempts"]) for m in leased] == [("held-1", 2)]  # released, not lost
    log = (swarm.dir / "data" / "logs" / "swarm.log").read_text()
    assert log.count("not renewed for 3s") == 2


def test_dead_letters_expire_after_their_retention(make_swarm):
    swarm = make_swarm({"agents": {"names": ["Agent-1"]}, "services": {"queue": {
        "enabled": True, "dead_retention_s": 1, "purge_interval_s": 0.5}}})
    swarm.start()
    enqueue(swarm, [text("Agent-404", "nobody home", id="gone-1")])
    wait(lambda: stats(swarm)["depth"]["dead"] == 1, what="dead-lettered")
    wait(lambda: stats(swarm)["depth"]["dead"] == 0, timeout=5, what="expired")
    log = (swarm.dir / "data" / "logs" / "swarm.log").read_text()
    assert '"event": "dead_letters_expired"' in log and "deleted 1 dead letters" in log


def test_release_leases_returns_an_owners_leases_at_their_old_position(tmp_path):
    with QueueStore(tmp_path / "q.db", default_max_attempts=2) as store:
        store.enqueue([{"recipient": "a", "payload": b"\xc0", "id": f"m{i}"} for i in range(3)])
        assert len(store.lease("a", 2, "inbox", 60)) == 2
        assert len(store.lease("a", 1, "other", 60)) == 1
        assert store.release_leases("inbox") == 2
        assert [m.id for m in store.lease("a", 5, "inbox", 60)] == ["m0", "m1"]
        assert store.release_leases("inbox") == 2  # second attempt was the last: dead
        assert [m.id for m in store.dead_letters()] == ["m0", "m1"]
        assert store.get("m2").state == "leased"


# -- the actor on a real swarm ---------------------------------------------------------------------
def consumer(recipient: str, mode: str, max_in_flight: int, **extra) -> dict:
    return {"actor": "tests.queue_consumer:Consumer", "depends_on": ["queue"],
            "options": {"recipient": recipient, "mode": mode, "max_in_flight": max_in_flight,
                        **extra}}


@pytest.fixture(scope="module")
def qs(tmp_path_factory):
    s = Swarm(tmp_path_factory.mktemp("queue"), {
        "agents": {"names": AGENTS},
        "services": {
            "queue": {"enabled": True, "retry_base_s": 0.2, "retry_max_s": 0.4,
                      "max_attempts": 3, "group_commit_ms": 5, "synchronous": "FULL"},
            "worker": consumer("work", "ack", 20),
            "holder": consumer("held", "hold", 5),
            "expirer": consumer("flaky", "hold", 3, visibility_s=0.6),
        }})
    s.start()
    yield s
    s.cleanup()


def enqueue(swarm: Swarm, items: list[dict]) -> dict:
    reply = swarm.ask("queue", protocol.QUEUE_ENQUEUE, {"items": items})
    assert reply.t == "ok", reply.b
    return reply.b


def ask(swarm: Swarm, mtype, body=None) -> protocol.Envelope:
    return swarm.ask("queue", mtype, body)


def text(recipient: str, body: str, **kw) -> dict:
    return {"recipient": recipient, "payload": msgpack.packb({"text": body}), **kw}


def events(swarm: Swarm, name: str) -> dict:
    return swarm.ask(name, protocol.TEST_EVENTS).b


def wait(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stats(swarm: Swarm) -> dict:
    return AdminClient(swarm.config).call(protocol.ADMIN_QUEUE, {"op": "stats"})


def test_enqueue_lease_ack_through_the_actor(qs):
    reply = enqueue(qs, [text("pull-a", "low", priority="low", id="pa-1"),
                         text("pull-a", "urgent", priority="urgent", id="pa-2"),
                         text("pull-a", "normal", id="pa-3")])
    assert reply == {"accepted": ["pa-1", "pa-2", "pa-3"], "duplicates": [], "rejected": [],
                     "ids": ["pa-1", "pa-2", "pa-3"]}
    # each ask comes from a new client address: the owner names the consumer across them
    leased = ask(qs, protocol.QUEUE_LEASE, {"recipient": "pull-a", "limit": 10,
                                            "owner": "puller"}).b["messages"]
    assert [m["id"] for m in leased] == ["pa-2", "pa-3", "pa-1"]
    assert msgpack.unpackb(leased[0]["payload"]) == {"text": "urgent"}  # bytes untouched
    assert leased[0]["attempts"] == 1
    assert ask(qs, protocol.QUEUE_LEASE, {"recipient": "pull-a"}).b["messages"] == []
    ids = ["pa-1", "pa-2", "pa-3", "nope"]
    # not the holder: a new address, no owner named
    assert ask(qs, protocol.QUEUE_ACK, {"ids": ids}).b == {
        "acked": 0, "not_held": ["pa-1", "pa-2", "pa-3"]}
    assert ask(qs, protocol.QUEUE_ACK, {"ids": ids, "owner": "puller"}).b == {"acked": 3}
    assert "pull-a" not in stats(qs)["ready_by_recipient"]


def test_pull_lease_by_topic_serves_every_matching_recipient(qs):
    enqueue(qs, [text("topic-a", f"a{i}", id=f"ta-{i}") for i in range(20)]
            + [text("topic-b", "b0", id="tb-0"), text("other", "o", id="to-0")])
    got = ask(qs, protocol.QUEUE_LEASE, {"topic": "topic-*", "limit": 4, "owner": "t"}
              ).b["messages"]
    assert len(got) == 4 and "tb-0" in [m["id"] for m in got]  # a busy topic-a cannot starve b
    rest = ask(qs, protocol.QUEUE_LEASE, {"topic": "topic-*", "limit": 100, "owner": "t"}
               ).b["messages"]
    assert sorted(m["id"] for m in got + rest) == sorted([f"ta-{i}" for i in range(20)]
                                                        + ["tb-0"])
    assert ask(qs, protocol.QUEUE_ACK, {"ids": [m["id"] for m in got + rest], "owner": "t"}
               ).b == {"acked": 21}
    for body in ({}, {"recipient": "x", "topic": "y"}):
        bad = ask(qs, protocol.QUEUE_LEASE, body)
        assert bad.t == "error" and "exactly one of recipient or topic" in bad.b["detail"]


def test_a_late_ack_or_nack_never_touches_a_message_leased_to_someone_else(qs):
    enqueue(qs, [text("late", "x", id="late-1")])
    first = ask(qs, protocol.QUEUE_LEASE, {"recipient": "late", "owner": "a",
                                           "visibility_s": 0.3}).b["messages"]
    assert [m["id"] for m in first] == ["late-1"]
    second = wait(lambda: ask(qs, protocol.QUEUE_LEASE, {"recipient": "late", "owner": "b"}
                              ).b["messages"], what="the expired lease given to b")
    assert second[0]["attempts"] == 2
    assert ask(qs, protocol.QUEUE_NACK, {"ids": ["late-1"], "owner": "a", "retry": False}
               ).b == {"retried": [], "dead": [], "not_held": ["late-1"]}
    assert ask(qs, protocol.QUEUE_ACK, {"ids": ["late-1"], "owner": "a"}).b == {
        "acked": 0, "not_held": ["late-1"]}
    assert ask(qs, protocol.QUEUE_ACK, {"ids": ["late-1"], "owner": "b"}).b == {"acked": 1}


def test_large_messages_travel_in_replies_and_deliveries_a_receiver_can_decode(qs):
    """18 messages of ~1 MB (the per-item limit) to one recipient: one lease or one delivery
    of all of them would be ~18 MB, over the 16 MiB a receiver decodes."""
    big = msgpack.packb("y" * 1_000_000)
    for recipient in ("huge-pull", "huge-push"):
        for part in range(2):
            items = [{"recipient": recipient, "payload": big, "id": f"{recipient}-{part}-{i}"}
                     for i in range(9)]
            assert len(enqueue(qs, items)["accepted"]) == 9
    pulled = []
    while got := ask(qs, protocol.QUEUE_LEASE, {"recipient": "huge-pull", "limit": 100,
                                                "owner": "big"}).b["messages"]:
        assert len(got) <= 8
        pulled += [m["id"] for m in got]
    assert len(set(pulled)) == 18
    assert ask(qs, protocol.QUEUE_ACK, {"ids": pulled, "owner": "big"}).b == {"acked": 18}
    queue = protocol.address_from_wire(
        AdminClient(qs.config).call(protocol.ADMIN_LOOKUP, {"name": "queue"})["addr"])
    with connect(qs.config).private() as ctx:
        reply = protocol.decode(ctx.ask(queue, protocol.QUEUE_SUBSCRIBE.encode(
            {"recipient": "huge-push", "max_in_flight": 100}), 10))
        assert reply.t == "ok"
        pushed: list[str] = []
        while len(pushed) < 18:
            env = protocol.decode(ctx.listen(10))
            assert isinstance(env, protocol.Envelope) and env.t == "queue.deliver", env
            pushed += [m["id"] for m in env.b["messages"]]
        ctx.tell(queue, protocol.QUEUE_UNSUBSCRIBE.encode({}))
        ctx.tell(queue, protocol.QUEUE_ACK.encode({"ids": pushed, "quiet": True}))
    assert sorted(pushed) == sorted(f"huge-push-{p}-{i}" for p in range(2) for i in range(9))
    wait(lambda: not stats(qs)["in_flight"].get(f"sub:{reply.b['sub']}"), what="pushed acked")


def test_duplicate_ids_are_reported_not_stored_twice(qs):
    assert enqueue(qs, [text("dedup", "one", id="d-1")])["accepted"] == ["d-1"]
    reply = enqueue(qs, [text("dedup", "again", id="d-1"), text("dedup", "two", id="d-2"),
                         text("dedup", "two again", id="d-2")])
    assert reply["accepted"] == ["d-2"] and reply["duplicates"] == ["d-1", "d-2"]
    assert reply["ids"] == ["d-1", "d-2", "d-2"]
    assert stats(qs)["ready_by_recipient"]["dedup"] == 2


def test_concurrent_enqueues_share_commits(qs):
    addr = protocol.address_from_wire(
        AdminClient(qs.config).call(protocol.ADMIN_LOOKUP, {"name": "queue"})["addr"])
    before = stats(qs)["group_commit"]
    n, asys, replies = 40, connect(qs.config), []
    with contextlib.ExitStack() as stack:  # four producers, each with its own address
        contexts = [stack.enter_context(asys.private()) for _ in range(4)]
        for i in range(n):
            contexts[i % 4].tell(addr, protocol.QUEUE_ENQUEUE.encode(
                {"items": [text("gc", f"{i}")]}))
        for ctx in contexts:
            for _ in range(n // 4):
                data = ctx.listen(10)
                assert data is not None, f"only {len(replies)} of {n} enqueues answered"
                replies.append(protocol.decode(data))
    assert all(r.t == "ok" and len(r.b["accepted"]) == 1 for r in replies)
    after = stats(qs)["group_commit"]
    assert after["items"] - before["items"] == n
    assert after["commits"] - before["commits"] < n  # several producers per transaction
    assert after["largest"] > 1


def test_subscriber_gets_batches_and_acks_everything(qs):
    ids = enqueue(qs, [text("work", f"job {i}") for i in range(100)])["accepted"]
    seen = wait(lambda: (e := events(qs, "worker"))["acked"] >= 100 and e, what="100 acked")
    assert seen["distinct"] == 100 and not seen["redelivered"]
    assert max(seen["batches"]) <= 20  # never more than max_in_flight at once
    wait(lambda: "work" not in stats(qs)["ready_by_recipient"], what="work drained")
    assert ask(qs, protocol.QUEUE_ACK, {"ids": ids}).b == {"acked": 0}  # already acked


def test_in_flight_limit_is_respected_until_acks_free_capacity(qs):
    enqueue(qs, [text("held", f"h{i}") for i in range(12)])
    wait(lambda: events(qs, "holder")["held"] == 5, what="5 held")
    time.sleep(0.5)
    e = events(qs, "holder")
    assert e["received"] == 5 and e["max_held"] == 5
    sub = next(s for s in stats(qs)["subscriptions"] if s["recipient"] == "held")
    assert sub["in_flight"] == 5 and sub["max_in_flight"] == 5
    for expected in (10, 12):
        qs.ask("holder", protocol.TEST_ECHO, {"cmd": "ack_held"})
        wait(lambda n=expected: events(qs, "holder")["received"] == n, what=f"{expected} received")
        assert events(qs, "holder")["max_held"] == 5
    qs.ask("holder", protocol.TEST_ECHO, {"cmd": "ack_held"})
    wait(lambda: "held" not in stats(qs)["in_flight"] and "held" not in
         stats(qs)["ready_by_recipient"], what="held drained")


def test_unacked_deliveries_are_redelivered_after_the_lease(qs):
    ids = enqueue(qs, [text("flaky", "a"), text("flaky", "b")])["accepted"]
    seen = wait(lambda: (e := events(qs, "expirer"))["redelivered"].keys() >= set(ids) and e,
                timeout=8, what="redelivery")
    assert all(seen["redelivered"][i][:2] == [1, 2] for i in ids)  # attempt counted each time
    qs.ask("expirer", protocol.TEST_ECHO, {"cmd": "mode", "mode": "ack"})
    qs.ask("expirer", protocol.TEST_ECHO, {"cmd": "ack_held"})
    wait(lambda: not stats(qs)["depth"]["leased"] or "flaky" not in str(stats(qs)["in_flight"]),
         what="flaky acked")


def test_nack_backs_off_then_dead_letters_then_requeue(qs):
    enqueue(qs, [text("retry-me", "x", id="r-1")])
    times, errors = [], []
    for attempt in (1, 2, 3):
        got = wait(lambda: ask(qs, protocol.QUEUE_LEASE, {"recipient": "retry-me", "owner": "r"}
                               ).b["messages"], what=f"attempt {attempt}")
        times.append(time.monotonic())
        assert got[0]["attempts"] == attempt
        reply = ask(qs, protocol.QUEUE_NACK, {"ids": ["r-1"], "error": f"boom {attempt}",
                                              "owner": "r"}).b
        errors.append(reply)
    assert errors[0] == {"retried": ["r-1"], "dead": []}
    assert errors[2] == {"retried": [], "dead": ["r-1"]}
    assert times[1] - times[0] >= 0.18 and times[2] - times[1] >= 0.38  # 0.2 s, then 0.4 s
    dead = ask(qs, protocol.QUEUE_DLQ, {}).b["messages"]
    r1 = next(m for m in dead if m["id"] == "r-1")
    assert r1["last_error"] == "boom 3" and r1["attempts"] == 3
    assert ask(qs, protocol.QUEUE_REQUEUE, {"ids": ["r-1", "zz"]}).b == {
        "requeued": 1, "missing": ["zz"]}
    again = ask(qs, protocol.QUEUE_LEASE, {"recipient": "retry-me", "owner": "r"}).b["messages"]
    assert again[0]["id"] == "r-1" and again[0]["attempts"] == 1
    assert ask(qs, protocol.QUEUE_NACK, {"ids": ["r-1"], "retry": False, "owner": "r"}
               ).b["dead"] == ["r-1"]


def test_inbox_files_are_written_with_the_header_block(qs):
    reply = AdminClient(qs.config).call(protocol.ADMIN_SEND, {"items": [
        text("Agent-1", "Hello **agent**", id="in-1", sender="tester", priority="high")]})
    assert reply["accepted"] == ["in-1"]
    path = qs.dir / "agents" / "Agent-1" / "inbox" / "in-1.md"
    wait(path.exists, what="inbox file")
    lines = path.read_text().splitlines()
    assert lines[:5] == ["# Message in-1", "From: tester", "To: Agent-1", "Priority: high",
                         "Type: text"]
    assert lines[5].startswith("Timestamp: ") and lines[6] == "Message-Id: in-1"
    assert lines[7:] == ["", "Hello **agent**"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["in-1.md"]


def test_unknown_agent_is_dead_lettered(qs):
    enqueue(qs, [text("Agent-77", "anyone?", id="lost-1")])
    dead = wait(lambda: [m for m in ask(qs, protocol.QUEUE_DLQ, {}).b["messages"]
                         if m["id"] == "lost-1"], what="dead letter")
    assert dead[0]["last_error"] == "unknown agent 'Agent-77'" and dead[0]["attempts"] == 1
    assert not (qs.dir / "agents" / "Agent-77").exists()


def test_corrupt_and_invalid_queue_messages_get_errors_and_the_queue_keeps_running(qs):
    pid = qs.service("queue")["pid"]
    found = AdminClient(qs.config).call(protocol.ADMIN_LOOKUP, {"name": "queue"})
    with connect(qs.config).private() as ctx:
        addr = protocol.address_from_wire(found["addr"])
        for data, code in ((b"\xc1", "bad_message"), (b"\x93\x01\x02", "bad_message"),
                           (msgpack.packb({"t": "queue.nosuch", "id": "x1", "ts": 1.0, "b": {}}),
                            "unknown_type"),
                           (protocol.QUEUE_ACK.encode({"ids": "not-a-list"}), "bad_message"),
                           (protocol.QUEUE_ACK.encode({"ids": [1, 2]}), "permanent"),
                           (protocol.QUEUE_SUBSCRIBE.encode({}), "permanent"),
                           (protocol.QUEUE_SUBSCRIBE.encode({"recipient": "Agent-1"}), "permanent"),
                           (protocol.QUEUE_LEASE.encode({"recipient": "x", "limit": -1}),
                            "permanent"),
                           (protocol.QUEUE_PURGE.encode({"state": "everything"}), "permanent"),
                           # a glob compiles in time quadratic in its length: names are bounded
                           (protocol.QUEUE_LEASE.encode({"topic": "[" * 12_000}), "permanent"),
                           (protocol.QUEUE_SUBSCRIBE.encode({"topic": "x" * 201}), "permanent"),
                           (protocol.QUEUE_LEASE.encode({"recipient": "x", "owner": "o" * 201}),
                            "permanent")):
            reply = protocol.decode(ctx.ask(addr, data, 10))
            assert reply.t == "error" and reply.b["code"] == code, (data, reply)
    reply = enqueue(qs, [{"recipient": "x"}, {"recipient": "x", "payload": b"\xc0", "bogus": 1},
                         {"recipient": "", "payload": b"\xc0"}, text("x", "big" * 400_000),
                         {"recipient": "x", "text": 5}, text("x", "fine", id="../etc")])
    assert reply["accepted"] == [] and [r[0] for r in reply["rejected"]] == [0, 1, 2, 3, 4, 5]
    assert "required" in reply["rejected"][0][1] and "bogus" in reply["rejected"][1][1]
    assert "exceeds" in reply["rejected"][3][1] and "unsafe id" in reply["rejected"][5][1]
    assert stats(qs)["health"]["status"] in ("ok", "degraded")
    assert qs.service("queue")["pid"] == pid and qs.service("queue")["restarts"] == 0


# -- crash safety ---------------------------------------------------------------------------------
def inbox_files(root) -> list[str]:
    names = []
    for agent in root.iterdir() if root.exists() else []:
        inbox = agent / "inbox"
        if inbox.is_dir():
            names += [e.name for e in os.scandir(inbox)]
    return names


def test_sigkill_during_inbox_delivery_loses_nothing_and_duplicates_nothing(make_swarm):
    agents = [f"Agent-{i}" for i in range(1, 5)]
    swarm = make_swarm({"agents": {"names": agents}, "services": {"queue": {
        "enabled": True, "batch_max": 500, "max_depth_warn": 1000}}})
    swarm.start()
    root = swarm.dir / "agents"
    n = 10_000
    ids = [f"k{i:05d}" for i in range(n)]
    client = AdminClient(swarm.config)
    for start in range(0, n, 500):
        reply = client.call(protocol.ADMIN_SEND, {"items": [
            text(agents[i % 4], f"message {i}", id=ids[i]) for i in range(start, start + 500)]})
        assert len(reply["accepted"]) == 500
    degraded = swarm.wait_for(lambda s: s["services"]["queue"]["health"] == "degraded",
                              what="queue degraded by depth")["services"]["queue"]
    assert "> 1000" in degraded["detail"] and degraded["healthy"]
    delivered = wait(lambda: (k := len(inbox_files(root))) >= 1500 and k, timeout=30,
                     what="delivery under way")
    victim = swarm.service("queue")["pid"]
    os.kill(victim, signal.SIGKILL)
    assert delivered < n, "delivery finished before the kill; the test proves nothing"
    swarm.wait_for(lambda s: s["services"]["queue"]["restarts"] == 1
                   and s["services"]["queue"]["state"] == "running", what="queue restarted")
    wait(lambda: stats(swarm)["depth"]["total"] == 0, timeout=60, what="queue drained")
    files = inbox_files(root)
    assert len(files) == n and sorted(files) == sorted(f"{i}.md" for i in ids)
    one = (root / "Agent-2" / "inbox" / "k00001.md").read_text()
    assert "Message-Id: k00001" in one and one.endswith("message 1\n")
    # a producer retrying after the crash is told the messages are duplicates
    reply = client.call(protocol.ADMIN_SEND, {"items": [text("Agent-1", "again", id=i)
                                                       for i in ids[:500]]})
    assert reply["accepted"] == [] and len(reply["duplicates"]) == 500
    assert stats(swarm)["depth"]["total"] == 0


def test_unopenable_database_parks_the_queue_as_failed(make_swarm):
    swarm = make_swarm({"services": {"queue": {"enabled": True, "db_path": "/dev/null/q.db"}}})
    proc = swarm.cli("start", "-d", "--wait", "2", check=False)
    assert proc.returncode != 0 and "cannot open the queue database /dev/null/q.db" in proc.stderr
    queue = swarm.service("queue")
    assert queue["state"] == "failed" and queue["restarts"] == 0


def test_unwritable_database_degrades_then_fails_then_recovers_losing_nothing(make_swarm, request):
    """A "full disk" on the live queue process (RLIMIT_FSIZE of 1 byte: every write past the
    first byte of any file fails): the write probe reports it, enqueues are refused with a
    retryable error, delivery and lease expiry wait, nothing stored is lost, and lifting the
    limit heals it without a restart."""
    stack = contextlib.ExitStack()
    request.addfinalizer(stack.close)
    swarm = make_swarm({"agents": {"names": ["Agent-1"]},
                        "services": {"queue": {"enabled": True, "write_probe_s": 0.5,
                                               "storage_errors_failing": 3}}})
    swarm.start()
    assert enqueue(swarm, [text("keep", "before", id="w-1"),
                           text("Agent-1", "due during the outage", id="w-3", delay_s=1.0),
                           text("spare", "leased after the outage", id="w-4"),
                           text("pushed", "pushed after the outage", id="w-5")]
                   )["accepted"] == ["w-1", "w-3", "w-4", "w-5"]
    held = ask(swarm, protocol.QUEUE_LEASE, {"recipient": "keep", "visibility_s": 1.0}).b
    assert [m["id"] for m in held["messages"]] == ["w-1"]  # its lease ends during the outage
    proc = psutil.Process(swarm.service("queue")["pid"])
    unlimited = proc.rlimit(psutil.RLIMIT_FSIZE)
    queue_addr = protocol.address_from_wire(
        AdminClient(swarm.config).call(protocol.ADMIN_LOOKUP, {"name": "queue"})["addr"])
    subscriber = stack.enter_context(connect(swarm.config).private())
    proc.rlimit(psutil.RLIMIT_FSIZE, (1, unlimited[1]))
    try:
        queue = swarm.wait_for(lambda s: s["services"]["queue"]["health"] != "ok",
                               what="queue health not ok")["services"]["queue"]
        assert "database not writable" in queue["detail"] or "storage error" in queue["detail"]
        refused = swarm.ask("queue", protocol.QUEUE_ENQUEUE,
                            {"items": [text("keep", "during", id="w-2")]})
        assert refused.t == "error" and refused.b["code"] == "storage"
        assert "retry with the same ids" in refused.b["detail"]
        lease = swarm.ask("queue", protocol.QUEUE_LEASE, {"recipient": "spare"})
        assert lease.t == "error" and lease.b["code"] == "storage"  # answered, no crash
        subscribed = protocol.decode(subscriber.ask(queue_addr, protocol.QUEUE_SUBSCRIBE.encode(
            {"recipient": "pushed", "max_in_flight": 5}), 5))
        assert subscribed.t == "ok"
        assert subscriber.listen(0.5) is None  # answered once: no error after the ok
        failing = swarm.wait_for(lambda s: s["services"]["queue"]["health"] == "failing",
                                 what="queue failing")["services"]["queue"]
        assert "storage errors in a row" in failing["detail"]
        assert failing["state"] == "running" and failing["restarts"] == 0  # no restart loop
        time.sleep(1.5)  # w-3 is due now: delivery waits instead of failing every round
        assert inbox_files(swarm.dir / "agents") == []
    finally:
        proc.rlimit(psutil.RLIMIT_FSIZE, unlimited)
    swarm.wait_for(lambda s: s["services"]["queue"]["health"] == "ok", what="queue healed")
    assert enqueue(swarm, [text("keep", "after", id="w-2")])["accepted"] == ["w-2"]
    leased = ask(swarm, protocol.QUEUE_LEASE, {"recipient": "keep", "limit": 10}).b["messages"]
    assert [m["id"] for m in leased] == ["w-1", "w-2"]
    assert [m["id"] for m in ask(swarm, protocol.QUEUE_LEASE, {"recipient": "spare"}
                                 ).b["messages"]] == ["w-4"]
    assert wait(lambda: inbox_files(swarm.dir / "agents") == ["w-3.md"], what="w-3 delivered")
    delivered = protocol.decode(subscriber.listen(5))  # the pump resumed for the subscriber
    assert delivered.t == "queue.deliver" and [m["id"] for m in delivered.b["messages"]] == ["w-5"]
    assert swarm.service("queue")["restarts"] == 0
    log = (swarm.dir / "data" / "logs" / "swarm.log").read_text()
    assert log.count('"event": "not_writable"') == 1 and '"event": "writable"' in log
    assert log.count('"event": "timer_error"') <= 1  # before the first probe, if at all


def test_the_service_uses_its_store_only_through_the_repository_interface(tmp_path):
    """Another backend implements QueueRepository; the SQLite store does, and the service
    calls nothing else on it."""
    with QueueStore(tmp_path / "q.db") as store:
        assert isinstance(store, QueueRepository)
    source = (Path(__file__).parents[1] / "actors" / "queue" / "service.py").read_text()
    used = set(re.findall(r"self\.store\.(\w+)", source))
    members = {n for n in vars(QueueRepository) if not n.startswith("_")}
    assert used and used <= members, used - members
