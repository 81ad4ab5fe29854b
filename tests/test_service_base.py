"""The service base on a real swarm: bad input, error classes and recovery, the asyncio bridge."""
from __future__ import annotations

import time

import msgpack

from system import protocol


def test_asyncio_thread_burst_of_3000_events_all_arrive_in_order(shared_swarm):
    before = shared_swarm.ask("probe", protocol.TEST_EVENTS).b["count"]
    assert shared_swarm.ask("probe", protocol.TEST_BURST, {"n": 3000}).t == "ok"
    deadline = time.monotonic() + 20
    while True:
        got = shared_swarm.ask("probe", protocol.TEST_EVENTS).b
        if got["count"] >= before + 3000 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert got["count"] == before + 3000
    assert got["in_order"] is True


def test_malformed_and_unknown_messages_get_error_replies_and_are_counted(shared_swarm):
    pid = shared_swarm.service("probe")["pid"]
    garbage = shared_swarm.ask("probe", protocol.OK, None)  # a reply type nobody asked for
    assert garbage is not None
    for data, code in ((b"\x93\x01\x02", "bad_message"),
                       (msgpack.packb({"t": "no.such", "id": "x1", "ts": 1.0, "b": {}}),
                        "unknown_type"),
                       (protocol.TEST_RAISE.encode({"kind": 7}), "bad_message"),
                       (protocol.HEALTH_SAMPLE.encode({"pids": {}}), "unknown_type")):
        reply = _raw_ask(shared_swarm, "probe", data)
        assert reply.t == "error" and reply.b["code"] == code, (data, reply)
    assert shared_swarm.service("probe")["pid"] == pid
    pong = shared_swarm.ask("probe", protocol.HEALTH_PING)
    assert pong.b["errors"]["by_class"].get("permanent", 0) >= 2


def test_lifecycle_messages_from_outside_the_tree_are_refused(shared_swarm):
    """Anyone on the host can reach an actor's port: a second svc.init (which would move the
    service's files), a config change or a registry address not from its supervisor are
    refused; the service carries on unchanged."""
    pid = shared_swarm.service("probe")["pid"]
    forged = ((protocol.SVC_INIT, {"name": "probe", "config": {"services": {}}}),
              (protocol.CONFIG_CHANGED, {"config": {}, "changed": []}),
              (protocol.TREE_REGISTRY, {"addr": "tcp:127.0.0.1:1"}))
    for mtype, body in forged:
        reply = _raw_ask(shared_swarm, "probe", mtype.encode(body))
        assert reply.t == "error" and reply.b["code"] == "permanent", (mtype.name, reply)
    assert shared_swarm.service("probe")["pid"] == pid
    assert shared_swarm.ask("probe", protocol.HEALTH_PING).t == protocol.HEALTH_PONG.name


def test_registry_reports_from_outside_the_tree_never_show(shared_swarm):
    """A forged registry.update is held (it might come from a supervisor whose own report is
    on its way) and never applied; remove and note are refused outright."""
    bogus = {"name": "bogus", "state": "running", "kind": "service", "pid": 1,
             "addr": "tcp:127.0.0.1:1", "epoch": time.time()}
    _raw_tell(shared_swarm, "registry", protocol.REGISTRY_UPDATE.encode(bogus))
    for mtype, body in ((protocol.REGISTRY_REMOVE, {"name": "probe"}),
                        (protocol.REGISTRY_NOTE, {"name": "probe", "error": "forged"})):
        reply = _raw_ask(shared_swarm, "registry", mtype.encode(body))
        assert reply.t == "error" and reply.b["code"] == "permanent", (mtype.name, reply)
    time.sleep(0.5)
    services = shared_swarm.status()["services"]
    assert "bogus" not in services and services["probe"]["state"] == "running"
    assert "forged" not in str(services["probe"])


def test_registry_applies_a_supervisors_early_reports_once_it_is_vouched_for():
    from actors.registry import HELD_REPORTERS, Registry

    def addr(port: int):
        return protocol.address_from_wire(f"tcp:127.0.0.1:{port}")

    class Detached(Registry):  # no actor system: its own address is fixed
        myAddress = addr(999)

    reg, logged = Detached(), []
    reg.root, reg.parent = "tcp:127.0.0.1:1000", addr(1001)
    reg.send = lambda to, msg: None
    reg.log = lambda level, event, text, **kw: logged.append(event)

    def update(port: int, **body) -> None:
        env = protocol.decode(protocol.REGISTRY_UPDATE.encode({"epoch": 1.0, **body}))
        reg._update(env, addr(port))

    update(1002, name="worker", state="running", kind="service", addr="tcp:127.0.0.1:2000",
           seq=8)
    update(1002, name="worker", state="starting", kind="service", seq=7)  # overtaken, held too
    assert "worker" not in reg.entries  # services reported its child before root reported it
    update(1000, name="services", state="running", kind="supervisor", addr="tcp:127.0.0.1:1002")
    assert reg.entries["worker"].parent_addr == "tcp:127.0.0.1:1002"
    assert reg.entries["worker"].state == "running"
    update(1001, name="health", state="running", kind="core", addr="tcp:127.0.0.1:1003")
    assert set(reg.entries) == {"worker", "services", "health"}
    for port in range(5000, 5001 + HELD_REPORTERS):  # strangers: held, the oldest dropped
        update(port, name=f"fake{port}", state="running", kind="supervisor", addr="tcp:x:1")
    assert set(reg.entries) == {"worker", "services", "health"}
    assert len(reg.held) == HELD_REPORTERS and logged == ["unknown_reporter"]
    update(1001, name="health", state="stopped", kind="core", seq=7)
    update(1001, name="health", state="running", kind="core", seq=6)  # overtaken on the way
    assert reg.entries["health"].state == "stopped"
    update(1001, name="health", state="running", kind="core", seq=1, epoch=2.0)  # new incarnation
    assert reg.entries["health"].state == "running"
    update(1000, name="services", state="stopped", kind="supervisor", addr=None)
    update(1002, name="worker", state="failed", kind="service")  # no longer vouched for
    assert reg.entries["worker"].state == "running"


def test_only_processes_of_the_swarm_are_killed_by_pid(monkeypatch):
    import os
    import subprocess
    import sys

    from system.launcher import INSTANCE_ENV, kill_swarm_process

    monkeypatch.setenv(INSTANCE_ENV, "4242")
    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    stranger = subprocess.Popen(sleep, env={k: v for k, v in os.environ.items()
                                            if k != INSTANCE_ENV})
    ours = subprocess.Popen(sleep, env={**os.environ, INSTANCE_ENV: "4242"})
    try:
        assert kill_swarm_process(stranger.pid) is False and stranger.poll() is None
        assert kill_swarm_process(ours.pid) is True and ours.wait(5) == -9
        assert kill_swarm_process(ours.pid) is False  # gone
    finally:
        for proc in (stranger, ours):
            proc.kill()
            proc.wait()


def _raw_tell(swarm, name, data: bytes) -> None:
    from system.admin import AdminClient
    from system.launcher import connect

    found = AdminClient(swarm.config).call(protocol.ADMIN_LOOKUP, {"name": name})
    with connect(swarm.config).private() as ctx:
        ctx.tell(protocol.address_from_wire(found["addr"]), data)


def _raw_ask(swarm, name, data: bytes) -> protocol.Envelope:
    from system.admin import AdminClient
    from system.launcher import connect

    found = AdminClient(swarm.config).call(protocol.ADMIN_LOOKUP, {"name": name})
    with connect(swarm.config).private() as ctx:
        return protocol.decode(ctx.ask(protocol.address_from_wire(found["addr"]), data, 10))


def test_permanent_error_is_answered_and_the_actor_keeps_running(shared_swarm):
    pid = shared_swarm.service("probe")["pid"]
    for kind in ("permanent", "value"):
        reply = shared_swarm.ask("probe", protocol.TEST_RAISE, {"kind": kind})
        assert reply.t == "error" and reply.b["code"] == "permanent"
    assert shared_swarm.service("probe")["pid"] == pid


def test_storage_error_is_answered_and_the_actor_keeps_running(shared_swarm):
    pid = shared_swarm.service("probe")["pid"]
    reply = shared_swarm.ask("probe", protocol.TEST_RAISE, {"kind": "disk_full"})
    assert reply.t == "error" and reply.b["code"] == "storage"
    assert "retry later" in reply.b["detail"] and "No space left" in reply.b["detail"]
    assert shared_swarm.service("probe")["pid"] == pid
    pong = shared_swarm.ask("probe", protocol.HEALTH_PING)
    assert pong.b["errors"]["by_class"].get("storage", 0) >= 1


def test_transient_error_is_retried_until_it_succeeds(shared_swarm):
    reply = shared_swarm.ask("probe", protocol.TEST_RAISE, {"kind": "transient_then_ok",
                                                           "times": 3})
    assert reply.t == "ok" and reply.b == {"recovered": True}


def test_fatal_error_answers_then_the_supervisor_restarts_the_actor(swarm):
    before = swarm.service("probe")
    reply = swarm.ask("probe", protocol.TEST_RAISE, {"kind": "fatal"})
    assert reply.t == "error" and reply.b["code"] == "internal"
    after = swarm.wait_for(lambda s: s["services"]["probe"]["restarts"] == 1
                           and s["services"]["probe"]["healthy"], what="probe restarted")
    assert after["services"]["probe"]["pid"] != before["pid"]


def test_config_error_in_a_handler_parks_the_service_as_failed(swarm):
    reply = swarm.ask("probe", protocol.TEST_RAISE, {"kind": "config"})
    assert reply.t == "error" and reply.b["code"] == "config"
    status = swarm.wait_for(lambda s: s["services"]["probe"]["state"] == "failed",
                            what="probe failed")
    assert "probe raised config" in status["services"]["probe"]["detail"]
    time.sleep(0.5)
    assert swarm.service("probe")["restarts"] == 0  # no restart loop


def test_a_non_envelope_object_is_ignored_and_the_actor_keeps_working(shared_swarm):
    pid = shared_swarm.service("probe")["pid"]
    shared_swarm.tell("probe", {"not": "an envelope"})
    assert shared_swarm.ask("probe", protocol.TEST_ECHO, {"still": "here"}).b == {"still": "here"}
    assert shared_swarm.service("probe")["pid"] == pid
