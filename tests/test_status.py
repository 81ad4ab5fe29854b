"""Registry bookkeeping: entries, error attribution, the status snapshot, the tree view."""
from __future__ import annotations

from actors.status import Entry, snapshot
from system.tables import tree_order


def _running(name: str, parent: str = "services", pid: int = 10) -> Entry:
    e = Entry(name)
    e.update({"state": "running", "pid": pid, "parent": parent, "started_at": 100.0}, 100.0)
    e.pong({"status": "ok", "detail": ""}, 101.0)
    return e


def test_snapshot_is_healthy_only_when_every_enabled_actor_answers_ok():
    entries = {"queue": _running("queue"), "gas": _running("gas", pid=11)}
    assert snapshot(entries, 110.0)["healthy"] is True
    entries["gas"].pong({"status": "failing", "detail": "db gone"}, 111.0)
    snap = snapshot(entries, 112.0)
    assert snap["healthy"] is False and snap["services"]["gas"]["detail"] == "db gone"


def test_disabled_services_do_not_make_the_swarm_unhealthy_but_failed_ones_do():
    entries = {"queue": _running("queue"), "twitch": Entry("twitch")}
    entries["twitch"].update({"state": "disabled", "detail": "disabled in config"}, 100.0)
    assert snapshot(entries, 110.0)["healthy"] is True
    entries["twitch"].update({"state": "failed", "last_error": "no token"}, 100.0)
    view = snapshot(entries, 110.0)
    assert view["healthy"] is False and view["services"]["twitch"]["detail"] == "no token"


def test_a_new_pid_resets_health_until_the_next_pong():
    e = _running("queue")
    e.update({"state": "running", "pid": 99}, 120.0)
    assert e.health == "unknown" and not e.healthy


def test_a_specific_cause_is_not_hidden_by_the_generic_exit_report():
    e = _running("queue")
    e.set_error("unresponsive: no health reply within 3s; killed pid 10", 130.0)
    e.update({"state": "restarting", "pid": None, "last_error": "exited unexpectedly",
              "generic_error": True}, 130.5)
    assert e.last_error.startswith("unresponsive")
    e.update({"state": "restarting", "last_error": "exited unexpectedly",
              "generic_error": True}, 500.0)
    assert e.last_error == "exited unexpectedly"


def test_views_of_stopped_actors_show_no_pid_or_memory():
    e = _running("queue")
    e.sample({"rss": 1000, "uss": 500, "cpu": 2.5})
    assert snapshot({"queue": e}, 110.0)["total_uss_bytes"] == 500
    e.update({"state": "stopped", "pid": 10}, 111.0)
    view = e.view(112.0)
    assert (view["pid"], view["rss_bytes"], view["uptime_s"]) == (None, 0, 0.0)


def test_tree_order_lists_each_supervisor_before_its_children():
    services = {"queue": {"parent": "services"}, "registry": {"parent": "core"},
                "core": {"parent": "swarm"}, "services": {"parent": "swarm"},
                "admin": {"parent": "core"}}
    assert tree_order(services) == [(0, "core"), (1, "registry"), (1, "admin"),
                                    (0, "services"), (1, "queue")]
