"""`swarm send` and `swarm queue ...` through the real CLI against a running swarm."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import msgpack
import pytest

from actors.queue.commands import parse_jsonl, read_lines, send_batches
from system import protocol
from system.admin import AdminClient, AdminError
from system.cli import build_parser
from system.launcher import connect
from tests.conftest import ROOT, Swarm


def test_parse_jsonl_and_batch_report_map_results_to_line_numbers():
    lines = ['{"recipient": "a", "text": "t", "id": "x1"}', "", "{bad", "[1]",
             '{"recipient": "a", "text": 3}', '{"recipient": "a", "payload": {"k": [1]}}',
             '{"recipient": "a", "text": "t", "id": "x1"}']
    items, rejected = parse_jsonl(lines)
    assert [n for n, _ in items] == [1, 6, 7]
    assert rejected == [(3, "invalid JSON: Expecting property name enclosed in double quotes"),
                        (4, "not a JSON object"), (5, "text must be a string")]
    assert msgpack.unpackb(items[1][1]["payload"]) == {"k": [1]}
    assert items[1][1]["sender"] == "cli" and items[1][1]["id"]  # the CLI assigns ids

    def fake_queue(batch):
        ids = [i["id"] for i in batch]
        return {"accepted": ids[:1], "duplicates": ids[1:], "rejected": [], "ids": ids}
    report = send_batches(fake_queue, items, rejected, batch_max=2)
    assert (report["accepted"], report["duplicates"], report["rejected"]) == (2, 1, 3)
    assert report["duplicate_lines"] == [{"line": 6, "id": items[1][1]["id"]}]


def test_file_lines_that_cannot_be_sent_are_rejected_alone(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join([
        b'{"recipient": "a", "text": "bom on line 1"}',
        b'{"recipient": "a",\r"text": "a CR is JSON whitespace"}\r',   # CRLF too
        b'{"recipient": "a", "text": "caf\xe9"}',                      # Latin-1, not UTF-8
        b'{"recipient": "a", "text": "x", "max_attempts": 99999999999999999999999}',
        b'{"recipient": "a", "text": "lone surrogate \\ud800"}',
        b'{"recipient": "a", "text": "last"}']) + b"\n")
    with open(path, "rb") as handle:
        items, rejected = parse_jsonl(read_lines(handle))
    assert [n for n, _ in items] == [1, 2, 6]
    assert [(n, r.split(":")[0]) for n, r in rejected] == [
        (3, "not valid UTF-8"), (4, "cannot be sent"), (5, "cannot be sent")]
    # a line no request can carry is rejected here (the admin could not even answer it)
    items, rejected = parse_jsonl(['{"recipient": "a", "text": "%s"}' % ("x" * (9 << 20)),
                                   '{"recipient": "a", "text": "next"}'])
    assert [n for n, _ in items] == [2] and "larger than any message" in rejected[0][1]


def test_batches_are_capped_by_bytes_and_a_failed_batch_reports_what_was_not_sent():
    big = [(n, {"recipient": "a", "id": f"b{n}", "payload": b"x" * 400_000})
           for n in range(1, 31)]
    sizes, calls = [], 0

    def queue(batch):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise AdminError("timeout", "no answer within the timeout")
        sizes.append(sum(len(i["payload"]) for i in batch))
        ids = [i["id"] for i in batch]
        return {"accepted": ids, "duplicates": [], "rejected": [], "ids": ids}
    report = send_batches(queue, big, [], batch_max=500, max_bytes=4_000_000)
    assert len(sizes) == 2 and max(sizes) <= 4_000_000  # 9 items each, not 30 in one
    assert report["accepted"] == 18 and report["ids"] == [f"b{n}" for n in range(1, 19)]
    maybe = [{"line": n, "id": f"b{n}"} for n in range(19, 28)]  # the batch with no answer
    assert report["unsent"] == {"reason": "no answer within the timeout (timeout)",
                                "first_line": 19, "lines": 12, "uncertain": maybe}

    def refused(batch):
        raise ConnectionError("connection refused")
    unsent = send_batches(refused, big, [], batch_max=500, max_bytes=4_000_000)["unsent"]
    assert unsent["lines"] == 30 and "uncertain" not in unsent  # surely not queued


@pytest.fixture(scope="module")
def cs(tmp_path_factory):
    s = Swarm(tmp_path_factory.mktemp("qcli"), {
        "agents": {"names": ["Agent-1"]},
        "services": {"queue": {"enabled": True, "batch_max": 3,
                               "agent_throttle": {"per_minute": 2}}}})
    s.start()
    yield s
    s.cleanup()


def one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("swarm: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], proc.stderr


def queue_stats(swarm: Swarm) -> dict:
    return json.loads(swarm.cli("queue", "stats", "--json").stdout)


def wait(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_send_prints_the_id_and_says_duplicate(cs):
    mid = cs.cli("send", "Agent-1", "hello from the cli").stdout.strip()
    assert len(mid) == 26  # a generated, time-sortable id
    inbox = cs.dir / "agents" / "Agent-1" / "inbox"
    text = wait(lambda: (inbox / f"{mid}.md").exists() and (inbox / f"{mid}.md").read_text())
    assert "From: cli" in text and text.endswith("\nhello from the cli\n")
    assert cs.cli("send", "Agent-1", "hi", "--id", "cli-1", "--priority", "urgent",
                  "--type", "note").stdout.strip() == "cli-1"
    again = cs.cli("send", "Agent-1", "hi", "--id", "cli-1")
    assert again.returncode == 0 and "cli-1 (duplicate" in again.stdout
    assert json.loads(cs.cli("send", "Agent-1", "hi", "--id", "cli-1", "--json").stdout) == {
        "id": "cli-1", "duplicate": True}
    note = wait(lambda: (inbox / "cli-1.md").exists() and (inbox / "cli-1.md").read_text())
    assert "Priority: urgent" in note and "Type: note" in note
    tagged = cs.cli("send", "Agent-1", "see build", "--header", "Tags=build, ci",
                    "--header", "Ticket=T-1=2").stdout.strip()
    text = wait(lambda: (inbox / f"{tagged}.md").exists() and (inbox / f"{tagged}.md").read_text())
    assert "Message-Id: " + tagged + "\nTags: build, ci\nTicket: T-1=2\n\nsee build" in text


def test_send_rejections_and_usage_errors_are_one_line(cs):
    one_line_error(cs.cli("send", "Agent-1", "x", "--id", "../../etc", check=False),
                   "rejected: unsafe id")
    one_line_error(cs.cli("send", "Agent-1", "x", "--id", "", check=False),
                   "--id must not be empty")
    one_line_error(cs.cli("send", "Agent-1", "x", "--sender", " ", check=False),
                   "--sender must not be empty")
    one_line_error(cs.cli("send", "--file", "f.jsonl", "--priority", "high", check=False),
                   "in a --file give them on each line")
    for bad in ("Tags", "=x", " =x"):
        one_line_error(cs.cli("send", "Agent-1", "x", "--header", bad, check=False),
                       "--header takes KEY=VALUE with a non-empty KEY")
    for recipient, reason in (("Agent-1 ", "leading/trailing spaces"),
                              ("Agent-\nFAKE row", "control characters")):
        one_line_error(cs.cli("send", recipient, "x", check=False), "rejected: recipient has",
                       reason)
    one_line_error(cs.cli("send", "Agent-1", "x", "--type", "t\x1bx", check=False),
                   "type must be a non-empty str without control characters")
    # bytes the shell passes undecoded (not UTF-8) reach Python as surrogates
    undecodable = b"caf\xe9".decode("utf-8", "surrogateescape")
    one_line_error(cs.cli("send", "Agent-1", undecodable, check=False), "TEXT is not valid UTF-8")
    near = cs.cli("send", "agent-1", "typo")
    assert "did you mean 'Agent-1'?" in near.stderr and near.stdout.strip()
    one_line_error(cs.cli("send", "Agent-1", check=False), "needs RECIPIENT and TEXT")
    one_line_error(cs.cli("send", "--file", str(cs.dir / "nope.jsonl"), check=False),
                   "cannot read")


def test_an_agent_over_its_throttle_is_refused_with_the_wait(cs):
    for n in range(2):
        cs.cli("send", "Agent-1", "ping", "--sender", "Agent-7", "--id", f"thr-{n}")
    refused = cs.cli("send", "Agent-1", "ping", "--sender", "Agent-7", check=False)
    one_line_error(refused, "rejected: throttled: Agent-7 sent 2 messages to agents in the last "
                   "60s (agent_throttle.per_minute 2); retry in ")
    again = cs.cli("send", "Agent-1", "ping", "--sender", "Agent-7", "--id", "thr-0")
    assert "thr-0 (duplicate" in again.stdout  # a re-send is still a duplicate, not throttled
    assert cs.cli("send", "ops", "to a person", "--sender", "Agent-7").stdout.strip()
    assert cs.cli("send", "Agent-1", "from a person", "--sender", "ops").stdout.strip()
    assert queue_stats(cs)["throttled"] == 1
    assert "throttled agent messages (agent_throttle): 1" in cs.cli("queue", "stats").stdout


def test_send_file_reports_counts_and_line_numbers(cs):
    cs.cli("send", "pending", "x", "--id", "f-old")
    lines = [
        '{"recipient": "pending", "text": "one", "id": "f-1"}',              # 1 accepted
        '{"recipient": "pending", "payload": {"n": 2}, "priority": "high"}',  # 2 accepted
        "",                                                                  # 3 skipped
        '{"recipient": "pending", "text": "dup in file", "id": "f-1"}',      # 4 duplicate
        '{"recipient": "pending", "text": "old", "id": "f-old"}',            # 5 duplicate
        '{"recipient": "pending", "text": "x", "priority": "whenever"}',     # 6 rejected
        '{"recipient": "pending", "text": "x", "bogus": true}',              # 7 rejected
        "{not json",                                                         # 8 malformed
        '{"text": "no recipient"}',                                          # 9 rejected
        '"just a string"',                                                   # 10 rejected
        '{"recipient": "pending", "text": "later", "delay_s": 60, "sender": "bot"}',  # 11 ok
    ]
    path = cs.dir / "batch.jsonl"
    path.write_text("\n".join(lines) + "\n")
    proc = cs.cli("send", "--file", str(path), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "accepted 3, duplicates 2, rejected 5"
    assert out[1:3] == ["line 4: duplicate f-1", "line 5: duplicate f-old"]
    rejected = out[3:]
    assert [r.split(":")[0] for r in rejected] == ["line 6", "line 7", "line 8", "line 9",
                                                   "line 10"]
    assert "unknown priority 'whenever'" in rejected[0] and "bogus" in rejected[1]
    assert "invalid JSON" in rejected[2] and "not a JSON object" in rejected[4]
    assert queue_stats(cs)["ready_by_recipient"]["pending"] == 4
    # sent again: lines with ids are duplicates now; id-less lines get new ids (new messages)
    report = json.loads(cs.cli("send", "--file", str(path), "--json", check=False).stdout)
    assert (report["accepted"], report["duplicates"], report["rejected"]) == (2, 3, 5)
    assert [d["line"] for d in report["duplicate_lines"]] == [1, 4, 5]
    same = cs.dir / "same-id.jsonl"  # a rejected line that shares an accepted line's id
    same.write_text('{"recipient": "pending", "text": "x", "id": "same-1"}\n'
                    '{"text": "no recipient", "id": "same-1"}\n')
    proc = cs.cli("send", "--file", str(same), check=False)
    assert proc.returncode == 1 and "internal error" not in proc.stderr, proc.stderr
    good = cs.dir / "good.jsonl"
    good.write_text('{"recipient": "pending", "text": "a"}\n' * 7)
    assert cs.cli("send", "--file", str(good)).stdout.strip() == (
        "accepted 7, duplicates 0, rejected 0")


def test_queue_stats_json_has_depths_rates_latency_and_health(cs):
    stats = queue_stats(cs)
    assert set(stats) >= {"depth", "by_priority", "oldest_ready_age_s", "rates", "latency_ms",
                          "in_flight", "subscriptions", "health", "inbox", "group_commit"}
    assert set(stats["rates"]) == {"enqueue", "deliver", "ack", "nack", "dead"}
    assert set(stats["latency_ms"]) == {"p50", "p95", "p99", "samples"}
    assert set(stats["by_priority"]["ready"]) == {"urgent", "high", "normal", "low"}
    human = cs.cli("queue", "stats").stdout
    assert human.startswith("health:") and "latency enqueue->ack" in human


def test_dlq_requeue_and_purge(cs):
    cs.cli("send", "Agent-404", "nobody home", "--id", "dead-1")
    wait(lambda: "dead-1" in cs.cli("queue", "dlq").stdout)
    dlq = json.loads(cs.cli("queue", "dlq", "--json").stdout)
    dead = next(m for m in dlq["messages"] if m["id"] == "dead-1")
    assert dead["payload"] == {"text": "nobody home"} and "unknown agent" in dead["last_error"]
    cs.cli("send", "Agent-404", "second", "--id", "dead-2")
    wait(lambda: "dead-2" in cs.cli("queue", "dlq").stdout)
    first = cs.cli("queue", "dlq", "--limit", "1").stdout
    assert "dead-1" in first and "dead-2" not in first and "more: --offset 1" in first
    second = cs.cli("queue", "dlq", "--limit", "1", "--offset", "1").stdout
    assert "dead-2" in second and "dead-1" not in second and "more:" not in second
    out = cs.cli("queue", "requeue", "--all").stdout.strip()
    assert out.startswith("requeued ") and int(out.split()[1]) >= 1
    wait(lambda: "dead-1" in cs.cli("queue", "dlq").stdout)  # unknown agent: dead again
    one_line_error(cs.cli("queue", "requeue", "dead-1", "no-such-id", check=False),
                   "not dead letters: no-such-id")
    one_line_error(cs.cli("queue", "requeue", check=False), "ids or --all")
    assert cs.cli("queue", "purge").stdout.strip() == "purged 2 dead messages"
    assert cs.cli("queue", "dlq").stdout.strip() == "no dead letters"
    cs.cli("send", "purge-me", "a")
    cs.cli("send", "purge-me", "b")
    one_line_error(cs.cli("queue", "purge", "--state", "ready", "--recipient", "purge-me",
                          check=False), "add --yes")
    one_line_error(cs.cli("queue", "purge", "--state", "ready", "--recipient", "", "--yes",
                          check=False), "--recipient must not be empty")
    assert queue_stats(cs)["ready_by_recipient"]["purge-me"] == 2  # neither touched anything
    assert cs.cli("queue", "purge", "--state", "ready", "--recipient", "purge-me",
                  "--yes").stdout.strip() == "purged 2 ready messages of purge-me"
    assert "purge-me" not in queue_stats(cs)["ready_by_recipient"]


def test_dlq_paging_past_the_end_and_out_of_range_offsets(cs):
    cs.cli("send", "Agent-404", "page me", "--id", "dead-page")
    wait(lambda: "dead-page" in cs.cli("queue", "dlq").stdout)
    total = json.loads(cs.cli("queue", "dlq", "--json").stdout)["total"]
    assert cs.cli("queue", "dlq", "--offset", str(total)).stdout.strip() == (
        f"no dead letters at offset {total} ({total} in all)")
    for bad in ("-1", "9223372036854775808", "99999999999999999999", "x"):
        proc = cs.cli("queue", "dlq", "--offset", bad, check=False)
        assert proc.returncode == 2 and "argument --offset" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    pid = cs.service("queue")["pid"]
    with connect(cs.config).private() as ctx:  # the queue itself bounds what a client sends
        addr = protocol.address_from_wire(
            AdminClient(cs.config).call(protocol.ADMIN_LOOKUP, {"name": "queue"})["addr"])
        for _ in range(3):
            reply = protocol.decode(ctx.ask(addr, protocol.QUEUE_DLQ.encode(
                {"offset": 2**63}), 10))
            assert reply.t == "error" and reply.b["code"] == "permanent", reply
    assert cs.service("queue")["pid"] == pid and cs.service("queue")["restarts"] == 0


def test_options_before_the_subcommand_count(cs, tmp_path):
    """-c and --json are accepted before or after the subcommand: before, they were parsed
    and then overwritten by the subcommand's defaults (the default config's port was used)."""
    proc = subprocess.run([sys.executable, "-m", "system.cli", "-c", str(cs.config_path),
                           "--json", "queue", "stats"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "depth" in json.loads(proc.stdout)
    parser = build_parser()
    args = parser.parse_args(["-c", "a.yaml", "queue", "dlq", "--json"])
    assert args.config == "a.yaml" and args.json is True
    args = parser.parse_args(["-c", "a.yaml", "status", "-c", "b.yaml"])
    assert args.config == "b.yaml" and not getattr(args, "json", False)


def test_queue_commands_fail_in_one_line_when_the_queue_is_off_or_no_swarm(make_swarm):
    swarm = make_swarm()  # queue disabled
    for args in (["send", "Agent-1", "x"], ["queue", "stats"], ["queue", "dlq", "--json"]):
        one_line_error(swarm.cli(*args, check=False), f"no swarm running on 127.0.0.1:{swarm.port}")
    swarm.start()
    for args in (["send", "Agent-1", "x"], ["queue", "stats", "--json"]):
        one_line_error(swarm.cli(*args, check=False), "the queue service is disabled")


def test_tables_never_print_control_characters(capsys):
    from actors.queue.commands import print_dlq

    print_dlq({"messages": [{"id": "d1", "recipient": "old\x00name", "attempts": 5,
                             "dead_at": 0, "last_error": "boom\nd2   forged row\x1b[2J"}],
               "offset": 0, "total": 1})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "old?name" in lines[1] and "boom?d2   forged row?[2J" in lines[1]
