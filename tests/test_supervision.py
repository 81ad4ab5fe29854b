"""Unit tests for the pure restart policy in ``system.supervision`` (no Thespian, no real clock)."""
from __future__ import annotations

import doctest
import random

import pytest

from system import supervision
from system.errors import ConfigError
from system.supervision import (
    Backoff,
    ChildSpec,
    Decision,
    Restart,
    RestartPolicy,
    Strategy,
    SupervisorSpec,
    start_order,
)

NAMES = ("db", "queue", "worker", "api")
NO_JITTER = Backoff(initial_s=0.1, multiplier=2.0, max_s=1.0, jitter=0.0, reset_after_s=10.0)


def make_policy(strategy: Strategy = Strategy.ONE_FOR_ONE, *, max_restarts: int = 100,
                within_s: float = 5.0, backoff: Backoff = NO_JITTER,
                restart: dict[str, Restart] | None = None, started: bool = True) -> RestartPolicy:
    restart = restart or {}
    children = [ChildSpec(n, restart=restart.get(n, Restart.PERMANENT)) for n in NAMES]
    spec = SupervisorSpec(strategy=strategy, max_restarts=max_restarts, within_s=within_s,
                          backoff=backoff)
    policy = RestartPolicy(spec, children, rng=random.Random(7))
    if started:
        for name in NAMES:
            policy.child_started(name, now=0.0)
    return policy


def test_docstring_examples_hold():
    assert doctest.testmod(supervision).failed == 0


# --- restart types ---------------------------------------------------------------------------

@pytest.mark.parametrize(("restart", "abnormal", "action"), [
    (Restart.PERMANENT, True, "restart"),
    (Restart.PERMANENT, False, "restart"),
    (Restart.TRANSIENT, True, "restart"),
    (Restart.TRANSIENT, False, "ignore"),
    (Restart.TEMPORARY, True, "ignore"),
    (Restart.TEMPORARY, False, "ignore"),
])
def test_restart_type_decides_whether_exit_restarts(restart, abnormal, action):
    policy = make_policy(restart={"queue": restart})
    decision = policy.child_exited("queue", abnormal=abnormal, now=1.0)
    assert decision.action == action
    if action == "restart":
        assert decision.start == ("queue",) and decision.stop == ()
        assert policy.restart_count("queue") == 1
    else:
        assert decision.start == () and decision.stop == () and decision.delay_s == 0.0
        assert restart.value in decision.reason
        assert policy.restart_count("queue") == 0


def test_ignored_exits_do_not_count_towards_intensity():
    policy = make_policy(max_restarts=0, restart={"queue": Restart.TEMPORARY})
    assert policy.child_exited("queue", abnormal=True, now=1.0).action == "ignore"
    assert not policy.escalated


def test_restart_types_accept_their_string_values():
    assert ChildSpec("x", restart="transient").restart is Restart.TRANSIENT
    assert SupervisorSpec(strategy="one_for_all").strategy is Strategy.ONE_FOR_ALL


# --- strategies -----------------------------------------------------------------------------

def test_one_for_one_restarts_only_the_exited_child():
    decision = make_policy(Strategy.ONE_FOR_ONE).child_exited("worker", abnormal=True, now=1.0)
    assert (decision.action, decision.stop, decision.start) == ("restart", (), ("worker",))


def test_one_for_all_stops_siblings_in_reverse_and_starts_all_in_order():
    policy = make_policy(Strategy.ONE_FOR_ALL)
    decision = policy.child_exited("queue", abnormal=True, now=1.0)
    assert decision.stop == ("api", "worker", "db")
    assert decision.start == NAMES
    assert policy.running == ()
    assert [policy.restart_count(n) for n in NAMES] == [1, 1, 1, 1]


def test_one_for_all_stops_only_running_siblings():
    policy = make_policy(Strategy.ONE_FOR_ALL, restart={"worker": Restart.TRANSIENT})
    policy.child_exited("worker", abnormal=False, now=1.0)  # finished normally, left stopped
    decision = policy.child_exited("queue", abnormal=True, now=2.0)
    assert decision.stop == ("api", "db")
    assert decision.start == NAMES  # transient sibling is restarted with the group, as OTP


def test_rest_for_one_restarts_exited_child_and_those_started_after_it():
    policy = make_policy(Strategy.REST_FOR_ONE)
    decision = policy.child_exited("queue", abnormal=True, now=1.0)
    assert decision.stop == ("api", "worker")
    assert decision.start == ("queue", "worker", "api")
    assert policy.running == ("db",)
    assert policy.restart_count("db") == 0


def test_rest_for_one_on_last_child_behaves_like_one_for_one():
    decision = make_policy(Strategy.REST_FOR_ONE).child_exited("api", abnormal=True, now=1.0)
    assert (decision.stop, decision.start) == ((), ("api",))


def test_temporary_sibling_is_stopped_but_not_restarted_by_one_for_all():
    policy = make_policy(Strategy.ONE_FOR_ALL, restart={"worker": Restart.TEMPORARY})
    decision = policy.child_exited("db", abnormal=True, now=1.0)
    assert decision.stop == ("api", "worker", "queue")
    assert decision.start == ("db", "queue", "api")


def test_temporary_sibling_is_stopped_but_not_restarted_by_rest_for_one():
    policy = make_policy(Strategy.REST_FOR_ONE, restart={"api": Restart.TEMPORARY})
    decision = policy.child_exited("queue", abnormal=True, now=1.0)
    assert decision.stop == ("api", "worker")
    assert decision.start == ("queue", "worker")


def test_exit_of_a_child_the_decision_stopped_is_ignored():
    policy = make_policy(Strategy.ONE_FOR_ALL, max_restarts=1)
    policy.child_exited("queue", abnormal=True, now=1.0)
    echo = policy.child_exited("api", abnormal=True, now=1.0)  # exit caused by our own stop
    assert echo.action == "ignore" and "not running" in echo.reason
    assert not policy.escalated


def test_unknown_child_name_raises_key_error():
    policy = make_policy()
    with pytest.raises(KeyError, match="nope"):
        policy.child_exited("nope", abnormal=True, now=0.0)
    with pytest.raises(KeyError):
        policy.child_started("nope", now=0.0)


def test_duplicate_child_names_are_a_config_error():
    with pytest.raises(ConfigError, match="duplicate child name 'a'"):
        RestartPolicy(SupervisorSpec(), [ChildSpec("a"), ChildSpec("a")])


# --- intensity --------------------------------------------------------------------------------

def crash_and_restart(policy: RestartPolicy, name: str, now: float) -> Decision:
    decision = policy.child_exited(name, abnormal=True, now=now)
    for started in decision.start:
        policy.child_started(started, now=now)
    return decision


def test_exceeding_intensity_escalates_stopping_all_running_children_in_reverse():
    policy = make_policy(max_restarts=3, within_s=5.0)
    for t in (1.0, 2.0, 3.0):
        assert crash_and_restart(policy, "queue", t).action == "restart"
    decision = policy.child_exited("queue", abnormal=True, now=4.0)
    assert decision.action == "escalate"
    assert decision.stop == ("api", "worker", "db")
    assert decision.start == ()
    assert decision.reason == "restart intensity exceeded: 4 restarts within 5s (max 3)"
    assert policy.escalated and policy.running == ()


def test_after_escalation_every_exit_is_ignored():
    policy = make_policy(max_restarts=0)
    assert policy.child_exited("db", abnormal=True, now=1.0).action == "escalate"
    policy.child_started("db", now=2.0)
    assert policy.child_exited("db", abnormal=True, now=3.0).action == "ignore"


def test_max_restarts_zero_escalates_on_the_first_restart():
    decision = make_policy(max_restarts=0).child_exited("worker", abnormal=False, now=1.0)
    assert decision.action == "escalate"
    assert decision.stop == ("api", "queue", "db")


def test_restarts_outside_the_window_do_not_count():
    policy = make_policy(max_restarts=2, within_s=5.0)
    crash_and_restart(policy, "queue", 0.0)
    crash_and_restart(policy, "queue", 1.0)
    assert crash_and_restart(policy, "queue", 6.5).action == "restart"  # t=0 and 1 have aged out
    decision = crash_and_restart(policy, "queue", 7.0)
    assert decision.action == "restart"
    assert decision.reason.startswith("queue exited abnormally; restart 2 within 5s")
    assert crash_and_restart(policy, "queue", 8.0).action == "escalate"


def test_a_group_restart_counts_once_towards_intensity():
    policy = make_policy(Strategy.ONE_FOR_ALL, max_restarts=1)
    assert crash_and_restart(policy, "db", 1.0).action == "restart"
    assert policy.child_exited("api", abnormal=True, now=2.0).action == "escalate"


def test_update_spec_changes_intensity_and_keeps_history():
    policy = make_policy(max_restarts=5)
    crash_and_restart(policy, "queue", 1.0)
    crash_and_restart(policy, "queue", 2.0)
    policy.update_spec(SupervisorSpec(max_restarts=2, backoff=NO_JITTER))
    decision = policy.child_exited("queue", abnormal=True, now=3.0)
    assert decision.action == "escalate"
    assert decision.reason == "restart intensity exceeded: 3 restarts within 5s (max 2)"
    assert policy.restart_count("queue") == 2


def test_update_spec_can_loosen_intensity():
    policy = make_policy(max_restarts=1)
    crash_and_restart(policy, "queue", 1.0)
    policy.update_spec(SupervisorSpec(max_restarts=10, backoff=NO_JITTER))
    assert crash_and_restart(policy, "queue", 2.0).action == "restart"


# --- backoff ----------------------------------------------------------------------------------

def test_first_restart_is_immediate_then_delays_grow_exponentially_and_cap():
    policy = make_policy()
    delays = [crash_and_restart(policy, "queue", 1.0 + i * 0.01).delay_s for i in range(7)]
    assert delays == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_reason_mentions_the_delay_when_there_is_one():
    policy = make_policy()
    crash_and_restart(policy, "queue", 1.0)
    assert crash_and_restart(policy, "queue", 1.1).reason.endswith(", after 0.1s")


def test_backoff_is_per_child():
    policy = make_policy()
    crash_and_restart(policy, "queue", 1.0)
    crash_and_restart(policy, "queue", 1.1)
    assert crash_and_restart(policy, "worker", 1.2).delay_s == 0.0


def test_group_restart_uses_the_exited_childs_delay():
    policy = make_policy(Strategy.ONE_FOR_ALL)
    crash_and_restart(policy, "queue", 1.0)
    assert crash_and_restart(policy, "queue", 1.1).delay_s == pytest.approx(0.1)
    assert crash_and_restart(policy, "db", 1.2).delay_s == 0.0


def test_backoff_counter_resets_after_a_stable_period():
    policy = make_policy()  # reset_after_s=10
    crash_and_restart(policy, "queue", 1.0)
    crash_and_restart(policy, "queue", 1.1)
    assert crash_and_restart(policy, "queue", 1.2).delay_s == pytest.approx(0.2)
    assert crash_and_restart(policy, "queue", 11.2).delay_s == 0.0  # ran exactly 10s: stable
    assert crash_and_restart(policy, "queue", 11.3).delay_s == pytest.approx(0.1)


def test_backoff_jitter_stays_within_bounds_and_is_reproducible():
    backoff = Backoff(initial_s=1.0, multiplier=2.0, max_s=4.0, jitter=0.25)
    rng = random.Random(42)
    for consecutive in range(2, 12):
        base = min(4.0, 2.0 ** (consecutive - 2))
        for _ in range(200):
            assert 0.75 * base <= backoff.delay(consecutive, rng) <= 1.25 * base <= 5.0
    first = [backoff.delay(3, random.Random(1)) for _ in range(3)]
    assert first == [backoff.delay(3, random.Random(1))] * 3 and first[0] != 2.0


def test_backoff_with_full_jitter_is_never_negative_and_huge_counts_do_not_overflow():
    backoff = Backoff(initial_s=1.0, max_s=30.0, jitter=1.0)
    rng = random.Random(3)
    assert all(0.0 <= backoff.delay(n, rng) <= 60.0 for n in (2, 5, 10_000))
    assert Backoff(jitter=0.0).delay(10_000, rng) == 30.0


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"jitter": 1.5}, "jitter"),
    ({"multiplier": 0.5}, "multiplier"),
    ({"initial_s": -1.0}, "initial_s"),
])
def test_invalid_backoff_is_a_config_error(kwargs, problem):
    with pytest.raises(ConfigError, match=problem):
        Backoff(**kwargs)


def test_invalid_supervisor_spec_reports_every_problem():
    with pytest.raises(ConfigError) as info:
        SupervisorSpec(max_restarts=-1, within_s=0)
    assert info.value.errors == ["max_restarts must be >= 0", "within_s must be > 0"]
    with pytest.raises(ConfigError, match="strategy"):
        SupervisorSpec(strategy="one_for_some")


# --- start order / shutdown order ---------------------------------------------------------------

def test_start_order_keeps_declaration_order_without_dependencies():
    assert start_order({"c": [], "a": [], "b": []}) == ["c", "a", "b"]


def test_start_order_puts_dependencies_first_and_is_otherwise_stable():
    children = {"api": ["db", "queue"], "log": [], "queue": ["db"], "db": [], "ui": ["api"]}
    assert start_order(children) == ["log", "db", "queue", "api", "ui"]


def test_start_order_accepts_known_but_absent_dependencies():
    assert start_order({"gas": ["queue"], "web": []}, known={"queue"}) == ["gas", "web"]


def test_start_order_unknown_dependency_names_service_and_missing_name():
    with pytest.raises(ConfigError) as info:
        start_order({"queue": [], "gas": ["queu"]})
    assert info.value.errors == ["service 'gas' depends on unknown service 'queu'"]


def test_start_order_cycle_error_names_the_cycle():
    with pytest.raises(ConfigError) as info:
        start_order({"x": [], "a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]})
    assert info.value.errors == ["dependency cycle: a -> b -> c -> a"]


def test_start_order_self_dependency_is_a_cycle():
    with pytest.raises(ConfigError, match="dependency cycle: a -> a"):
        start_order({"a": ["a"]})


def test_start_order_reports_all_problems_together():
    children = {"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"], "gas": ["queu"], "web": ["dbb"]}
    with pytest.raises(ConfigError) as info:
        start_order(children)
    assert info.value.errors == [
        "service 'gas' depends on unknown service 'queu'",
        "service 'web' depends on unknown service 'dbb'",
        "dependency cycle: a -> b -> a",
        "dependency cycle: c -> d -> c",
    ]


def test_shutdown_order_is_reverse_start_order():
    assert make_policy(started=False).shutdown_order() == list(reversed(NAMES))


def test_start_order_reports_a_repeated_unknown_dependency_once():
    with pytest.raises(ConfigError) as info:
        start_order({"gas": ["queu", "queu"]})
    assert info.value.errors == ["service 'gas' depends on unknown service 'queu'"]
