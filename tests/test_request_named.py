"""ServiceActor.request_named and the registry's watches, on detached actors wired by an
in-memory network (no actor system: every step is deterministic). What the swarm relies on:
one lookup per name, then straight to the cached address; a restart moves the requests in
flight to the new address as soon as it runs; a final state ends them; stale news is ignored."""
from __future__ import annotations

import time

import msgpack
import pytest

from actors.registry import Registry
from system import protocol
from system.service import ServiceActor, handles

REG, QUEUE_1, QUEUE_2, CLIENT, CLIENT_2, SUP = (
    f"tcp:127.0.0.1:{port}" for port in (9001, 9002, 9003, 9004, 9005, 9006))


class Net:
    """Delivers what detached actors send, one message at a time, in order; messages to an
    address nobody listens on are lost without a word (as Thespian loses them)."""

    def __init__(self) -> None:
        self.actors: dict[str, ServiceActor] = {}
        self.queue: list[tuple[str, str, bytes]] = []
        self.seen: list[tuple[str, str]] = []  # (to, type) of every message delivered

    def add(self, wire: str, cls: type) -> ServiceActor:
        actor = type(cls.__name__, (cls,), {"myAddress": protocol.address_from_wire(wire)})()
        actor.send = lambda to, data, _from=wire: self.queue.append(
            (protocol.address_to_wire(to), _from, data))
        actor.log = lambda *a, **kw: None
        self.actors[wire] = actor
        return actor

    def pump(self) -> None:
        while self.queue:
            to, frm, data = self.queue.pop(0)
            if to in self.actors:
                self.seen.append((to, getattr(protocol.decode(data), "t", "?")))
                # as Thespian does: receiveMessage also ends the message's correlation id
                # (left set, it would tag what this test process sends later)
                self.actors[to].receiveMessage(data, protocol.address_from_wire(frm))

    def count(self, to: str, mtype: protocol.MessageType) -> int:
        return sum(1 for t, name in self.seen if t == to and name == mtype.name)


class Queue(ServiceActor):
    @handles(protocol.QUEUE_STATS)
    def _stats(self, env, sender) -> None:
        self.reply(sender, env, protocol.OK, {"at": protocol.address_to_wire(self.myAddress)})


class Client(ServiceActor):
    def __init__(self) -> None:
        super().__init__()
        self.replies: list = []
        self.missing: list = []

    def ask_queue(self, timeout_s: float = 10.0) -> None:
        self.request_named("queue", protocol.QUEUE_STATS, {},
                           lambda reply: self.replies.append(reply and reply.b.get("at")),
                           timeout_s, lambda why: self.missing.append(why and why.b.get("state")))


@pytest.fixture
def net():
    net = Net()
    reg = net.add(REG, Registry)
    reg.root = SUP
    net.add(QUEUE_1, Queue)
    client = net.add(CLIENT, Client)
    client.registry = REG
    report(net, "queue", "running", QUEUE_1)
    return net


def report(net: Net, name: str, state: str, addr: str | None) -> None:
    reg = net.actors[REG]
    entry = reg.entries.get(name)
    seq = entry.seq + 1 if entry else 1
    reg._apply(SUP, {"name": name, "state": state, "kind": "service", "addr": addr,
                     "pid": hash(addr) & 0xFFFF if addr else None, "epoch": 1.0, "seq": seq})
    net.pump()


def test_one_lookup_then_every_request_goes_straight_to_the_cached_address(net):
    client = net.actors[CLIENT]
    for _ in range(5):
        client.ask_queue()
        net.pump()
    assert client.replies == [QUEUE_1] * 5
    assert net.count(REG, protocol.REGISTRY_LOOKUP) == 1
    assert net.actors[REG].watchers["queue"] == {CLIENT}


def test_a_restart_moves_the_requests_in_flight_and_those_asked_meanwhile(net):
    client = net.actors[CLIENT]
    client.ask_queue()
    net.pump()
    del net.actors[QUEUE_1]  # SIGKILLed: what is sent there now is lost
    client.ask_queue()  # went to the dead address
    net.pump()
    report(net, "queue", "restarting", None)
    client.ask_queue()  # asked while it restarts: waits for it
    net.pump()
    assert client.replies == [QUEUE_1] and client.missing == []
    net.add(QUEUE_2, Queue)
    report(net, "queue", "running", QUEUE_2)
    assert client.replies == [QUEUE_1, QUEUE_2, QUEUE_2]  # both answered, once each
    client.ask_queue()
    net.pump()
    assert client.replies[-1] == QUEUE_2
    assert net.count(REG, protocol.REGISTRY_LOOKUP) == 2  # the first, and one while it restarted
    assert not client._pending and not any(client._calls.values())


def test_a_final_state_ends_the_requests_in_flight_with_the_reason(net):
    client = net.actors[CLIENT]
    client.ask_queue()
    net.pump()
    del net.actors[QUEUE_1]
    client.ask_queue()
    net.pump()
    report(net, "queue", "failed", None)
    assert client.missing == ["failed"]
    client.ask_queue()  # asked after: the registry's answer says so at once
    net.pump()
    assert client.missing == ["failed", "failed"]
    assert not client._pending and not any(client._calls.values())


def test_an_unknown_name_is_missing_at_once(net):
    client = net.actors[CLIENT]
    client.request_named("gas", protocol.GAS_STATUS, {}, client.replies.append, 10.0,
                         lambda why: client.missing.append(why.b["code"]))
    net.pump()
    assert client.missing == ["unknown_service"] and client.replies == []


def test_news_older_than_what_is_cached_is_ignored(net):
    client = net.actors[CLIENT]
    client.ask_queue()
    net.pump()
    net.add(QUEUE_2, Queue)
    report(net, "queue", "running", QUEUE_2)
    assert client._addresses["queue"] == QUEUE_2
    stale = protocol.decode(protocol.REGISTRY_MOVED.encode(
        {"name": "queue", "addr": QUEUE_1, "state": "running", "v": 0}))
    client._watched_moved(stale, protocol.address_from_wire(REG))  # overtaken on the way
    assert client._addresses["queue"] == QUEUE_2


def test_news_older_than_a_restart_does_not_bring_back_the_old_address(net):
    client = net.actors[CLIENT]
    client.ask_queue()
    net.pump()
    report(net, "queue", "restarting", None)
    assert "queue" not in client._addresses
    stale = protocol.decode(protocol.REGISTRY_MOVED.encode(
        {"name": "queue", "addr": QUEUE_1, "state": "running", "v": 1}))
    client._watched_moved(stale, protocol.address_from_wire(REG))  # an answer from before, late
    assert "queue" not in client._addresses


def test_a_new_registry_that_does_not_know_the_name_yet_leaves_a_sent_request_waiting(net):
    client = net.actors[CLIENT]
    client.ask_queue()
    net.pump()
    net.queue.clear()
    client.ask_queue()  # on its way to the live queue...
    pending = net.queue[:]
    net.queue.clear()
    net.add("tcp:127.0.0.1:9100", Registry).root = SUP  # ...when a new registry, still empty,
    client.adopt_config({"config": {}, "registry": "tcp:127.0.0.1:9100"})  # is announced
    net.pump()
    assert client.missing == []
    net.queue.extend(pending)
    net.pump()
    assert client.replies == [QUEUE_1, QUEUE_1]


def test_the_network_leaves_no_correlation_id_behind(net):
    net.actors[CLIENT].ask_queue()
    net.pump()
    assert "c" not in msgpack.unpackb(protocol.OK.encode())  # what this process sends next


def test_moves_from_anyone_but_the_registry_are_refused(net):
    client = net.actors[CLIENT]
    client.ask_queue()
    net.pump()
    forged = protocol.REGISTRY_MOVED.encode(
        {"name": "queue", "addr": "tcp:127.0.0.1:1", "state": "running", "v": 99})
    client.receiveMessage(forged, protocol.address_from_wire(QUEUE_1))
    assert client._addresses["queue"] == QUEUE_1
    assert client.error_stats.by_class["permanent"] == 1


def test_a_silent_address_times_out_and_the_next_request_looks_it_up_again(net):
    client = net.actors[CLIENT]
    client.ask_queue()
    net.pump()
    del net.actors[QUEUE_1]  # gone, and the registry was not told (its notice lost)
    client.ask_queue(timeout_s=0.0)
    net.pump()
    time.sleep(0.01)
    client._expire_requests()
    assert client.replies == [QUEUE_1, None]
    assert "queue" not in client._addresses
    net.add(QUEUE_1, Queue)  # (back at the same address, as far as the registry knows)
    client.ask_queue()
    net.pump()
    assert client.replies[-1] == QUEUE_1
    assert net.count(REG, protocol.REGISTRY_LOOKUP) == 2


def test_a_new_registry_is_asked_again_for_the_names_in_flight(net):
    client = net.actors[CLIENT]
    client.ask_queue()
    net.pump()
    del net.actors[QUEUE_1]
    client.ask_queue()  # lost; the old registry will never say so
    net.pump()
    new_registry = net.add("tcp:127.0.0.1:9100", Registry)
    new_registry.root = SUP
    net.add(QUEUE_2, Queue)
    new_registry._apply(SUP, {"name": "queue", "state": "running", "kind": "service",
                              "addr": QUEUE_2, "pid": 2, "epoch": 2.0, "seq": 1})
    client.adopt_config({"config": {}, "registry": "tcp:127.0.0.1:9100"})
    net.pump()
    assert client.replies == [QUEUE_1, QUEUE_2]
    assert new_registry.watchers["queue"] == {CLIENT}


def test_an_actor_that_restarted_is_no_longer_told(net):
    client = net.actors[CLIENT]
    report(net, "client", "running", CLIENT)
    client.ask_queue()
    net.pump()
    report(net, "client", "running", CLIENT_2)  # its successor looks up what it needs
    assert net.actors[REG].watchers["queue"] == set()
    report(net, "queue", "restarting", None)
    assert net.count(CLIENT, protocol.REGISTRY_MOVED) == 0


def test_on_a_real_swarm_requests_around_a_queue_kill_are_answered_at_once(make_swarm):
    """Enqueues through the admin while the queue is SIGKILLed and restarted: each is answered
    ok as soon as the new queue runs (none waits out the admin's 10 s timeout on the dead
    address, none is refused), and every message is stored once."""
    import os
    import signal
    import threading

    from system.admin import AdminClient

    swarm = make_swarm({"agents": {"names": ["Agent-1"]},
                        "services": {"queue": {"enabled": True}}})
    swarm.start()
    client = AdminClient(swarm.config)

    def send(i: int) -> float:
        t0 = time.monotonic()
        reply = client.call(protocol.ADMIN_SEND, {"items": [{
            "recipient": "Agent-1", "id": f"m{i}", "payload": b"x"}]}, timeout=15)
        assert reply["ids"] == [f"m{i}"]
        return time.monotonic() - t0

    send(0)  # the admin has the queue's address cached from here on
    slowest, sent = 0.0, 1
    for _ in range(3):
        pid = swarm.service("queue")["pid"]
        killer = threading.Timer(0.02, os.kill, (pid, signal.SIGKILL))
        killer.start()
        for _ in range(20):  # around the kill, while it restarts, once it is back
            slowest = max(slowest, send(sent))
            sent += 1
        killer.join()
        swarm.wait_for(lambda status, p=pid: status["services"]["queue"]["pid"] not in (None, p)
                       and status["services"]["queue"]["state"] == "running", what="queue back")
    assert slowest < 3.0, f"an enqueue took {slowest:.1f}s"
    inbox = swarm.workspace / "Agent-1" / "inbox"
    swarm.wait_for(lambda _: len(list(inbox.iterdir())) >= sent, what="every message delivered")
    time.sleep(0.5)
    assert sorted(p.name for p in inbox.iterdir()) == sorted(f"m{i}.md" for i in range(sent))


# -- forwards: the admin's way (forward_named) ----------------------------------------------------
class Forwarder(ServiceActor):
    """Forwards test requests to the queue as QUEUE_STATS (repeatable), QUEUE_PURGE (not) or
    QUEUE_ENQUEUE."""

    def __init__(self) -> None:
        super().__init__()
        self.missing: list = []

    @handles(protocol.TEST_ECHO)
    def _forward(self, env, sender) -> None:
        mtype = {"purge": protocol.QUEUE_PURGE, "enqueue": protocol.QUEUE_ENQUEUE}.get(
            env.b.get("as"), protocol.QUEUE_STATS)
        self.forward_named("queue", env, sender, mtype, env.b.get("body", {}),
                           lambda why: self.missing.append(why and why.b.get("state")),
                           float(env.b.get("timeout", 10.0)), repeatable=mtype is protocol.QUEUE_STATS)


class Requester(ServiceActor):
    def __init__(self) -> None:
        super().__init__()
        self.got: list = []

    def on_unhandled(self, env, sender) -> None:  # every answer, however many
        self.got.append((env.re, env.t, env.b.get("at") or env.b.get("code"),
                         protocol.address_to_wire(sender)))


FWD, REQ = "tcp:127.0.0.1:9007", "tcp:127.0.0.1:9008"


@pytest.fixture
def fnet(net):
    net.add(FWD, Forwarder).registry = REG
    net.add(REQ, Requester)
    return net


def ask_via(net: Net, rid: str, **body) -> None:
    net.queue.append((FWD, REQ, protocol.TEST_ECHO.encode(body, id=rid)))
    net.pump()


def test_a_forward_is_answered_by_the_service_to_the_requester_under_its_id(fnet):
    ask_via(fnet, "r1")
    ask_via(fnet, "r2")
    assert fnet.actors[REQ].got == [("r1", "ok", QUEUE_1, QUEUE_1), ("r2", "ok", QUEUE_1, QUEUE_1)]
    assert fnet.count(FWD, protocol.OK) == 0  # nothing comes back through the forwarder
    assert fnet.count(REG, protocol.REGISTRY_LOOKUP) == 1


def test_a_moved_service_gets_repeatable_forwards_again_and_others_are_told_interrupted(fnet):
    ask_via(fnet, "r0")  # answered before the restart: held, then sent again (a harmless copy)
    del fnet.actors[QUEUE_1]
    ask_via(fnet, "read")
    ask_via(fnet, "purge", **{"as": "purge"})
    report(fnet, "queue", "restarting", None)
    fnet.add(QUEUE_2, Queue)
    report(fnet, "queue", "running", QUEUE_2)
    got = fnet.actors[REQ].got
    assert ("read", "ok", QUEUE_2, QUEUE_2) in got and ("r0", "ok", QUEUE_2, QUEUE_2) in got
    assert ("purge", "error", "interrupted", FWD) in got
    assert not any(r == "purge" and t == "ok" for r, t, *_ in got)


def test_a_forward_waiting_for_an_address_is_answered_as_a_timeout(fnet):
    report(fnet, "queue", "restarting", None)
    ask_via(fnet, "late", timeout=0.0)
    time.sleep(0.01)
    fnet.actors[FWD]._expire_requests()
    fnet.pump()
    assert fnet.actors[REQ].got == [("late", "error", "timeout", FWD)]


def test_a_held_forward_is_forgotten_after_its_time(fnet, monkeypatch):
    import system.service

    monkeypatch.setattr(system.service, "FORWARD_HELD_S", 0.0)
    ask_via(fnet, "r1")
    time.sleep(0.01)
    fnet.actors[FWD]._expire_requests()
    assert not any(fnet.actors[FWD]._calls.values()) and not fnet.actors[FWD]._pending
    fnet.add(QUEUE_2, Queue)
    report(fnet, "queue", "running", QUEUE_2)
    assert fnet.actors[REQ].got == [("r1", "ok", QUEUE_1, QUEUE_1)]  # not sent again


def test_a_forward_the_service_cannot_read_is_refused_to_the_requester(fnet):
    ask_via(fnet, "bad", body={"item": []}, **{"as": "enqueue"})  # enqueue needs items
    (rid, t, code, frm), = fnet.actors[REQ].got
    assert (rid, t, code, frm) == ("bad", "error", "bad_message", QUEUE_1)
