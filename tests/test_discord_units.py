"""The Discord service's pure parts: settings, failure classification, plain-text parsing,
rendering, and the admin's agents view."""
from __future__ import annotations

import doctest

import discord
import pytest

from actors.admin import _agents_view
from actors.discord import actions, render, settings
from actors.discord.runner import FATAL_CLOSES, classify
from actors.discord.settings import settings_from
from system.config import load_config
from system.errors import NotConfigured


@pytest.mark.parametrize("module", [actions, render, settings])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


def test_without_a_token_the_service_is_disabled_and_names_the_key():
    with pytest.raises(NotConfigured, match="services.discord.token") as info:
        settings_from(load_config(env={}).data)
    assert info.value.state == "disabled"


def test_packaged_defaults_are_the_real_endpoints_and_safe_permissions():
    block = load_config(env={}).get("services.discord")
    assert block["enabled"] is False and block["token"] is None
    assert block["api_base"] == "https://discord.com"
    assert block["permissions"]["admins"] == {"users": [], "roles": []}


def test_a_token_reference_is_resolved_and_redacted(tmp_path):
    cfg_file = tmp_path / "swarm.yaml"
    cfg_file.write_text("services:\n  discord:\n    enabled: true\n"
                        "    token: ${env:TEST_DISCORD_TOKEN}\n    guild_ids: [42]\n")
    cfg = load_config(str(cfg_file), env={"TEST_DISCORD_TOKEN": "tok-SECRET-123"})
    assert settings_from(cfg.data).token == "tok-SECRET-123"
    assert "tok-SECRET-123" not in repr(cfg.redacted()) and "tok-SECRET-123" not in str(
        cfg.describe())


def test_bad_discord_config_names_the_key(tmp_path):
    cfg_file = tmp_path / "swarm.yaml"
    cfg_file.write_text("services:\n  discord:\n    prefix: ''\n    guild_ids: [abc]\n"
                        "    permissions: {admins: {users: [1]}, owners: {}}\n")
    with pytest.raises(Exception) as info:
        load_config(str(cfg_file), env={})
    text = str(info.value)
    assert "services.discord.prefix" in text and "services.discord.guild_ids.0" in text
    assert "owners" in text


class _Closed(discord.ConnectionClosed):
    def __init__(self, code):
        self.code, self.reason, self.shard_id = code, "", None


@pytest.mark.parametrize("exc, final, words", [
    (discord.LoginFailure("Improper token"), True, "services.discord.token"),
    (_Closed(4004), True, "services.discord.token"),
    (_Closed(4014), True, "Message Content"),
    (_Closed(4000), False, "unreachable"),
    (AttributeError("'NoneType' object has no attribute 'sequence'"), False, "unreachable"),
    (OSError("Connect call failed"), False, "unreachable"),
])
def test_only_final_closes_stop_the_reconnecting(exc, final, words):
    is_final, reason = classify(exc)
    assert is_final == final and words in reason
    assert set(FATAL_CLOSES) >= {4004, 4014}


@pytest.mark.parametrize("text, parsed", [
    ("Agent-3: check the build", ("Agent-3", "check the build")),
    ("@agent-3 : multi\nline", ("Agent-3", "multi\nline")),
    ("Agent-9: not an agent", None), ("Agent-3:", None), ("hello Agent-3: hi", None),
])
def test_plain_text_forwarding_needs_an_agent_name_and_a_colon(text, parsed):
    assert actions.plain_message(text, ["Agent-1", "Agent-3"]) == parsed


def test_status_embed_lists_services_not_supervisors_and_caps_fields():
    services = {f"s{i}": {"state": "running", "health": "ok", "parent": "services"}
                for i in range(30)}
    services["services"] = {"state": "running", "kind": "supervisor", "parent": "swarm"}
    embed = render.status_embed({"healthy": False, "services": services})
    assert len(embed.fields) == render.MAX_FIELDS and "5 more" in embed.footer.text
    assert all(f.name.split()[-1] != "services" for f in embed.fields)
    assert len(embed) <= 6000


def test_agents_view_joins_inbox_depth_and_gas_state_when_known():
    view = _agents_view(["Agent-1", "Agent-2"], {
        "queue": {"ready_by_recipient": {"Agent-2": 4}},
        "gas": {"agents": [{"agent": "Agent-1", "stage": "PRIMED", "progress": 80}]}})
    assert view["agents"][0]["gas"]["stage"] == "PRIMED" and view["agents"][1]["inbox"] == 4
    assert _agents_view(["Agent-1"], {"queue": None, "gas": None})["gas"] is False
