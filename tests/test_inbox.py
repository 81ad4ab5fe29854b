"""InboxSink: atomic, never-overwriting delivery of messages to agent inbox files."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import msgpack
import pytest

import actors.queue.inbox as inbox_mod
from actors.queue.inbox import InboxSink, render_body
from actors.queue.model import Message, NewMessage
from actors.queue.store import QueueStore
from system.errors import PermanentError, TransientError

T0 = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z


def message(mid: str = "01HXYZ", recipient: str = "alice", payload=None, **kw) -> Message:
    body = msgpack.packb("Hello **alice**") if payload is None else payload
    fields = {"id": mid, "recipient": recipient, "sender": "bob", "type": "text",
              "priority": "high", "payload": body, "headers": {}, "created_at": T0,
              "available_at": T0, "attempts": 1, "max_attempts": 5, "state": "leased"}
    return Message(**(fields | kw))


@pytest.fixture
def sink(tmp_path: Path) -> InboxSink:
    return InboxSink(tmp_path / "ws", ["alice", "bob"])


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_deliver_writes_header_block_then_text_body(sink, tmp_path):
    path = sink.deliver(message())
    assert path == tmp_path / "ws" / "alice" / "inbox" / "01HXYZ.md"
    assert path.read_text(encoding="utf-8") == (
        "# Message 01HXYZ\n"
        "From: bob\n"
        "To: alice\n"
        "Priority: high\n"
        "Type: text\n"
        "Timestamp: 2023-11-14T22:13:20.250Z\n"
        "Message-Id: 01HXYZ\n"
        "\n"
        "Hello **alice**\n")


def test_message_headers_follow_the_fixed_lines_one_per_line(sink):
    headers = {"Tags": "build, ci", "from": "forged", "Note": "two\nlines", "": "x"}
    text = sink.deliver(message(headers=headers)).read_text(encoding="utf-8")
    head = text.split("\n\n")[0].splitlines()
    assert head[1:3] == ["From: bob", "To: alice"] and head[6] == "Message-Id: 01HXYZ"
    assert head[7:] == ["Header-: x", "Note: two lines", "Tags: build, ci", "Header-from: forged"]


@pytest.mark.parametrize(("value", "body"), [
    ("plain ünïcode", "plain ünïcode"),
    ({"text": "from dict", "extra": 1}, "from dict"),
    ({"n": 1, "tags": ["a", "b"], "raw": b"\xff"},
     '```json\n{\n  "n": 1,\n  "tags": [\n    "a",\n    "b"\n  ],\n  "raw": "base64:/w=="\n}\n```'),
    ([1, None, True], "```json\n[\n  1,\n  null,\n  true\n]\n```"),
    ({"text": 42}, '```json\n{\n  "text": 42\n}\n```'),
])
def test_body_is_the_text_or_a_pretty_json_rendering(value, body):
    assert render_body(msgpack.packb(value)) == body


@pytest.mark.parametrize("payload", [
    b"\xc1",                            # never-used msgpack byte
    msgpack.packb("a") + b"\x01",       # extra data
    msgpack.packb({1: "int key"}),      # strict_map_key
    b"\x92\x01",                        # truncated array
    "a str, not bytes",
])
def test_undecodable_payload_is_a_permanent_error_and_writes_nothing(sink, tmp_path, payload):
    with pytest.raises(PermanentError):
        sink.deliver(message(payload=payload))
    assert files(tmp_path / "ws" / "alice" / "inbox") == []


@pytest.mark.parametrize("payload", [
    b"\x91" * 600 + b"\xc0",                                       # 600 nested arrays
    msgpack.packb({"at": msgpack.Timestamp(2**62, 0)}, datetime=False),  # year out of range
])
def test_a_payload_that_cannot_be_rendered_fails_alone(sink, payload):
    with pytest.raises(PermanentError, match="cannot be shown as JSON"):
        render_body(payload)
    msgs = [message("a1"), message("bad", payload=payload), message("a2")]
    delivered, failures = sink.deliver_batch(msgs)
    assert delivered == ["a1", "a2"]
    assert [(i, type(e)) for i, e in failures] == [("bad", PermanentError)]


def test_an_unexpected_error_while_writing_one_message_fails_only_that_one(sink, monkeypatch):
    real = inbox_mod.render
    monkeypatch.setattr(inbox_mod, "render", lambda m: 1 / 0 if m.id == "boom" else real(m))
    delivered, failures = sink.deliver_batch([message("a1"), message("boom"), message("a2")])
    assert delivered == ["a1", "a2"]
    assert [i for i, _ in failures] == ["boom"]
    assert isinstance(failures[0][1], PermanentError)
    assert "ZeroDivisionError" in str(failures[0][1])


def test_atomic_write_leaves_no_temp_file(sink, tmp_path):
    sink.deliver(message("m1"))
    sink.deliver_batch([message("m2"), message("m3")])
    assert files(tmp_path / "ws" / "alice" / "inbox") == ["m1.md", "m2.md", "m3.md"]


def test_second_delivery_of_same_id_does_not_rewrite_the_file(sink):
    path = sink.deliver(message("m1"))
    before = path.stat()
    content = path.read_bytes()
    again = sink.deliver(message("m1", payload=msgpack.packb("different text")))
    delivered, failures = sink.deliver_batch([message("m1", sender="mallory")])
    after = path.stat()
    assert again == path and delivered == ["m1"] and failures == []
    assert (after.st_ino, after.st_mtime_ns, after.st_nlink) == (
        before.st_ino, before.st_mtime_ns, 1)
    assert path.read_bytes() == content
    assert files(path.parent) == ["m1.md"]


def test_existing_file_is_never_overwritten_even_if_it_appears_after_the_check(sink, monkeypatch):
    path = sink.inbox_dir("alice") / "m1.md"
    path.parent.mkdir(parents=True)
    real_link = os.link

    def racing_link(src, dst):
        Path(dst).write_text("first writer")
        real_link(src, dst)

    monkeypatch.setattr(inbox_mod.os, "link", racing_link)
    assert sink.deliver(message("m1")) == path
    assert path.read_text() == "first writer" and files(path.parent) == ["m1.md"]


def test_file_system_without_hard_links_falls_back_to_replace(sink, monkeypatch):
    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(inbox_mod.os, "link", no_link)
    path = sink.deliver(message("m1"))
    assert path.read_text().startswith("# Message m1\n") and files(path.parent) == ["m1.md"]


def test_unknown_agent_is_a_permanent_error(sink):
    with pytest.raises(PermanentError, match="unknown agent 'mallory'"):
        sink.deliver(message(recipient="mallory"))


@pytest.mark.parametrize("bad_id", [
    "../escape", "a/b", "a\\b", ".hidden", "..", "a..b", "", "x" * 129, "nul\x00byte",
    "new\nline", "-flag", "sp ace",
])
def test_unsafe_message_ids_are_rejected(sink, tmp_path, bad_id):
    with pytest.raises(PermanentError, match="bad message id"):
        sink.deliver(message(bad_id))
    assert not (tmp_path / "escape").exists() and files(tmp_path / "ws" / "alice" / "inbox") == []


def test_unsafe_agent_names_are_refused_at_construction(tmp_path):
    with pytest.raises(ValueError, match="unsafe agent"):
        InboxSink(tmp_path, ["ok", "../etc"])


def test_disk_full_is_transient_and_leaves_no_temp_file(sink, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(inbox_mod.os, "write", full)
    with pytest.raises(TransientError, match="ENOSPC"):
        sink.deliver(message("m1"))
    assert files(sink.inbox_dir("alice")) == []


def test_permission_denied_is_transient(sink, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(inbox_mod.os, "open", denied)
    with pytest.raises(TransientError, match="EACCES"):
        sink.deliver(message("m1"))


def test_sweep_temp_removes_only_leftover_temp_files(sink):
    sink.deliver(message("kept"))
    inbox = sink.inbox_dir("alice")
    (inbox / ".crashed.1234abcd.tmp").write_text("partial")
    (inbox / ".notes").write_text("not ours")
    (inbox / "visible.tmp").write_text("not hidden")
    (sink.root / "bob").mkdir()  # an agent without an inbox yet
    assert sink.sweep_temp() == 1
    assert files(inbox) == [".notes", "kept.md", "visible.tmp"]
    assert sink.sweep_temp() == 0


def test_deliver_batch_delivers_the_rest_and_reports_failures(sink, monkeypatch):
    msgs = [message("a1"), message("x1", recipient="zed"), message("b1", recipient="bob"),
            message("../up"), message("bad", payload=b"\xc1"), message("a2")]
    fsyncs = []
    real = inbox_mod._fsync_dir
    monkeypatch.setattr(inbox_mod, "_fsync_dir", lambda p: (fsyncs.append(p), real(p)))
    delivered, failures = sink.deliver_batch(msgs)
    assert delivered == ["a1", "a2", "b1"]
    assert [(i, type(e)) for i, e in failures] == [
        ("x1", PermanentError), ("../up", PermanentError), ("bad", PermanentError)]
    inboxes = [p for p in fsyncs if p.name == "inbox"]
    assert sorted(inboxes) == [sink.inbox_dir("alice"), sink.inbox_dir("bob")]


def test_messages_leased_from_the_store_are_delivered_once(tmp_path):
    with QueueStore(tmp_path / "q.db", clock=lambda: T0) as store:
        store.enqueue([NewMessage("alice", msgpack.packb({"text": "hi"}), sender="ops",
                                  priority="urgent", type="alert")])
        [leased] = store.lease("alice", 1, "inbox", 30)
        sink = InboxSink(tmp_path / "ws", ["alice"])
        path = sink.deliver(leased)
        assert sink.deliver(leased.to_dict()) == path  # a dict works too
        text = path.read_text()
        assert f"# Message {leased.id}\nFrom: ops\nTo: alice\nPriority: urgent\nType: alert\n" \
            in text and text.endswith("\n\nhi\n")
        assert store.ack([leased.id], owner="inbox") == 1


def test_inbox_directory_removed_under_the_sink_is_recreated_after_one_transient_error(sink):
    sink.deliver(message("m1"))
    shutil.rmtree(sink.inbox_dir("alice"))
    with pytest.raises(TransientError, match="ENOENT"):
        sink.deliver(message("m2"))
    assert sink.deliver(message("m2")).exists()
