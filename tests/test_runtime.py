"""The runtime on a real multiprocTCPBase system: supervision, health, stop, security."""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from system import protocol
from system.admin import AdminClient


def _pids(status: dict) -> dict:
    return {n: v["pid"] for n, v in status["services"].items()}


def test_start_detached_shows_every_actor_healthy(swarm):
    status = swarm.status()
    assert status["healthy"] is True
    expected = {"core", "registry", "health", "admin", "services", "probe", "queue"}
    assert expected <= set(status["services"])
    for name, view in status["services"].items():
        assert set(view) >= {"state", "healthy", "pid", "restarts", "uptime_s", "rss_bytes",
                             "detail"}, name
    assert status["services"]["queue"]["state"] == "disabled"
    probe = status["services"]["probe"]
    assert probe["state"] == "running" and probe["restarts"] == 0
    assert psutil.pid_exists(probe["pid"])


@pytest.mark.parametrize("victim", ["probe", "health", "admin"])
def test_sigkilled_actor_is_restarted_and_siblings_untouched(swarm, victim):
    before = swarm.wait_for(lambda s: s["healthy"] and all(
        v["rss_bytes"] for v in s["services"].values() if v["state"] == "running"),
        what="first samples")
    os.kill(before["services"][victim]["pid"], signal.SIGKILL)
    after = swarm.wait_for(
        lambda s: s["healthy"] and s["services"][victim]["restarts"] == 1
        and s["services"][victim]["pid"] != before["services"][victim]["pid"],
        what=f"{victim} restarted")
    # core is rest_for_one: killing health restarts admin after it; services are one_for_one
    restarted_with = {"probe": {"probe"}, "health": {"health", "admin"}, "admin": {"admin"}}
    changed = {n for n, pid in _pids(after).items() if pid != _pids(before)[n]}
    assert changed == restarted_with[victim]


def test_killing_the_core_supervisor_restarts_only_the_core_subtree(swarm):
    before = swarm.status()
    os.kill(before["services"]["core"]["pid"], signal.SIGKILL)
    after = swarm.wait_for(lambda s: s["healthy"] and s["services"]["core"]["restarts"] == 1
                           and s["services"]["admin"]["pid"] != before["services"]["admin"]["pid"],
                           what="core subtree restarted")
    changed = {n for n, pid in _pids(after).items() if pid != _pids(before)[n]}
    assert changed == {"core", "registry", "health", "admin"}
    assert swarm.ask("probe", protocol.TEST_ECHO, {"x": 2}).b == {"x": 2}


def test_memory_limit_kills_and_restarts_with_the_reason_recorded(make_swarm):
    swarm = make_swarm({"services": {"probe": {"max_rss_mb": 1}},
                        "supervision": {"services": {"max_restarts": 100}}})
    swarm.start()
    status = swarm.wait_for(lambda s: s["services"]["probe"]["restarts"] >= 1
                            and "over limit" in s["services"]["probe"]["last_error"],
                            what="memory limit enforced")
    assert "limit 1 MB" in status["services"]["probe"]["last_error"]


def test_registry_restart_rebuilds_its_state_from_the_supervisors(swarm):
    before = swarm.status()
    os.kill(before["services"]["registry"]["pid"], signal.SIGKILL)
    after = swarm.wait_for(lambda s: s["healthy"] and s["services"]["registry"]["restarts"] == 1,
                           what="registry restarted")
    assert set(after["services"]) == set(before["services"])
    assert after["services"]["probe"]["pid"] == before["services"]["probe"]["pid"]
    assert swarm.ask("probe", protocol.TEST_ECHO, {"x": 1}).b == {"x": 1}


def test_registry_and_services_supervisor_killed_together_both_come_back(swarm):
    """The services supervisor restarts with the registry address it was given, which moves
    while it starts: the root must not adopt that dead address back from its start reply
    (the whole tree then reported to it and status never answered again)."""
    before = swarm.status()
    for name in ("registry", "services"):
        os.kill(before["services"][name]["pid"], signal.SIGKILL)
    after = swarm.wait_for(
        lambda s: s["healthy"] and all(s["services"][n]["pid"] != before["services"][n]["pid"]
                                       for n in ("registry", "services", "probe")),
        timeout=20, what="registry and services subtree restarted")
    assert set(after["services"]) == set(before["services"])
    assert swarm.ask("probe", protocol.TEST_ECHO, {"x": 3}).b == {"x": 3}


def test_a_service_starting_while_the_registry_moves_learns_the_new_address(make_swarm):
    swarm = make_swarm({"services": {"slow": {"actor": "actors.probe:Probe",
                                              "options": {"start_delay_s": 2}}}})
    swarm.start()
    before = swarm.status()
    pid = before["services"]["slow"]["pid"]
    os.kill(pid, signal.SIGKILL)  # restarts: 2 s in its start
    time.sleep(0.5)
    os.kill(before["services"]["registry"]["pid"], signal.SIGKILL)
    swarm.wait_for(lambda s: s["healthy"] and s["services"]["slow"]["pid"] != pid
                   and s["services"]["registry"]["pid"] != before["services"]["registry"]["pid"],
                   timeout=20, what="slow and the registry restarted")
    where = swarm.ask("slow", protocol.TEST_WHERE).b  # it started with the old address
    found = AdminClient(swarm.config).call(protocol.ADMIN_LOOKUP, {"name": "registry"})
    assert where["registry"] == found["addr"]


@pytest.mark.parametrize("gap_s", [0.0, 0.005])
def test_both_supervisors_killed_milliseconds_apart_are_restarted(swarm, gap_s):
    """Thespian may report only one of two child exits milliseconds apart; the root notices
    the other child's process is gone and restarts it too."""
    before = swarm.status()
    os.kill(before["services"]["core"]["pid"], signal.SIGKILL)
    time.sleep(gap_s)
    os.kill(before["services"]["services"]["pid"], signal.SIGKILL)
    swarm.wait_for(
        lambda s: s["healthy"] and all(s["services"][n]["pid"] != before["services"][n]["pid"]
                                       for n in ("core", "services", "probe", "registry")),
        timeout=20, what="both subtrees restarted")
    assert swarm.ask("probe", protocol.TEST_ECHO, {"x": 4}).b == {"x": 4}


def test_actor_loops_run_on_a_fresh_thread_stack_and_wait_in_one_poll(swarm):
    """The probe is forked inside its supervisor's handler, yet its loop starts on a new
    thread with a shallow Python stack (see launcher.fresh_stack_actors), and Thespian's loop
    in it waits with system.transport's poll selector."""
    where = swarm.ask("probe", protocol.TEST_WHERE).b  # without: MainThread, 83, selectors
    assert where["thread"] == "actor"
    assert where["frames"] < 30, where
    assert where["selectors"] == "PollSelectors"


def test_hung_actor_is_detected_killed_and_restarted(swarm):
    pid = swarm.service("probe")["pid"]
    swarm.tell("probe", protocol.TEST_HANG.encode())
    after = swarm.wait_for(lambda s: s["services"]["probe"]["pid"] not in (None, pid)
                           and s["services"]["probe"]["healthy"], timeout=15, what="hung probe")
    probe = after["services"]["probe"]
    assert probe["restarts"] == 1
    assert "unresponsive" in probe["last_error"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_parent_killed_leaves_no_orphans(swarm):
    before = swarm.status()
    probe_pid = before["services"]["probe"]["pid"]
    os.kill(before["services"]["services"]["pid"], signal.SIGKILL)
    swarm.wait_for(lambda s: s["healthy"] and s["services"]["services"]["restarts"] == 1
                   and s["services"]["probe"]["pid"] != probe_pid, what="services subtree back")
    deadline = time.monotonic() + 5
    while psutil.pid_exists(probe_pid) and psutil.Process(probe_pid).status() != "zombie":
        assert time.monotonic() < deadline, "the old probe outlived its killed supervisor"
        time.sleep(0.05)


def test_restart_intensity_exceeded_escalates_to_the_parent(make_swarm):
    swarm = make_swarm({"supervision": {"services": {"max_restarts": 2, "within_s": 60}}})
    swarm.start()
    for kill in range(3):
        pid = swarm.service("probe")["pid"]
        os.kill(pid, signal.SIGKILL)
        if kill < 2:
            swarm.wait_for(lambda s, pid=pid: s["services"]["probe"]["pid"] not in (None, pid)
                           and s["services"]["probe"]["state"] == "running", what="restart")
    # the third crash exceeds 2 restarts in 60 s: "services" gives up and root restarts it
    status = swarm.wait_for(lambda s: s["services"]["services"]["restarts"] == 1 and s["healthy"]
                            and s["services"]["probe"]["pid"] != pid, what="escalation")
    assert status["services"]["probe"]["restarts"] == 0, status["services"]  # a fresh supervisor


def test_restart_command_restarts_one_service(swarm):
    before = swarm.status()
    out = swarm.cli("restart", "probe").stdout
    assert "probe restarted" in out
    after = swarm.status()
    assert after["services"]["probe"]["pid"] != before["services"]["probe"]["pid"]
    assert after["services"]["probe"]["restarts"] == 1
    assert after["services"]["health"]["pid"] == before["services"]["health"]["pid"]
    core = after["services"]["core"]
    assert "core restarting (the admin goes with it)" in swarm.cli("restart", "core").stdout
    back = swarm.wait_for(lambda s: s["healthy"] and s["services"]["admin"]["pid"]
                          != after["services"]["admin"]["pid"], what="core restarted")
    time.sleep(1.0)  # a client asking the new admin again would restart core again
    assert swarm.status()["services"]["core"]["restarts"] == core["restarts"] + 1
    assert back["services"]["core"]["pid"] != core["pid"]
    bad = swarm.cli("restart", "nosuch", check=False)
    assert bad.returncode != 0 and "no service named 'nosuch'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_stop_with_a_hung_actor_finishes_and_leaves_nothing(make_swarm):
    swarm = make_swarm({"health": {"timeout_s": 60}})  # the stop timeout, not the poll, kills it
    swarm.start()
    assert swarm.processes()
    swarm.tell("probe", protocol.TEST_HANG.encode())
    t0 = time.monotonic()
    out = swarm.cli("stop", "--timeout", "1", "--json")
    assert time.monotonic() - t0 < 15
    assert not swarm.processes()
    assert "probe" in out.stdout  # reported as killed


def test_cli_without_a_running_swarm_says_so_and_starts_nothing(make_swarm):
    swarm = make_swarm()
    for args in (["status"], ["stop"], ["restart", "probe"]):
        proc = swarm.cli(*args, check=False)
        assert proc.returncode != 0
        assert proc.stderr.strip() == f"swarm: no swarm running on 127.0.0.1:{swarm.port}"
    assert not swarm.processes()


def test_start_when_already_running_is_a_clear_error(swarm):
    proc = swarm.cli("start", "-d", check=False)
    assert proc.returncode != 0
    assert "already running" in proc.stderr and "Traceback" not in proc.stderr


def test_every_swarm_socket_listens_on_loopback_only(swarm):
    listening = []
    for proc in swarm.processes():
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                listening.append(conn.laddr.ip)
    assert listening and set(listening) == {"127.0.0.1"}


def test_config_failure_parks_the_service_without_a_restart_loop(make_swarm):
    swarm = make_swarm({"services": {"probe": {"options": {"fail_start": "no token configured"}}}})
    proc = swarm.cli("start", "-d", "--wait", "3", check=False)
    assert proc.returncode != 0 and "no token configured" in proc.stderr
    status = swarm.status()
    probe = status["services"]["probe"]
    assert probe["state"] == "failed" and "no token configured" in probe["detail"]
    time.sleep(1)
    assert swarm.service("probe")["restarts"] == 0


def test_a_parked_service_starts_again_once_a_reload_changes_its_config(make_swarm):
    swarm = make_swarm({"services": {"probe": {"options": {"fail_start": "no token configured"}}}})
    swarm.cli("start", "-d", "--wait", "3", check=False)
    assert swarm.service("probe")["state"] == "failed"
    swarm.rewrite({"services": {"probe": {"options": {"fail_start": ""}}}})
    swarm.cli("reload")
    swarm.wait_for(lambda s: s["services"]["probe"]["state"] == "running", what="probe running")
    assert swarm.service("probe")["detail"] == ""


def test_foreground_start_stops_cleanly_on_ctrl_c(make_swarm):
    import subprocess
    import sys

    from tests.conftest import ROOT
    swarm = make_swarm()
    proc = subprocess.Popen([sys.executable, "-m", "system.cli", "start", "-c",
                             str(swarm.config_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        swarm.wait_for(lambda s: s["healthy"], timeout=20, what="foreground swarm")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "swarm stopped" in out
    assert not swarm.processes()


def test_a_service_stuck_in_start_is_killed_at_its_deadline_without_a_loop(make_swarm):
    swarm = make_swarm({"supervision": {"start_timeout_s": 0.5,
                                        "services": {"max_restarts": 1, "within_s": 60}},
                        "services": {"probe": {"options": {"hang_start": True}}}})
    t0 = time.monotonic()
    proc = swarm.cli("start", "-d", "--wait", "30", check=False)
    assert time.monotonic() - t0 < 20  # a failed subtree ends the wait at once
    assert proc.returncode != 0 and "restart intensity exceeded" in proc.stderr
    assert "Traceback" not in proc.stderr
    log = (swarm.dir / "data" / "logs" / "swarm.log").read_text()
    assert "no start confirmation within 0.5s" in log
    services = swarm.service("services")  # parked as failed during boot, not restarted
    time.sleep(1)
    assert swarm.service("services")["restarts"] == services["restarts"]
    assert swarm.service("services")["state"] == "failed"


def test_a_service_whose_start_raises_exits_at_once_and_is_restarted_then_escalated(make_swarm):
    swarm = make_swarm({"supervision": {"start_timeout_s": 10,
                                        "services": {"max_restarts": 2, "within_s": 60}},
                        "services": {"probe": {"options": {"crash_start": "disk gone"}}}})
    t0 = time.monotonic()
    proc = swarm.cli("start", "-d", "--wait", "30", check=False)
    assert time.monotonic() - t0 < 10, "waited for the start timeout instead of the exit"
    assert proc.returncode != 0 and "restart intensity exceeded" in proc.stderr
    log = (swarm.dir / "data" / "logs" / "swarm.log").read_text()
    assert log.count("probe could not start: OSError") == 3  # the start and 2 restarts
    assert "no start confirmation" not in log
