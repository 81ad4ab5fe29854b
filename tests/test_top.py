"""``swarm top``: the dashboard's parts on made-up snapshots, then the real command on a real
swarm: plain text through a pipe across a stop and a start of the swarm, and the live screen
on a pseudo-terminal that quits on ``q``."""
from __future__ import annotations

import io
import os
import pty
import select
import signal
import subprocess
import sys
import time

from rich.console import Console

from actors.gas.cli import bar
from actors.top import Snapshot, Source, render
from tests.conftest import ROOT


def _text(snap: Snapshot, feed=None) -> str:
    console = Console(width=140, no_color=True, record=True, file=io.StringIO())
    console.print(render(snap, feed, plain=True))
    return console.export_text()


STATUS = {"healthy": True, "total_uss_bytes": 64 << 20, "alerts": [
    {"severity": "error", "service": "registry", "summary": "queue restarted", "ts": 1.0,
     "count": 3}], "services": {
    "core": {"state": "running", "health": "ok", "pid": 10, "restarts": 0, "uptime_s": 5,
             "rss_bytes": 1, "uss_bytes": 1, "detail": "", "parent": "", "activity": []},
    "discord": {"state": "running", "health": "ok", "pid": 11, "restarts": 1, "uptime_s": 5,
                "rss_bytes": 1, "uss_bytes": 1, "detail": "ready as bot, latency 12 ms",
                "parent": "core", "activity": [
                    {"at": 2.0, "user": "@mallory", "text": "[red]x[/red] \x1b[2J!status",
                     "ms": 41}]}}}
GAS = {"agents": [{"agent": "Agent-1", "progress": 91.0, "stage": "HANDOFF", "task": "T1",
                   "next": "Agent-2", "sent": {"prepare": 1.0, "ready": 2.0}},
                  {"agent": "Agent-2", "progress": 10.0, "stage": "STALLED", "task": "T0",
                   "next": "Agent-1", "sent": {}}], "relay": ["Agent-1", "Agent-2"]}
QUEUE = {"depth": {"ready": 7, "leased": 2, "dead": 1, "total": 10},
         "rates": {"enqueue": 3.5, "deliver": 3.0, "ack": 2.5}, "latency_ms": {"p95": 12.4},
         "health": {"status": "ok"}}


def test_the_dashboard_shows_every_part_and_chat_text_cannot_forge_markup():
    text = _text(Snapshot(time.time(), STATUS, QUEUE, GAS, fresh_at=time.time()),
                 feed=["  1.0s fault kill queue: SIGKILL queue (pid 9)"])
    for shown in ("healthy", "USS 64 MiB", "discord", "latency 12 ms",   # tree and chat
                  "7", "3.5", "12 ms",                                     # queue
                  bar(91.0), "HANDOFF", "STALLED", "ready ",              # gas
                  "@mallory", "41",                                       # recent commands
                  "queue restarted (x3)",                                 # alerts
                  "fault kill queue"):                                    # the demo's feed
        assert shown in text, shown
    assert "[red]x[/red] ?[2J!status" in text  # literally, with the escape defused
    assert "\x1b" not in text


def test_a_swarm_that_went_away_shows_its_last_view_marked_stale():
    class Down:
        def call(self, *a, **kw):
            raise OSError("connection refused")

    source = Source({"system": {}})
    source.last = Snapshot(100.0, STATUS, QUEUE, GAS, fresh_at=100.0)
    source.client = Down()
    snap = source.fetch()
    assert snap.problems["swarm"] == "connection refused" and snap.status is STATUS
    assert source.client is None  # a new client next time: the swarm may be back elsewhere
    text = _text(snap)
    assert "NOT REACHABLE (connection refused); showing " in text and "HANDOFF" in text


def test_bar_is_clamped():
    assert bar(-5, 4) == "░░░░" and bar(250, 4) == "████" and bar(50, 4) == "██░░"


def _top(swarm, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "system.cli", "top", *args, "-c",
                             str(swarm.config_path)], cwd=ROOT,
                            env={**os.environ, **swarm.env, **(env or {})}, **kw)


def test_plain_text_through_a_pipe_survives_the_swarm_stopping_and_starting(make_swarm):
    swarm = make_swarm({"services": {"queue": {"enabled": True}, "gas": {"enabled": True}},
                        "agents": {"names": ["Agent-1", "Agent-2"]}})
    swarm.start()
    once = swarm.cli("top", "--once")
    assert "healthy" in once.stdout and "READY" in once.stdout and "Agent-1" in once.stdout
    assert "\x1b" not in once.stdout  # not a terminal: no escape sequences
    proc = _top(swarm, "--interval", "0.3", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
    try:
        time.sleep(1.5)
        swarm.cli("stop")
        time.sleep(4.0)  # longer than top's call timeout: it must see the swarm away
        swarm.start()
        time.sleep(2.0)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "Traceback" not in err, err
    frames = out.split("swarm top  ")
    states = ["healthy" if f.split("\n")[0].split()[1:2] == ["healthy"] else
              "away" if "NOT REACHABLE" in f.split("\n")[0] else "other" for f in frames[1:]]
    assert "away" in states, out[-3000:]
    first_away = states.index("away")
    assert "healthy" in states[:first_away] and "healthy" in states[first_away:], states
    assert swarm.cli("top", "--once").returncode == 0


def test_on_a_terminal_the_screen_refreshes_in_place_and_q_quits(shared_swarm):
    controller, terminal = pty.openpty()
    proc = _top(shared_swarm, "--interval", "0.2", stdin=terminal, stdout=terminal,
                stderr=terminal, env={"TERM": "xterm", "COLUMNS": "160", "LINES": "60"})
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while seen.count(b"swarm top") < 3 and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.5)[0]:
                seen += os.read(controller, 65536)
        assert seen.count(b"swarm top") >= 3, seen[-2000:]  # redrawn, not once
        assert b"\x1b[?1049h" in seen  # the alternate screen: refreshed in place
        os.write(controller, b"q")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        while select.select([controller], [], [], 0.1)[0]:
            try:
                seen += os.read(controller, 65536)
            except OSError:
                break
        os.close(controller)
    assert b"Traceback" not in seen and b"registry" in seen


def _on_a_terminal(argv: list[str], cwd=ROOT, timeout: float = 120) -> tuple[int, bytes]:
    """Run ``swarm ARGV`` on a pseudo-terminal to its end: (exit code, everything shown)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "system.cli", *argv], cwd=cwd,
                            stdin=terminal, stdout=terminal, stderr=terminal,
                            env={**os.environ, "TERM": "xterm", "COLUMNS": "150",
                                 "LINES": "60"})
    os.close(terminal)
    seen, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([controller], [], [], 0.2)[0]:
                try:
                    seen += os.read(controller, 65536)
                except OSError:  # the terminal closed: everything was read
                    break
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=5), seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)


def test_a_simulation_on_a_terminal_shows_the_dashboard_then_the_summary(tmp_path):
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(
        "name: tiny\nduration_s: 4\n"
        "agents: {names: [Agent-1, Agent-2], speed: 40, start: [Agent-1]}\n"
        "timeline:\n  - {at: 1, fault: kill, target: queue}\n"
        "expect:\n  - {gas_once: true}\n  - {restarts: {service: queue, min: 1, max: 1}}\n")
    code, seen = _on_a_terminal(["simulate", str(scenario)])
    shown = seen.decode(errors="replace")
    assert code == 0, shown[-3000:]
    assert "\x1b[?1049h" in shown and "\x1b[?1049l" in shown  # the dashboard came and went
    dashboard, _, after = shown.rpartition("\x1b[?1049l")
    assert dashboard.count("swarm top") >= 2 and "fault kill queue" in dashboard  # timeline
    assert "scenario tiny: PASSED" in after and "Traceback" not in shown
