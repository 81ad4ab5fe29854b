"""Hot reload on a running swarm: validate first, apply live where possible, restart the rest."""
from __future__ import annotations

import psutil
import yaml

from system import protocol
from tests.conftest import deep_merge


def _live(pid) -> bool:
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"


def test_live_keys_apply_without_a_restart_and_others_restart_the_service(swarm):
    before = swarm.status()["services"]
    swarm.rewrite({"services": {"probe": {"log_level": "debug"}},
                   "health": {"poll_interval_s": 0.3},
                   "supervision": {"services": {"max_restarts": 50}}})
    out = swarm.cli("reload").stdout  # or the watcher got there first: then it says so
    assert "changed probe (log_level)" in out and "health" in out and "supervision" in out
    after = swarm.status()["services"]
    assert {n: v["pid"] for n, v in after.items()} == {n: v["pid"] for n, v in before.items()}

    swarm.rewrite({"services": {"probe": {"options": {"flavour": "new"}}}})
    swarm.cli("reload")
    status = swarm.wait_for(lambda s: s["services"]["probe"]["pid"] != before["probe"]["pid"]
                            and s["services"]["probe"]["healthy"], what="probe restarted")
    assert status["services"]["probe"]["restarts"] == 1
    assert status["services"]["registry"]["pid"] == before["registry"]["pid"]


def test_an_invalid_config_is_rejected_and_the_old_one_stays(swarm):
    before = swarm.status()
    bad = deep_merge(swarm.base, {"health": {"timeout_s": "soon", "bogus": 1}})
    swarm.config_path.write_text(yaml.safe_dump(bad))
    proc = swarm.cli("reload", check=False)
    assert proc.returncode == 2  # the CLI validates too, with every error
    assert "health.timeout_s" in proc.stderr and "bogus" in proc.stderr
    assert "Traceback" not in proc.stderr
    # the swarm's own watcher notices the file and rejects it as well
    status = swarm.wait_for(lambda s: (s.get("config") or {}).get("last_reload")
                            and not s["config"]["last_reload"]["ok"], what="rejection in status")
    assert any("health.timeout_s" in e for e in status["config"]["last_reload"]["errors"])
    assert status["healthy"] and status["services"]["probe"]["pid"] == \
        before["services"]["probe"]["pid"]


def test_services_added_and_removed_in_the_file_are_started_and_stopped(swarm):
    swarm.rewrite({"services": {"extra": {"actor": "actors.probe:Probe", "depends_on": ["probe"]}}})
    swarm.cli("reload")
    status = swarm.wait_for(lambda s: "extra" in s["services"] and s["services"]["extra"]["healthy"]
                            and s["healthy"], what="extra started")
    pid = status["services"]["extra"]["pid"]
    assert swarm.ask("extra", protocol.TEST_ECHO, {"hi": 1}).b == {"hi": 1}

    swarm.rewrite({"services": {"extra": {"actor": "actors.probe:Probe", "enabled": False}}})
    swarm.cli("reload")
    status = swarm.wait_for(lambda s: s["services"]["extra"]["state"] == "disabled",
                            what="extra disabled")
    assert status["healthy"]
    swarm.wait_for(lambda s: not _live(pid), what="extra's process gone")

    swarm.rewrite(None)
    swarm.cli("reload")
    swarm.wait_for(lambda s: "extra" not in s["services"], what="extra forgotten")


def test_a_reload_while_the_services_supervisor_restarts_reaches_it(make_swarm):
    """The reload arrives while the services supervisor is still starting its children: it
    gets the new config when it confirms (the root skipped it, so the added service never
    started)."""
    import os
    import signal

    slow = {"actor": "actors.probe:Probe", "options": {"start_delay_s": 3}}
    swarm = make_swarm({"services": {"slow": slow}})
    swarm.start()
    os.kill(swarm.service("services")["pid"], signal.SIGKILL)
    swarm.rewrite({"services": {"slow": slow, "extra": {"actor": "actors.probe:Probe"}}})
    swarm.cli("reload")
    swarm.wait_for(lambda s: s["healthy"] and "extra" in s["services"]
                   and s["services"]["extra"]["state"] == "running", timeout=20,
                   what="the added service started")


def test_the_config_file_is_watched_and_reloaded_by_itself(swarm):
    pid = swarm.service("probe")["pid"]
    swarm.rewrite({"services": {"probe": {"options": {"watched": True}}}})
    status = swarm.wait_for(lambda s: s["services"]["probe"]["pid"] not in (None, pid)
                            and s["services"]["probe"]["healthy"], timeout=15,
                            what="automatic reload")
    assert status["config"]["last_reload"]["ok"] is True


def test_a_reload_right_after_the_watchers_says_what_that_one_changed(tmp_path, capsys):
    """The admin's watcher may apply an edit moments before the operator's `swarm reload`,
    which then finds nothing new: it says what the last reload changed, and when."""
    from actors.reload import ConfigWatcher
    from system.cli import _print_reload
    from system.config import load_config

    path = tmp_path / "swarm.yaml"
    path.write_text(yaml.safe_dump({"health": {"poll_interval_s": 1.0}}))
    watcher = ConfigWatcher(str(path), load_config(str(path)).runtime())
    path.write_text(yaml.safe_dump({"health": {"poll_interval_s": 0.5},
                                    "system": {"log_backups": 2}}))
    applied = watcher.reload()  # the watcher's
    assert applied.summary["health"] and applied.previous is None
    again = watcher.reload().view()  # the operator's, a moment later
    assert again["summary"]["empty"] and again["previous"]["summary"]["health"]
    _print_reload(again)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("config reloaded: nothing changed since the reload at ")
    assert out[0].endswith("(health)")
    assert out[1] == "needs `swarm stop` + `swarm start` to apply: system.log_backups"
    _print_reload(ConfigWatcher(str(path), load_config(str(path)).runtime()).reload().view())
    assert capsys.readouterr().out == "config reloaded: nothing changed\n"
