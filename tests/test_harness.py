"""The simulation harness: scenario checks, simulated agents, and every shipped scenario run for
real (the real swarm, discord.py and twitchio against the simulated platforms); `swarm simulate`
against an operator's own config, failing by name."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from system.errors import ConfigError
from system.harness import scenario as scenario_mod
from system.harness.agents import SimAgents
from system.harness.scenario import CHECKS, EXPECTATIONS, _message_text, check_scenario
from tests.conftest import ROOT

SCENARIOS = sorted((ROOT / "config" / "scenarios").glob("*.yaml"))
SLOW = os.environ.get("SWARM_SLOW") == "1"


def swarm_cli(*args: str, cwd: Path = ROOT, timeout: float = 240):
    return subprocess.run([sys.executable, "-m", "system.cli", *args], check=False, cwd=cwd,
                          text=True,
                          capture_output=True, timeout=timeout)


@pytest.mark.parametrize("scenario, problem", [
    ({"name": "x", "timeline": [{"at": 1, "user": "nobody", "say": "!status"}]},
     "user 'nobody' is not in users"),
    ({"name": "x", "timeline": [{"at": 1, "fault": "kill"}]}, "kill needs target"),
    ({"name": "x", "timeline": [{"at": 1}]}, "give one of say or click (with user), or fault"),
    ({"name": "x", "expect": [{"everything_fine": True}]}, "unknown expectation 'everything_fine'"),
    ({"name": "x", "duration_s": -1}, "duration_s: -1 is less than or equal to the minimum"),
    ({"name": "x", "agents": {"count": 2}, "timeline": [
        {"at": 1, "fault": "stall", "target": "Agent-7"}]}, "stall needs target: one of Agent-1"),
    ({"name": "x", "timeline": [{"at": 1, "fault": "disk_full", "target": "gas"}]},
     "disk_full fills the queue's disk: no target but queue"),
    ({"name": "x", "expect": [{"restarts": {"queue": 1}}]},
     "expect.0.restarts: 'service' is a required property"),
    ({"name": "x", "expect": [{"handoff_within_s": "soon"}]},
     "expect.0.handoff_within_s: 'soon' is not of type 'number'"),
    ({"name": "x", "expect": [{"stalled": "Agent-9"}]}, "stalled names no agent of Agent-1"),
])
def test_a_bad_scenario_is_refused_naming_the_problem(scenario, problem):
    with pytest.raises(ConfigError) as err:
        check_scenario(scenario, "s.yaml")
    assert problem in str(err.value)


def test_every_expectation_has_a_schema_for_its_value():
    assert set(EXPECTATIONS) == set(CHECKS)


def test_the_shipped_scenarios_are_valid():
    assert {p.stem for p in SCENARIOS} >= {"demo", "stall", "chaos", "disk_full"}
    for path in SCENARIOS:
        check_scenario(yaml.safe_load(path.read_text()), str(path))


def test_message_text_is_what_reaches_the_inbox():
    assert _message_text("!message Agent-2 check the build") == ("Agent-2", "check the build")
    assert _message_text("!ask why is it red?") == (None, "why is it red?")
    assert _message_text("Agent-3: rerun") == ("Agent-3", "rerun")
    assert _message_text("!status") is None and _message_text("a b: c") is None


def deliver(inbox: Path, mid: str, text: str) -> None:
    """An inbox file as the queue writes it: whole, by a rename (never seen half-written)."""
    tmp = inbox / f".{mid}.tmp"
    tmp.write_text(text)
    os.replace(tmp, inbox / f"{mid}.md")


def test_simulated_agents_read_in_order_mark_read_start_on_go_and_survive_a_crash(tmp_path):
    agents = SimAgents(tmp_path, ["Agent-1", "Agent-2"], speed=50, start=["Agent-1"],
                       write_every_s=0.05, torn_writes=0.5, seed=1)
    agents.start()
    try:
        inbox = tmp_path / "Agent-2" / "inbox"
        deliver(inbox, "m1", "# Message m1\nFrom: cli\nType: text\n\nhello\n")
        time.sleep(0.05)
        deliver(inbox, "m2", "# Message m2\nFrom: gas\nType: gas\nGas: go\n\nGO\n")
        deadline = time.monotonic() + 30  # 2 s of work, on a loaded machine maybe more
        while time.monotonic() < deadline and not any(
                e.kind == "reached" and e.agent == "Agent-2" for e in agents.snapshot()):
            time.sleep(0.05)
        events = agents.snapshot()
        assert any(e.kind == "reached" and e.agent == "Agent-2" for e in events), events
        assert [e.message_id for e in events if e.kind == "read"] == ["m1", "m2"]
        assert (tmp_path / "Agent-2" / "read.log").read_text().split() == ["m1", "m2"]
        assert sorted(p.name for p in inbox.iterdir()) == ["m1.md", "m2.md"]  # never touched
        status = json.loads((tmp_path / "Agent-2" / "status.json").read_text())
        assert status == {**status, "current_task": "Agent-2-task-1", "progress": 100}
        agents.crash("Agent-2", 0.3)
        deliver(inbox, "m3", "# Message m3\nType: text\n\nafter the crash\n")
        time.sleep(1.0)
        reads = [e.message_id for e in agents.snapshot() if e.kind == "read"]
        assert reads == ["m1", "m2", "m3"], "a restarted agent goes on after read.log"
    finally:
        agents.stop()


def test_every_shipped_scenario_holds():
    """All at once (each swarm is mostly idle, waiting on its timeline). CI runs each for at
    most 25 s of timeline; SWARM_SLOW=1 for their full length."""
    procs = {}
    for path in SCENARIOS:
        duration = [] if SLOW else ["--duration", str(min(25, yaml.safe_load(
            path.read_text()).get("duration_s", 60)))]
        procs[path] = subprocess.Popen(
            [sys.executable, "-m", "system.cli", "simulate", str(path), "--json", *duration],
            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    failures, reports = {}, {}
    for path, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        report = reports[path.stem] = json.loads(out) if out.strip().startswith("{") else {}
        if proc.returncode != 0 or not report.get("ok") or report["summary"]["left_running"]:
            failures[path.stem] = [c for c in report.get("checks", []) if not c["ok"]] \
                or err[-2000:]
        elif report["seed"] != yaml.safe_load(path.read_text())["seed"]:
            failures[path.stem] = f"seed {report['seed']} in the report"
    assert not failures, failures
    # the demo measures itself: threshold -> gas in the inbox, SIGKILL -> running again
    demo = reports["demo"]["summary"]
    assert demo["gas_latency_ms"]["samples"] >= 3 and demo["gas_latency_ms"]["p95"] < 5000
    assert demo["recovery_ms"]["samples"] >= 1 and demo["chat"]["p95_ms"] is not None
    # disk_full: the queue's database on a tmpfs of its own (as root), filled, freed, unmounted
    fault, = [d for d in reports["disk_full"]["timeline"] if d["fault"] == "disk_full"]
    if os.geteuid() == 0:
        assert fault["done"].startswith("filled the queue's tmpfs"), fault
    else:
        assert fault["done"].startswith("skipped: ") and fault["skipped"], fault
    mounts = Path("/proc/self/mounts").read_text() if Path("/proc/self/mounts").exists() else ""
    assert "swarm-sim-" not in mounts, "a scenario's tmpfs left mounted"


def test_disk_full_where_no_tmpfs_can_be_mounted_is_skipped_saying_why(monkeypatch, tmp_path):
    """Not root, or the mount refused: the fault is 'skipped: <reason>' in the timeline and
    the report, the queue keeps its usual database, disk_full_handled passes saying why."""
    monkeypatch.setattr(scenario_mod, "mount_tmpfs",
                        lambda path, size: (None, "mounting a tmpfs needs root"))
    data = check_scenario({"name": "x", "timeline": [{"at": 1, "fault": "disk_full"}],
                           "expect": [{"disk_full_handled": True}]})
    run = scenario_mod.Run(data, {}, directory=tmp_path)
    with contextlib.ExitStack() as stack:
        run._mount_disk(tmp_path, stack)
    assert run.disk is None and "db_path" not in run.overlay()["services"]["queue"]
    run.t0 = time.monotonic()
    run.agents = SimAgents(tmp_path, run.names)
    run._fault(data["timeline"][0])
    assert run.done == [{"t": 0.0, "fault": "disk_full", "target": None, "skipped": True,
                         "done": "skipped: mounting a tmpfs needs root"}]
    evidence = scenario_mod.Evidence(run, {}, [], [], [], [])
    assert scenario_mod.CHECKS["disk_full_handled"](evidence, True) == (
        True, "skipped: mounting a tmpfs needs root")
    result = scenario_mod.Result("x", 1, 1.0, summary=evidence.summary())
    assert "[skipped] disk_full at 0s: mounting a tmpfs needs root" in \
        scenario_mod.render_report(result)


def test_simulate_rehearses_the_operators_config_and_names_each_failed_expectation(tmp_path):
    """The operator's swarm.yaml makes user 4242 an operator by id; the scenario's otto has
    that id and no harness role: the operator's own rule lets him send. The queue is killed,
    so an expectation of no queue restart fails, by name, with exit 1."""
    (tmp_path / "swarm.yaml").write_text(yaml.safe_dump({
        "agents": {"names": ["Agent-1", "Agent-2"]},
        "services": {"discord": {"permissions": {"operators": {"users": [4242]}}}}}))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "name": "rehearsal", "duration_s": 8, "seed": 5,
        "agents": {"names": ["Agent-1", "Agent-2"], "speed": 30},
        "users": {"otto": {"platform": "discord", "id": 4242},
                  "vic": {"platform": "discord"}},
        "timeline": [{"at": 1, "user": "otto", "say": "!message Agent-2 from the rehearsal"},
                     {"at": 2, "user": "vic", "say": "!message Agent-2 not allowed"},
                     {"at": 3, "fault": "kill", "target": "queue"}],
        "expect": [{"delivered": {"to": "Agent-2", "contains": "from the rehearsal"}},
                   {"refused": "vic"}, {"restarts": {"service": "queue", "max": 0}}]}))
    proc = swarm_cli("simulate", "s.yaml", "-c", "swarm.yaml", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "[ok] delivered" in proc.stdout and "[ok] refused: vic" in proc.stdout
    assert "[FAIL] restarts" in proc.stdout and "queue restarted 1 time(s)" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_simulate_with_a_bad_file_is_one_clear_line(tmp_path):
    (tmp_path / "s.yaml").write_text("name: x\ntimeline: [{at: 1, fault: kill}]\n")
    proc = swarm_cli("simulate", str(tmp_path / "s.yaml"))
    assert proc.returncode == 1 and "kill needs target" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = swarm_cli("simulate", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 1 and "cannot read scenario" in proc.stderr


def _random_kills(tmp_path, seconds: int, messages: int):
    """Random SIGKILLs of every actor kind under queued messages and steady chat on both
    platforms: nothing lost, nothing twice, no gas twice, every command that reached a bot
    answered (an error counts), healthy at the end."""
    kinds = ["queue", "gas", "discord", "twitch", "registry", "health", "admin", "core",
             "services"]
    scenario = {
        "name": "random-kills", "duration_s": seconds, "seed": 9,
        "preload": {"messages": messages},
        "agents": {"names": ["Agent-1", "Agent-2", "Agent-3"], "speed": 12},
        "users": {"otto": {"platform": "discord", "role": "operator"},
                  "mo": {"platform": "twitch", "badges": ["moderator"]}},
        "timeline": [
            {"at": 1, "user": "otto", "say": "!message Agent-2 steady", "repeat": seconds * 2,
             "every_s": 0.5},
            # Twitch lets a bot that is no moderator 20 lines per 30 s: more replies than
            # that wait in the bot's limiter, past the harness's 15 s for a reply
            {"at": 1.2, "user": "mo", "say": "!agent Agent-3 steady", "repeat": seconds // 2,
             "every_s": 2.0},
            {"at": 2, "fault": "kill", "targets": kinds, "repeat": seconds // 3,
             "every_s": 2.5}],
        "expect": [{"preloaded_delivered": True}, {"gas_once": True},
                   {"delivered_once": True}, {"replied": "all"}, {"healthy_at_end": True}]}
    (tmp_path / "kills.yaml").write_text(yaml.safe_dump(scenario))
    proc = swarm_cli("simulate", str(tmp_path / "kills.yaml"), "--json",
                     timeout=seconds * 4 + 120)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, [c for c in report["checks"] if not c["ok"]]
    assert report["summary"]["faults"] == seconds // 3
    assert report["summary"]["left_running"] == 0


def test_random_kills_of_every_actor_kind_lose_nothing(tmp_path):
    _random_kills(tmp_path, seconds=20, messages=5_000)


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="60 s of kills under 50,000 messages: SWARM_SLOW=1")
def test_random_kills_for_a_minute_under_50k_messages(tmp_path):
    _random_kills(tmp_path, seconds=60, messages=50_000)
