"""The `swarm` CLI end to end: logs, config check/show, option placement, clean errors."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from system import protocol
from tests.conftest import ROOT


def test_logs_show_structured_records_filtered_by_service_and_level(shared_swarm):
    human = shared_swarm.cli("logs").stdout
    assert "started" in human and "probe" in human
    lines = shared_swarm.cli("logs", "probe", "--json").stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert records and {r["service"] for r in records} == {"probe"}
    assert all({"ts", "level", "actor", "pid", "event", "msg"} <= set(r) for r in records)
    errors = shared_swarm.cli("logs", "--level", "error", "--json").stdout.splitlines()
    assert all(json.loads(line)["level"] == "error" for line in errors)


def test_logs_follow_prints_new_records(shared_swarm):
    proc = subprocess.Popen([sys.executable, "-m", "system.cli", "logs", "-f", "--json", "-c",
                             str(shared_swarm.config_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        time.sleep(1.0)
        shared_swarm.cli("restart", "probe")
        deadline = time.monotonic() + 10
        seen = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if '"manual_restart"' in line:
                break
        assert any('"manual_restart"' in line for line in seen)
    finally:
        proc.kill()
        proc.wait()


def test_thespian_internal_log_stays_out_of_tmp(make_swarm, tmp_path):
    swarm = make_swarm()
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    swarm.cli("start", "-d", "--wait", "20", env={"TMPDIR": str(tmp)})
    swarm.cli("stop")
    assert not (tmp / "thespian.log").exists()
    assert (swarm.dir / "data" / "logs" / "swarm.log").exists()


def test_config_check_accepts_the_packaged_defaults():
    proc = subprocess.run([sys.executable, "-m", "system.cli", "config", "check"], cwd=ROOT,
                          capture_output=True, text=True, check=False, env={"PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "config ok" in proc.stdout


def test_config_check_lists_every_error_with_its_key_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("system:\n  admin_port: lots\nservices:\n  queue:\n    batchmax: 3\n")
    proc = subprocess.run([sys.executable, "-m", "system.cli", "config", "check", "-c", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "system.admin_port" in proc.stderr and "batchmax" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_show_redacts_secrets_and_names_sources(tmp_path):
    cfg = tmp_path / "swarm.yaml"
    cfg.write_text("services:\n  probe:\n    actor: actors.probe:Probe\n"
                   "    options:\n      token: ${env:PROBE_TOKEN}\n")
    env = {"PROBE_TOKEN": "hunter2-secret", "PATH": "/usr/bin"}
    for args in (["config", "show"], ["--json", "config", "show"]):
        proc = subprocess.run([sys.executable, "-m", "system.cli", *args, "-c", str(cfg)],
                              cwd=ROOT, capture_output=True, text=True, check=False, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "hunter2-secret" not in proc.stdout and "***" in proc.stdout
    assert str(cfg) in proc.stdout


def test_unknown_command_and_missing_config_are_one_line_errors(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "system.cli", "status", "-c",
                           str(tmp_path / "nope.yaml")], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 2 and "config file not found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_secrets_never_reach_logs_status_or_config_show(make_swarm, monkeypatch):
    secret = "sup3r-s3cret-token-value"
    monkeypatch.setenv("PROBE_TOKEN", secret)
    swarm = make_swarm({"services": {"probe": {"options": {"token": "${env:PROBE_TOKEN}"}}}})
    swarm.start()
    swarm.ask("probe", protocol.TEST_LOG, {"text": f"token is {secret}"})
    shown = swarm.cli("config", "show").stdout + swarm.cli("status", "--json").stdout
    time.sleep(0.5)
    swarm.cli("stop")
    assert secret not in shown
    logs = swarm.dir / "data" / "logs"
    text = "".join(p.read_text(errors="replace") for p in logs.iterdir() if p.is_file())
    assert "token is ***" in text and "library says token is ***" in text
    assert secret not in text


def test_one_request_can_be_followed_across_actors_by_its_correlation_id(shared_swarm):
    from system.admin import AdminClient

    client = AdminClient(shared_swarm.config)
    client.call(protocol.HEALTH_PING)  # resolve the admin first
    data = protocol.ADMIN_RESTART.encode({"name": "probe"}, id="trace-4711")
    reply = protocol.decode(client.asys.ask(client._admin, data, 10))
    assert reply.t == "ok" and reply.re == "trace-4711", reply
    log = shared_swarm.dir / "data" / "logs" / "swarm.log"
    deadline = time.monotonic() + 10  # the records travel through the logger process
    while True:
        traced = {json.loads(line)["service"] for line in log.read_text().splitlines()
                  if '"cid": "trace-4711"' in line}
        if {"services", "probe"} <= traced or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {"services", "probe"} <= traced, traced  # the supervisor's restart, the new probe


def test_start_refuses_an_invalid_config_and_starts_nothing(make_swarm):
    swarm = make_swarm()
    good = swarm.config_path.read_text()
    swarm.config_path.write_text(good + "surprise: 1\n")
    proc = swarm.cli("start", "-d", check=False)
    assert proc.returncode == 2 and "unknown key 'surprise'" in proc.stderr
    assert "Traceback" not in proc.stderr and not swarm.processes()
    swarm.config_path.write_text(good)


class _ScriptedSystem:
    """An ActorSystem stand-in for AdminClient: records what is sent to whom and answers each
    ask/listen with the next scripted step (a function of the envelopes sent so far)."""

    def __init__(self, steps):
        self.steps, self.sent = list(steps), []

    def createActor(self, *args, **kw):
        return "root"

    def ask(self, addr, data, timeout):
        self.sent.append((addr, protocol.decode(data)))
        return self.listen(timeout)

    def listen(self, timeout):
        return self.steps.pop(0)(self.sent) if self.steps else None


def test_a_slow_admin_is_waited_for_not_asked_twice(monkeypatch):
    """An admin slower than one attempt (3 s) still runs the first request: sending it again
    would purge, restart or enqueue a second time and report on the second run."""
    from system import admin as admin_client

    admin_wire = "tcp:127.0.0.1:4"

    def lookup_reply(sent):
        return protocol.OK.encode({"addr": admin_wire}, re=sent[-1][1].id)

    def purge_reply(sent):
        first = next(env for addr, env in sent if env.t == protocol.ADMIN_QUEUE.name)
        return protocol.OK.encode({"purged": 7}, re=first.id)

    steps = [lookup_reply,            # the admin is found
             lambda sent: None,       # the purge: no answer within the attempt
             purge_reply,             # its answer comes while the client looks the admin up
             lookup_reply]            # still the same admin: wait on, do not send again
    fake = _ScriptedSystem(steps)
    monkeypatch.setattr(admin_client, "connect", lambda config: fake)
    monkeypatch.setattr(admin_client, "read_pid_file", lambda config: {"root_pid": 1})
    client = admin_client.AdminClient({})
    assert client.call(protocol.ADMIN_QUEUE, {"op": "purge", "state": "dead"}) == {"purged": 7}
    purges = [env for _, env in fake.sent if env.t == protocol.ADMIN_QUEUE.name]
    assert len(purges) == 1 and not client._late

    # an admin that answers not_ready did not run it: the same request goes again
    def not_ready(sent):
        return protocol.error_reply(sent[-1][1], "not_ready", "restarting")

    def ok(sent):
        return protocol.OK.encode({"purged": 1}, re=sent[-1][1].id)
    fake = _ScriptedSystem([lookup_reply, not_ready, lookup_reply, ok])
    monkeypatch.setattr(admin_client, "connect", lambda config: fake)
    assert admin_client.AdminClient({}).call(protocol.ADMIN_QUEUE, {"op": "purge"}) == {
        "purged": 1}
    assert len([e for _, e in fake.sent if e.t == protocol.ADMIN_QUEUE.name]) == 2
