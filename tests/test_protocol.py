"""The wire contract: round trips, size bounds, and no input that makes decode raise."""
from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from system import protocol

_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=50) | st.binary(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=20)


@given(st.dictionaries(st.text(max_size=10), _values, max_size=6))
def test_any_body_round_trips_through_the_envelope(body):
    env = protocol.decode(protocol.OK.encode(body, re="abc"))
    assert isinstance(env, protocol.Envelope)
    assert (env.t, env.re, env.b) == ("ok", "abc", body)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data):
    result = protocol.decode(data)
    assert isinstance(result, (protocol.Envelope, protocol.BadMessage))


@given(_values)
def test_arbitrary_msgpack_values_never_raise(value):
    result = protocol.decode(msgpack.packb(value))
    assert isinstance(result, (protocol.Envelope, protocol.BadMessage))


def test_non_bytes_and_garbage_are_bad_messages():
    assert protocol.decode("text").code == "bad_message"
    assert protocol.decode(b"\xc1").code == "bad_message"
    assert protocol.decode(msgpack.packb([1, 2])).code == "bad_message"


def test_unknown_type_is_reported_with_its_id():
    data = msgpack.packb({"t": "no.such", "id": "m1", "re": None, "ts": 1.0, "b": {}})
    bad = protocol.decode(data)
    assert (bad.code, bad.id) == ("unknown_type", "m1")
    reply = protocol.decode(protocol.error_reply(bad, bad.code, bad.detail))
    assert reply.t == "error" and reply.re == "m1" and reply.b["code"] == "unknown_type"


def test_missing_or_mistyped_fields_are_bad_messages():
    missing = protocol.decode(protocol.SVC_STARTED.encode({"name": "x"}))
    assert missing.code == "bad_message" and "'pid'" in missing.detail
    mistyped = protocol.decode(protocol.SVC_STARTED.encode({"name": "x", "pid": "7"}))
    assert mistyped.code == "bad_message" and "'pid'" in mistyped.detail
    boolean = protocol.decode(protocol.SVC_STARTED.encode({"name": "x", "pid": True}))
    assert boolean.code == "bad_message"


def test_oversized_messages_are_refused_before_parsing():
    data = protocol.OK.encode({"blob": b"x" * 2000})
    assert protocol.decode(data, max_bytes=1000).code == "too_large"


def test_ext_types_are_refused():
    ext = msgpack.packb({"t": "ok", "id": "a", "re": None, "ts": 1.0,
                         "b": {"x": msgpack.ExtType(5, b"evil")}})
    assert protocol.decode(ext).code == "bad_message"


def test_message_ids_are_unique():
    ids = {protocol.new_id() for _ in range(10000)}
    assert len(ids) == 10000


def test_a_forked_process_makes_ids_its_parent_never_does():
    """Actors are forks of their parent: same counter, so the prefix must differ."""
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next ids, exit without running pytest's teardown
        os.write(write, " ".join(protocol.new_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode().split()
    os.close(read)
    mine = [protocol.new_id() for _ in range(3)]
    assert len(child) == 3 and not set(child) & set(mine)
    assert {c[:10] for c in child} != {m[:10] for m in mine}


def test_addresses_travel_as_strings_and_come_back_equal():
    from thespian.actors import ActorAddress, ActorSystem
    from thespian.system.transport.IPBase import TCPv4ActorAddress

    tcp = ActorAddress(TCPv4ActorAddress("127.0.0.1", 4321))
    assert protocol.address_to_wire(tcp) == "tcp:127.0.0.1:4321"
    assert protocol.address_from_wire("tcp:127.0.0.1:4321") == tcp
    asys = ActorSystem("simpleSystemBase", transientUnique=True)
    try:
        from actors.probe import Probe
        addr = asys.createActor(Probe)
        assert protocol.address_from_wire(protocol.address_to_wire(addr)) == addr
    finally:
        asys.shutdown()
