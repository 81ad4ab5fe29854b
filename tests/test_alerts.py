"""Alerts: coalescing (pure) and routing from supervisors to the log and sink services."""
from __future__ import annotations

import json
import os
import signal
import time

from actors.alerts import AlertRouter, alert
from system import protocol


def test_repeats_within_the_window_become_one_summary_with_a_count():
    router = AlertRouter(window_s=10)
    out = [a for t in range(100) for a in router.submit(alert("error", "queue", "restarted",
                                                              f"crash {t}"), now=t * 0.05)]
    assert len(out) == 1 and out[0]["count"] == 1
    summary = router.flush(now=10.0)
    assert len(summary) == 1 and summary[0]["count"] == 99 and "crash 99" in summary[0]["details"]
    assert router.flush(now=30.0) == []


def test_different_causes_are_not_coalesced_and_low_severity_is_dropped():
    router = AlertRouter(window_s=10, min_severity="warning")
    assert len(router.submit(alert("error", "queue", "restarted"), 0.0)) == 1
    assert len(router.submit(alert("error", "gas", "restarted"), 0.0)) == 1
    assert router.submit(alert("info", "gas", "hello"), 0.0) == []


def test_a_window_without_repeats_closes_silently_and_the_next_alert_goes_out_at_once():
    router = AlertRouter(window_s=5)
    router.submit(alert("warning", "q", "slow"), 0.0)
    assert router.flush(6.0) == []
    assert len(router.submit(alert("warning", "q", "slow"), 7.0)) == 1


def test_a_restart_storm_reaches_log_and_sink_as_one_alert_plus_a_summary(make_swarm):
    swarm = make_swarm({"alerts": {"window_s": 2.0, "sinks": ["sink"]},
                        "supervision": {"services": {"max_restarts": 100},
                                        "backoff": {"initial_s": 0.01}},
                        "services": {"sink": {"actor": "actors.probe:Probe"}}})
    swarm.start()
    for _ in range(5):
        pid = swarm.service("probe")["pid"]
        os.kill(pid, signal.SIGKILL)
        swarm.wait_for(lambda s, pid=pid: s["services"]["probe"]["pid"] not in (None, pid)
                       and s["services"]["probe"]["state"] == "running", what="restart")
    time.sleep(3.0)  # the window closes on the registry's tick
    got = swarm.ask("sink", protocol.TEST_EVENTS).b["alerts"]
    restarts = [a for a in got if a["key"] == "probe:restart"]
    assert [a["count"] for a in restarts] == [1, 4], restarts
    log = (swarm.dir / "data" / "logs" / "swarm.log").read_text().splitlines()
    routed = [json.loads(line) for line in log if '"event": "alert"' in line
              and '"service": "registry"' in line and "probe restarted" in line]
    assert [r["count"] for r in routed] == [1, 4]
