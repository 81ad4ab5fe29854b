"""The supervision tree as data: children, start order, policies, from the config."""
from __future__ import annotations

import pytest

from actors.tree import actor_path, children_of, policy_of
from system.config import load_config
from system.errors import ConfigError
from system.supervision import Restart, Strategy


def test_default_config_builds_the_designed_tree():
    cfg = load_config(None, env={}).data
    assert [c.spec.name for c in children_of("swarm", cfg)] == ["core", "services"]
    assert [c.spec.name for c in children_of("core", cfg)] == ["registry", "health", "admin"]
    assert "queue" in [c.spec.name for c in children_of("services", cfg)]
    assert policy_of("core", cfg).strategy == Strategy.REST_FOR_ONE
    assert policy_of("swarm", cfg).strategy == Strategy.ONE_FOR_ONE


def test_services_start_in_dependency_order_and_disabled_ones_are_skipped():
    cfg = {"services": {
        "gas": {"actor": "a:Gas", "depends_on": ["queue"]},
        "discord": {"actor": "a:Discord", "depends_on": ["queue"], "enabled": False},
        "queue": {"actor": "a:Queue", "restart": "transient", "shutdown_timeout_s": None},
    }, "supervision": {"shutdown_timeout_s": 2.0}}
    kids = children_of("services", cfg)
    assert [c.spec.name for c in kids] == ["queue", "gas"]
    assert kids[0].spec.restart == Restart.TRANSIENT and kids[0].spec.shutdown_timeout_s == 2.0
    assert kids[0].actor == "a.Queue"


def test_a_dependency_cycle_is_a_config_error_naming_the_services():
    cfg = {"services": {"a": {"actor": "m:A", "depends_on": ["b"]},
                        "b": {"actor": "m:B", "depends_on": ["a"]}}}
    with pytest.raises(ConfigError, match="a -> b -> a"):
        children_of("services", cfg)


def test_actor_paths_convert_from_config_form():
    assert actor_path("actors.queue.service:QueueService") == "actors.queue.service.QueueService"
