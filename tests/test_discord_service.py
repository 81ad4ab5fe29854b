"""The Discord service for real: a real swarm, the real discord.py client inside the service
actor, against the simulated Discord on 127.0.0.1."""
from __future__ import annotations

import time


def test_without_a_token_discord_is_disabled_with_the_key_to_set_and_never_restarts(make_swarm):
    swarm = make_swarm({"services": {"discord": {"enabled": True}}})
    swarm.start()
    view = swarm.service("discord")
    assert view["state"] == "disabled" and view["healthy"]
    assert "services.discord.token" in view["detail"]
    time.sleep(1.0)
    assert swarm.service("discord")["restarts"] == 0


# --- against the simulated Discord --------------------------------------------------------
import json  # noqa: E402

import pytest  # noqa: E402

from actors.discord.simulator import GUILD_ID, SimDiscordThread  # noqa: E402

TOKEN = "sim-TOKEN-7f3a9c-do-not-leak"
OPS, STATUS_CH = 601, 602
ADMIN_ROLE, OPERATOR_ROLE = 501, 502
ADMIN, OPERATOR, VIEWER = 701, 702, 703


@pytest.fixture
def sim():
    with SimDiscordThread(token=TOKEN, rate_limit=(5, 5.0)) as s:
        s.add_role(ADMIN_ROLE, "swarm-admin")
        s.add_role(OPERATOR_ROLE, "swarm-operator")
        s.add_channel(OPS, "ops")
        s.add_channel(STATUS_CH, "swarm-status")
        s.add_member(ADMIN, "ada", roles=[ADMIN_ROLE])
        s.add_member(OPERATOR, "otto", roles=[OPERATOR_ROLE])
        s.add_member(VIEWER, "vic")
        yield s
        records = s.records()
        assert not records["unhandled"], records["unhandled"]
        assert not records["server_errors"], records["server_errors"]


def discord_block(sim, **extra) -> dict:
    return {"enabled": True, "token": "${env:TEST_DISCORD_TOKEN}", "guild_ids": [GUILD_ID],
            "status_channel_id": STATUS_CH, "api_base": sim.api_base,
            "gateway_url": sim.gateway_url, "identify_delay_s": 0,
            "permissions": {"admins": {"roles": [ADMIN_ROLE]},
                            "operators": {"roles": [OPERATOR_ROLE]}},
            "report": {"linger_s": 0.2}, **extra}


@pytest.fixture
def discord_swarm(make_swarm, sim, monkeypatch):
    monkeypatch.setenv("TEST_DISCORD_TOKEN", TOKEN)
    swarm = make_swarm({"services": {"queue": {"enabled": True},
                                     "discord": discord_block(sim)},
                        "agents": {"names": ["Agent-1", "Agent-2"]},
                        "alerts": {"sinks": ["discord"]}})
    swarm.start()
    sim.wait_ready(timeout=15)
    swarm.wait_for(lambda s: s["services"]["discord"]["health"] == "ok", what="discord ok")
    yield swarm
    logs = "".join(p.read_text() for p in (swarm.dir / "data" / "logs").glob("*.log*"))
    assert TOKEN not in logs, "the token reached a log file"


def reply_text(sim, iid: str, timeout: float = 15.0) -> str:
    resp = sim.wait_response(iid, lambda r: r.get("content") or r.get("embeds"), timeout)
    return (resp.get("content") or "") + json.dumps(resp.get("embeds") or [])


def test_status_by_prefix_and_slash_and_health_shows_latency(discord_swarm, sim):
    view = discord_swarm.service("discord")
    assert view["state"] == "running" and "latency" in view["detail"]
    sim.message(OPS, VIEWER, "!status")
    post = sim.wait_post(OPS, lambda m: m.get("embeds"), timeout=15)
    assert "queue" in json.dumps(post["embeds"])
    assert "queue" in reply_text(sim, sim.slash(OPS, VIEWER, "status"))
    assert sim.records()["syncs"], "slash commands were not synced"


def test_a_viewer_is_refused_on_every_path_and_nothing_happens(discord_swarm, sim):
    before = discord_swarm.service("queue")["pid"]
    sim.message(OPS, VIEWER, "!restart queue")
    assert "needs the admin role" in sim.wait_post(OPS, lambda m: "needs" in m["content"],
                                                   timeout=15)["content"]
    sim.message(OPS, VIEWER, "Agent-1: do x")
    assert "needs the operator role" in sim.wait_post(
        OPS, lambda m: "operator role" in m["content"], timeout=15)["content"]
    resp = sim.wait_response(sim.slash(OPS, VIEWER, "restart", {"service": "queue"}),
                             lambda r: r.get("content"), 15)
    assert resp["ephemeral"] and "admin role" in resp["content"]
    sim.message(OPS, ADMIN, "!panel")
    panel = sim.wait_post(OPS, lambda m: m.get("components"), timeout=15)
    resp = sim.wait_response(sim.click(panel, VIEWER, "swarm:panel:reload"),
                             lambda r: r.get("content"), 15)
    assert resp["ephemeral"] and "admin role" in resp["content"]
    resp = sim.wait_response(sim.select(panel, VIEWER, "swarm:panel:restart", ["queue"]),
                             lambda r: r.get("content"), 15)
    assert "admin role" in resp["content"]
    # the modal path: an operator opens the modal, loses the role, then submits
    sim.add_member(704, "olga", roles=[OPERATOR_ROLE])
    sim.wait_response(sim.click(panel, 704, "swarm:panel:message"), lambda r: r.get("modal"), 15)
    sim.set_roles(704, [])
    resp = sim.wait_response(sim.submit_modal(OPS, 704, "swarm:modal:message", {
        "agent": "Agent-1", "text": "x", "priority": ""}), lambda r: r.get("content"), 15)
    assert "operator role" in resp["content"]
    time.sleep(0.5)
    assert discord_swarm.service("queue")["pid"] == before
    inbox = discord_swarm.dir / "agents" / "Agent-1" / "inbox"
    assert not inbox.exists() or not list(inbox.iterdir())
    refusals = [json.loads(line) for line in
                (discord_swarm.dir / "data" / "logs" / "swarm.log").read_text().splitlines()
                if '"event": "refused"' in line]
    assert {r["via"] for r in refusals} >= {"prefix", "plain text", "slash", "button",
                                            "select", "modal"}
    assert {r["user_id"] for r in refusals} == {str(VIEWER), "704"}


def test_an_operator_messages_an_agent_and_the_inbox_names_them(discord_swarm, sim):
    sim.message(OPS, OPERATOR, "Agent-1: check the build")
    post = sim.wait_post(OPS, lambda m: "Queued for Agent-1" in m["content"], timeout=15)
    mid = post["content"].split("`")[1]
    path = discord_swarm.dir / "agents" / "Agent-1" / "inbox" / f"{mid}.md"
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = path.read_text()
    assert "check the build" in text and f"discord:{OPERATOR} (otto)" in text
    text = reply_text(sim, sim.slash(OPS, OPERATOR, "broadcast", {"text": "standup"}))
    assert "Queued for 2 of 2 agents" in text


def test_an_admin_restarts_the_queue_from_the_panel_and_the_log_says_who(discord_swarm, sim):
    before = discord_swarm.service("queue")["pid"]
    sim.message(OPS, ADMIN, "!panel")
    panel = sim.wait_post(OPS, lambda m: m.get("components"), timeout=15)
    confirm = sim.wait_response(sim.select(panel, ADMIN, "swarm:panel:restart", ["queue"]),
                                lambda r: r.get("components"), 15)
    text = reply_text(sim, sim.click(confirm["message"], ADMIN, "swarm:restart:queue"))
    assert "queue restarted" in text
    assert discord_swarm.service("queue")["pid"] != before
    audit = [json.loads(line) for line in
             (discord_swarm.dir / "data" / "logs" / "swarm.log").read_text().splitlines()
             if '"event": "audit"' in line]
    assert any(a["principal"] == f"discord:{ADMIN} (ada)" and "restart queue" in a["msg"]
               for a in audit)
    post = sim.wait_post(STATUS_CH, lambda m: "queue" in m["content"], timeout=15)
    assert "queue" in post["content"]
