"""The gas pipeline in a real swarm: status files -> gas in the next agent's inbox, exactly once
per threshold, across restarts; pushed progress; stalls; bad files tolerated."""
from __future__ import annotations

import json
import time

import pytest

from actors.gas import relay
from actors.gas.agentfiles import parse_status

NAMES = ["Agent-1", "Agent-2", "Agent-3"]


@pytest.fixture
def gas_swarm(make_swarm):
    swarm = make_swarm({"services": {"queue": {"enabled": True},
                                     "gas": {"enabled": True, "poll_interval_s": 0.2,
                                             "stall_after_s": 2.0}},
                        "agents": {"names": NAMES}})
    swarm.start()
    return swarm


def write_status(swarm, agent: str, text: str) -> None:
    d = swarm.dir / "agents" / agent
    d.mkdir(parents=True, exist_ok=True)
    (d / "status.json").write_text(text)


def inbox(swarm, agent: str) -> list[str]:
    d = swarm.dir / "agents" / agent / "inbox"
    return sorted(p.read_text() for p in d.glob("*.md")) if d.exists() else []


def wait_inbox(swarm, agent: str, n: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = inbox(swarm, agent)
        if len(files) >= n:
            return files
        time.sleep(0.05)
    raise AssertionError(f"{agent} has {len(inbox(swarm, agent))} inbox files, wanted {n}")


def test_thresholds_fuel_the_next_agent_once_each_and_never_again_after_a_restart(gas_swarm):
    write_status(gas_swarm, "Agent-1", json.dumps({"current_task": "T1", "progress": 76}))
    files = wait_inbox(gas_swarm, "Agent-2", 1)
    assert "PREPARE" in files[0] and "T1" in files[0]
    write_status(gas_swarm, "Agent-1", json.dumps({"current_task": "T1", "progress": 80}))
    write_status(gas_swarm, "Agent-1", '{"current_task": "T1", "progr')  # half-written
    write_status(gas_swarm, "Agent-1", json.dumps({"current_task": "T1", "progress": "90%"}))
    assert "GET READY" in "".join(wait_inbox(gas_swarm, "Agent-2", 2))
    gas_swarm.cli("gas", "progress", "Agent-1", "100", "--task", "T1")
    assert "GO" in "".join(wait_inbox(gas_swarm, "Agent-2", 3))
    time.sleep(1.0)
    assert len(inbox(gas_swarm, "Agent-2")) == 3
    gas_swarm.cli("stop")
    gas_swarm.start()
    write_status(gas_swarm, "Agent-1", json.dumps({"current_task": "T1", "progress": 100}))
    time.sleep(1.5)
    assert len(inbox(gas_swarm, "Agent-2")) == 3, "a restart sent gas again"
    status = json.loads(gas_swarm.cli("gas", "status", "--json").stdout)
    one = next(a for a in status["agents"] if a["agent"] == "Agent-1")
    assert one["stage"] == "COMPLETE" and set(one["sent"]) == {"prepare", "ready", "go"}
    history = json.loads(gas_swarm.cli("gas", "history", "Agent-1", "--json").stdout)["gas"]
    assert [g["kind"] for g in history] == ["go", "ready", "prepare"]
    assert all(g["state"] == "sent" for g in history)


def test_a_jump_to_100_sends_every_threshold_in_order_and_the_last_agent_fuels_the_first(
        gas_swarm):
    write_status(gas_swarm, "Agent-3", json.dumps({"current_task": "T9", "progress": 100}))
    files = wait_inbox(gas_swarm, "Agent-1", 3)
    assert sum("PREPARE" in f for f in files) == 1 and sum("GO:" in f for f in files) == 1


def test_a_stalled_agent_is_nudged_alerted_and_can_be_unstalled(gas_swarm):
    write_status(gas_swarm, "Agent-2", json.dumps({"current_task": "T2", "progress": 10}))
    wait_inbox(gas_swarm, "Agent-2", 1, timeout=10)
    status = json.loads(gas_swarm.cli("gas", "status", "--json").stdout)
    assert next(a for a in status["agents"] if a["agent"] == "Agent-2")["stage"] == "STALLED"
    gas_swarm.cli("gas", "unstall", "Agent-2")
    assert "NUDGE" in "".join(wait_inbox(gas_swarm, "Agent-2", 2))


def test_bad_input_is_a_clear_error(gas_swarm):
    proc = gas_swarm.cli("gas", "progress", "../etc", "50", "--task", "x", check=False)
    assert proc.returncode == 1 and "invalid agent name" in proc.stderr
    proc = gas_swarm.cli("gas", "progress", "Agent-1", "150", "--task", "x", check=False)
    assert proc.returncode == 1 and "0 to 100" in proc.stderr


@pytest.mark.parametrize("data, task, progress", [
    (b'{"current_task": "T", "progress": "76%"}', "T", 76.0),
    (b'{"current_tasks": ["A", "B"]}', "A", None),
    (b'{"current_task": "T", "progress": 150}', None, None),
    (b'{"current_task": "T", "progress": "abc"}', None, None),
    (b"[1, 2]", None, None), (b"\xff\xfe", None, None),
])
def test_status_files_are_read_tolerantly(data, task, progress):
    reading = parse_status(data)
    assert (reading.task, reading.progress) == (task, progress)


def test_relay_rules():
    s, due = relay.observe(relay.AgentState("A"), "T1", 95.0, 0.0)
    assert due == ["prepare", "ready"]
    s, due = relay.observe(s, "T1", 50.0, 1.0)
    assert due == [] and relay.stage(s) == "ACTIVE"
    s, due = relay.observe(s, "T1", 96.0, 2.0)
    assert due == []
    s, due = relay.observe(s, "T2", 80.0, 3.0)
    assert due == ["prepare"] and s.cycle == 2
    s, became = relay.check_stall(s, 1000.0, 600.0)
    assert became and relay.stage(s) == "STALLED"
    assert relay.check_stall(s, 2000.0, 600.0) == (s, False)


@pytest.mark.parametrize("module", ["relay", "agentfiles", "ledger", "service", "brain"])
def test_doctests(module):
    import doctest
    import importlib
    assert doctest.testmod(importlib.import_module(f"actors.gas.{module}")).failed == 0


def test_sigkills_of_the_gas_actor_at_any_point_neither_skip_nor_repeat_a_threshold(gas_swarm):
    import os
    import random
    import signal
    rng = random.Random(7)
    tasks = [f"T{i}" for i in range(6)]
    for task in tasks:
        write_status(gas_swarm, "Agent-1", json.dumps({"current_task": task, "progress": 100}))
        seen = rng.random() < 0.5  # kill right after the write, or once the task was seen
        deadline = time.monotonic() + 10
        while seen and time.monotonic() < deadline and task not in gas_swarm.cli(
                "gas", "status", "--json", check=False).stdout:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.05))
        pid = gas_swarm.service("gas")["pid"]
        os.kill(pid, signal.SIGKILL)
        gas_swarm.wait_for(lambda s, pid=pid: s["services"]["gas"]["pid"] not in (None, pid)
                           and s["services"]["gas"]["state"] == "running", what="gas back")
    # a task overwritten before any gas actor read the file was never seen: no gas for it
    history = json.loads(gas_swarm.cli("gas", "history", "Agent-1", "--json").stdout)["gas"]
    seen_tasks = {g["task"] for g in history}
    assert tasks[-1] in seen_tasks and len(seen_tasks) >= 3, seen_tasks
    files = wait_inbox(gas_swarm, "Agent-2", 3 * len(seen_tasks), timeout=20)
    time.sleep(1.0)
    files = inbox(gas_swarm, "Agent-2")
    assert len(files) == 3 * len(seen_tasks)
    for task in seen_tasks:
        for kind in ("prepare", "ready", "go"):
            assert sum(f"Gas: {kind}\n" in f and f"Task: {task}\n" in f for f in files) == 1


def test_the_brain_adds_searches_survives_a_restart_and_fuels_the_ready_gas(gas_swarm):
    out = gas_swarm.cli("brain", "add", "--title", "Flaky build", "--tags", "ci,cache",
                        "The build fails when the cache is cold; warm it first.").stdout
    assert out.startswith("added #1")
    gas_swarm.cli("stop")
    gas_swarm.start()
    found = json.loads(gas_swarm.cli("brain", "search", "cold cach", "--json").stdout)
    assert [r["title"] for r in found["results"]] == ["Flaky build"]
    assert "**cold**" in found["results"][0]["snippet"]
    for weird in ('"', "NEAR(", "AND OR", "*"):
        proc = gas_swarm.cli("brain", "search", weird, check=False)
        assert "Traceback" not in proc.stderr
    proc = gas_swarm.cli("brain", "search", "***", check=False)
    assert proc.returncode == 1 and "at least one word" in proc.stderr
    shown = json.loads(gas_swarm.cli("brain", "show", "1", "--json").stdout)
    assert shown["tags"] == ["cache", "ci"] and shown["author"].startswith("cli:")
    assert "no brain entry" in gas_swarm.cli("brain", "show", "9", check=False).stderr
    write_status(gas_swarm, "Agent-1", json.dumps({"current_task": "T1", "progress": 92}))
    ready = [f for f in wait_inbox(gas_swarm, "Agent-2", 2) if "GET READY" in f]
    assert ready and "Flaky build" in ready[0]


UNICODE_ENTRIES = [
    ("Café ☕ naïve", "Grind *fresh* beans; «quotes» and 日本語 survive.\n\n## not a heading of ours",
     "learning", "ünï,ci"),
    ("Zeilen\numbruch", "Emoji 🚀 and a tab\there.", "decision", ""),
    ("Третий", "Кириллица.", "learning", "x"),
]


def test_brain_export_writes_one_markdown_file_per_category_unicode_intact(gas_swarm, tmp_path):
    for title, text, category, tags in UNICODE_ENTRIES:
        gas_swarm.cli("brain", "add", "--title", title, "--category", category, "--tags", tags,
                      text)
    out = tmp_path / "export"
    report = json.loads(gas_swarm.cli("brain", "export", str(out), "--json").stdout)
    assert report["entries"] == 3 and report["files"] == {"learning.md": 2, "decision.md": 1}
    assert sorted(p.name for p in out.iterdir()) == ["decision.md", "learning.md"]
    learning = (out / "learning.md").read_text(encoding="utf-8")
    assert learning.startswith("# Swarm brain: learning\n\n## #1 Café ☕ naïve\n")
    assert "Grind *fresh* beans; «quotes» and 日本語 survive." in learning
    assert "- tags: ci, ünï\n" in learning and "- author: cli:" in learning
    assert learning.index("## #1 ") < learning.index("## #3 Третий") and "Кириллица." in learning
    decision = (out / "decision.md").read_text(encoding="utf-8")
    assert "## #2 Zeilen umbruch\n" in decision and "Emoji 🚀 and a tab\there." in decision

    proc = gas_swarm.cli("brain", "export", str(out), check=False)
    assert proc.returncode == 1 and "not empty" in proc.stderr and "--force" in proc.stderr
    (out / "decision.md").write_text("stale")
    gas_swarm.cli("brain", "export", str(out), "--force")
    assert (out / "decision.md").read_text(encoding="utf-8") == decision
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp files left"
    (tmp_path / "file").write_text("x")
    proc = gas_swarm.cli("brain", "export", str(tmp_path / "file"), check=False)
    assert proc.returncode == 1 and "not a directory" in proc.stderr


def test_brain_export_pages_through_every_entry_once_while_entries_are_added(
        monkeypatch, tmp_path):
    """250 entries in pages of 100, newest first; one added between two pages shifts the
    rest by one: no entry there at the start is lost, none is written twice."""
    import argparse

    from actors.gas import cli as gas_cli

    rows = [{"id": i, "title": f"entry {i}", "content": f"text {i}", "author": "a",
             "category": "note", "tags": [], "created_at": 0} for i in range(1, 251)]

    class FakeAdmin:
        def __init__(self, _config):
            pass

        def call(self, mtype, body):
            assert body["op"] == "brain_list" and body["limit"] == gas_cli.EXPORT_PAGE
            if body["offset"] == 100:
                rows.append({**rows[0], "id": 251, "title": "added meanwhile"})
            newest = sorted(rows, key=lambda r: -r["id"])
            return {"entries": newest[body["offset"]:body["offset"] + body["limit"]]}

    monkeypatch.setattr(gas_cli, "AdminClient", FakeAdmin)
    monkeypatch.setattr(gas_cli, "config_of", lambda args: argparse.Namespace(data={}))
    out = tmp_path / "out"
    assert gas_cli.cmd_brain_export(argparse.Namespace(dir=str(out), force=False)) == 0
    text = (out / "note.md").read_text(encoding="utf-8")
    ids = [int(line.split()[1][1:]) for line in text.splitlines() if line.startswith("## #")]
    assert ids == list(range(1, 251))


def test_thresholds_priorities_learnings_and_paths_come_from_config(make_swarm):
    swarm = make_swarm({"services": {"queue": {"enabled": True}, "gas": {
        "enabled": True, "poll_interval_s": 0.2, "thresholds": {"prepare": 50, "go": 95},
        "priorities": {"prepare": "low"}, "learnings": {"count": 1, "max_chars": 200},
        "db_path": "relay/sent.db", "brain": {"db_path": "relay/knowledge.db"}}},
        "agents": {"names": NAMES}})
    swarm.start()
    for title, text in (("flaky login test", "retry the login fixture once"),
                        ("newest", "unrelated but recent")):
        swarm.cli("brain", "add", "--title", title, "--category", "learning", text)
    swarm.cli("gas", "progress", "Agent-1", "50", "--task", "fix login")
    files = wait_inbox(swarm, "Agent-2", 1)
    assert "PREPARE" in files[0] and "Priority: low" in files[0]
    swarm.cli("gas", "progress", "Agent-1", "90")
    ready = next(f for f in wait_inbox(swarm, "Agent-2", 2) if "GET READY" in f)
    assert "flaky login test" in ready and "newest" not in ready, "relevance, one learning"
    write_status(swarm, "Agent-1", json.dumps({"progress": 95}))  # no task: IDLE
    time.sleep(0.6)  # a few polls
    swarm.cli("gas", "progress", "Agent-1", "95")  # resumes the last task, no --task needed
    assert any("GO:" in f for f in wait_inbox(swarm, "Agent-2", 3))
    status = json.loads(swarm.cli("gas", "status", "--json").stdout)
    one = next(a for a in status["agents"] if a["agent"] == "Agent-1")
    assert one["stage"] == "COMPLETE" and one["task"] == "fix login"
    assert (swarm.dir / "data" / "relay" / "sent.db").exists()
    assert (swarm.dir / "data" / "relay" / "knowledge.db").exists()


def test_thresholds_that_do_not_rise_park_the_service_with_the_reason(make_swarm):
    swarm = make_swarm({"services": {"queue": {"enabled": True}, "gas": {
        "enabled": True, "thresholds": {"prepare": 95}}}, "agents": {"names": NAMES}})
    swarm.cli("start", "-d", check=False)
    swarm.wait_for(lambda s: s["services"]["gas"]["state"] == "failed", timeout=20,
                   what="gas failed")
    assert "prepare < ready < go" in json.dumps(swarm.service("gas"))
