"""The shared permission policy: roles from config, least roles per command, default deny."""
from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from system import permissions
from system.permissions import Policy, Principal

TABLE = {"status": "viewer", "message": "operator", "restart": "admin"}
CONFIG = {"admins": {"users": [111], "roles": ["900"]},
          "operators": {"users": ["222"], "roles": ["800"]}}


def who(uid="5", roles=(), aliases=()) -> Principal:
    return Principal("discord", str(uid), "someone", tuple(roles), tuple(aliases))


def test_doctests():
    assert doctest.testmod(permissions).failed == 0


def test_viewers_default_to_everyone_and_nothing_more():
    policy = Policy.from_config(CONFIG, TABLE)
    decision = policy.check(who(), "status")
    assert decision.allowed and decision.role == "viewer"
    assert not policy.check(who(), "message").allowed
    assert not policy.check(who(), "restart").allowed


@pytest.mark.parametrize("principal, role", [
    (who(111), "admin"), (who(roles=["900"]), "admin"), (who(222), "operator"),
    (who(roles=["800"]), "operator"), (who(roles=["800", "900"]), "admin"),
])
def test_users_and_roles_grant_the_highest_listed_role(principal, role):
    assert Policy.from_config(CONFIG, TABLE).role_of(principal)[0] == role


def test_the_rule_names_the_config_entry_that_decided():
    policy = Policy.from_config(CONFIG, TABLE)
    assert policy.check(who(111), "restart").rule == "user 111 is listed in admins.users"
    assert policy.check(who(roles=["800"]), "restart").rule == \
        "role 800 is listed in operators.roles"


def test_a_display_name_never_grants_anything():
    policy = Policy.from_config({"admins": {"users": ["ann"]}}, TABLE)
    assert policy.role_of(Principal("discord", "5", "ann"))[0] == "viewer"
    assert policy.role_of(Principal("twitch", "5", "Ann", aliases=("ann",)))[0] == "admin"


def test_viewers_can_be_restricted_and_then_strangers_get_nothing():
    policy = Policy.from_config({"viewers": {"roles": ["700"]}}, TABLE)
    decision = policy.check(who(), "status")
    assert not decision.allowed and decision.role is None
    assert "needs the viewer role" in decision.refusal("status")
    assert policy.check(who(roles=["700"]), "status").allowed


def test_an_unknown_command_is_refused_even_to_admins():
    decision = Policy.from_config(CONFIG, TABLE).check(who(111), "shutdown")
    assert not decision.allowed and decision.needed is None
    assert decision.refusal("shutdown") == "`shutdown` is not a command here."


def test_help_lists_only_what_the_user_may_run():
    policy = Policy.from_config(CONFIG, TABLE)
    assert policy.allowed_commands(who()) == ["status"]
    assert policy.allowed_commands(who(222)) == ["status", "message"]
    assert policy.allowed_commands(who(111)) == ["status", "message", "restart"]


def test_a_command_table_with_an_unknown_role_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown role"):
        Policy.from_config({}, {"x": "owner"})


@given(uid=st.text(max_size=20), roles=st.lists(st.text(max_size=5), max_size=4),
       command=st.sampled_from([*TABLE, "other"]))
def test_without_grants_nothing_above_viewer_is_ever_allowed(uid, roles, command):
    policy = Policy.from_config({}, TABLE)
    decision = policy.check(Principal("discord", uid, roles=tuple(roles)), command)
    assert decision.allowed == (command == "status")
