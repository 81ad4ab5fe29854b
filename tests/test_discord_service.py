"""The Discord service for real: a real swarm, the real discord.py client inside the service
actor, against the simulated Discord on 127.0.0.1."""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import time

import pytest

from actors.discord.simulator import GUILD_ID, SimDiscordThread
from system import protocol
from tests.conftest import wait_gone, wait_inflight


def test_without_a_token_discord_is_disabled_with_the_key_to_set_and_never_restarts(make_swarm):
    swarm = make_swarm({"services": {"discord": {"enabled": True}}})
    swarm.start()
    view = swarm.service("discord")
    assert view["state"] == "disabled" and view["healthy"]
    assert "services.discord.token" in view["detail"]
    time.sleep(1.0)
    assert swarm.service("discord")["restarts"] == 0


# --- against the simulated Discord --------------------------------------------------------
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
    # both are the service's recent activity: in swarm status --json and on swarm top
    activity = discord_swarm.wait_for(lambda s: len(s["services"]["discord"]["activity"]) >= 2,
                                      what="recent commands")["services"]["discord"]["activity"]
    by_text = {a["text"]: a for a in activity}
    assert by_text["!status"]["user"] == by_text["/status"]["user"] == "@vic"
    assert by_text["!status"]["ms"] >= 0 and by_text["/status"]["ms"] is None  # answered/came
    top = discord_swarm.cli("top", "--once").stdout
    assert "recent commands" in top and "!status" in top and "/status" in top


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
    paths = {"prefix", "plain text", "slash", "button", "select", "modal"}

    def refusals() -> list[dict]:  # the logger process writes them a moment later
        return [json.loads(line) for line in
                (discord_swarm.dir / "data" / "logs" / "swarm.log").read_text().splitlines()
                if '"event": "refused"' in line]
    deadline = time.monotonic() + 10
    while {r["via"] for r in refusals()} < paths and time.monotonic() < deadline:
        time.sleep(0.1)
    refusals = refusals()
    assert {r["via"] for r in refusals} >= paths
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


def wait_state(swarm, state: str, timeout: float = 30.0) -> dict:
    try:
        return swarm.wait_for(lambda s: s["services"]["discord"]["state"] == state, timeout,
                              f"discord {state}")["services"]["discord"]
    except AssertionError:  # say what discord was doing instead (the status is cut short)
        raise AssertionError(f"discord not {state}: {swarm.service('discord')}") from None


def test_a_revoked_token_4004_parks_discord_as_failed_without_a_restart_loop(discord_swarm, sim):
    sim.invalidate_token()
    view = wait_state(discord_swarm, "failed")
    assert "services.discord.token" in view["detail"] and TOKEN not in json.dumps(view)
    connections = sim.records()["connections"]
    time.sleep(3)
    assert sim.records()["connections"] == connections  # no retry against a bad token
    assert discord_swarm.service("discord")["restarts"] == 0


def test_a_missing_privileged_intent_4014_is_failed_and_names_it(make_swarm, sim, monkeypatch):
    monkeypatch.setenv("TEST_DISCORD_TOKEN", TOKEN)
    sim.configure(allowed_intents=0)
    swarm = make_swarm({"services": {"discord": discord_block(sim)}})
    swarm.cli("start", "-d", "--wait", "10", check=False)
    assert "Message Content" in wait_state(swarm, "failed")["detail"]


def test_gateway_closes_are_resumed_and_commands_keep_working(discord_swarm, sim):
    for code in (1000, 4000):
        resumes = len(sim.records()["resumes"])
        sim.close_gateway(code)
        sim.wait_until(lambda r=resumes: len(sim.sim.resumes) > r, timeout=15)
    assert len(sim.records()["identifies"]) == 1
    assert "queue" in reply_text(sim, sim.slash(OPS, VIEWER, "status"))
    assert len(sim.records()["syncs"]) == 1  # synced in setup_hook, never again


def test_an_unreachable_platform_at_first_connect_is_degraded_then_recovers(make_swarm, sim,
                                                                           monkeypatch):
    monkeypatch.setenv("TEST_DISCORD_TOKEN", TOKEN)
    sim.refuse_connections = True
    swarm = make_swarm({"services": {"discord": discord_block(sim)}})
    swarm.start()
    view = swarm.service("discord")
    assert view["state"] == "running" and view["health"] == "degraded"
    assert "unreachable" in view["detail"] or "connecting" in view["detail"]
    sim.refuse_connections = False
    sim.wait_ready(timeout=20)
    swarm.wait_for(lambda s: s["services"]["discord"]["health"] == "ok", 20, "discord ok")
    assert swarm.service("discord")["restarts"] == 0


def test_after_a_sigkill_and_after_a_whole_swarm_restart_the_panel_still_works(discord_swarm,
                                                                              sim):
    sim.message(OPS, ADMIN, "!panel")
    panel = sim.wait_post(OPS, lambda m: m.get("components"), timeout=15)
    os.kill(discord_swarm.service("discord")["pid"], signal.SIGKILL)
    sim.wait_ready(timeout=20, count=2)
    discord_swarm.wait_for(lambda s: s["services"]["discord"]["health"] == "ok", 20, "ok")
    assert "queue" in reply_text(sim, sim.click(panel, VIEWER, "swarm:panel:status"))
    discord_swarm.cli("stop")
    discord_swarm.start()
    sim.wait_ready(timeout=20, count=3)
    discord_swarm.wait_for(lambda s: s["services"]["discord"]["health"] == "ok", 20, "ok")
    assert "Agent-1" in reply_text(sim, sim.click(panel, VIEWER, "swarm:panel:agents"))


def test_an_alert_burst_reaches_the_status_channel_folded_within_the_budget(discord_swarm, sim):
    before = len(sim.posts(STATUS_CH))
    for i in range(200):
        discord_swarm.tell("discord", protocol.NOTIFY.encode({
            "kind": "alert", "severity": "error", "service": f"svc{i % 4}",
            "summary": f"burst {i}", "key": f"burst:{i}"}))

    def accounted() -> tuple[int, list[dict]]:
        posts = [p for p in sim.sim.posts(STATUS_CH)[before:] if "burst" in p["content"]]
        lines = [line for p in posts for line in p["content"].splitlines()]
        return (sum(line.startswith("🔴") for line in lines)
                + sum(int(line.split()[2]) for line in lines if line.startswith("… and ")), posts)

    sim.wait_until(lambda: accounted()[0] >= 200, timeout=20)
    count, posts = accounted()
    assert count == 200, "every notification is listed or counted exactly once"
    stamps = sorted(datetime.datetime.fromisoformat(p["timestamp"]).timestamp() for p in posts)
    assert all(b - a >= 4.9 for a, b in zip(stamps, stamps[5:])), stamps
    assert len(posts) <= 8


COMMAND_CASES = [  # (prefix text, slash name, options, user, expected in the reply)
    ("!status queue", "status", {"service": "queue"}, VIEWER, "queue"),
    ("!status nope", "status", {"service": "nope"}, VIEWER, "No service named"),
    ("!agents", "agents", {}, VIEWER, "Agent-2"),
    ("!queue", "queue", {}, VIEWER, "ready"),
    ("!gas", "gas", {}, VIEWER, "Agent-1"),
    ("!dlq", "dlq", {}, OPERATOR, "No dead letters"),
    ("!requeue nope", "requeue", {"target": "nope"}, OPERATOR, "Not a dead letter"),
    ("!message Agent-2 hello there", "message", {"agent": "Agent-2", "text": "hello there"},
     OPERATOR, "Queued for Agent-2"),
    ("!message Agent-9 hi", "message", {"agent": "Agent-9", "text": "hi"}, OPERATOR,
     "No agent named"),
    ("!broadcast all hands", "broadcast", {"text": "all hands"}, OPERATOR, "2 of 2"),
    ("!unstall Agent-1", "unstall", {"agent": "Agent-1"}, OPERATOR, "gas pipeline"),
    ("!brain search relay", "brain search", {"text": "relay"}, VIEWER, "gas pipeline"),
    ("!reload", "reload", {}, ADMIN, "Config reloaded"),
    ("!restart nope", "restart", {"service": "nope"}, ADMIN, "no service named"),
    (f"!permissions <@{OPERATOR}> restart", "permissions", {"user": str(OPERATOR),
                                                            "command": "restart"},
     ADMIN, "refused"),
    ("!help", "help", {}, OPERATOR, "broadcast"),
]


@pytest.mark.parametrize("prefix, slash, options, user, expected", COMMAND_CASES,
                         ids=[c[0] for c in COMMAND_CASES])
def test_every_command_answers_by_prefix_and_by_slash(discord_swarm, sim, prefix, slash,
                                                      options, user, expected):
    sim.message(OPS, user, prefix)
    post = sim.wait_post(OPS, lambda m: m["author"].get("bot") and m.get(
        "message_reference") and (m["content"] or m.get("embeds")), timeout=15)
    assert expected in post["content"] + json.dumps(post.get("embeds")), post
    assert expected in reply_text(sim, sim.slash(OPS, user, slash, options))


def test_help_lists_only_what_the_user_may_run(discord_swarm, sim):
    text = reply_text(sim, sim.slash(OPS, VIEWER, "help"))
    assert "status" in text and "restart" not in text and "broadcast" not in text


def test_429s_without_rate_limit_headers_are_retried_and_every_post_arrives(discord_swarm,
                                                                           sim):
    sim.configure(rate_limit_headers=False)
    for i in range(7):
        sim.message(OPS, VIEWER, f"!status nope{i}")
    sim.wait_until(lambda: sum("No service named" in p["content"]
                               for p in sim.sim.posts(OPS)) >= 7, timeout=30)
    assert sim.records()["rate_limited"] >= 1


def test_gas_milestones_reach_the_status_channel_and_gas_commands_work(make_swarm, sim,
                                                                      monkeypatch):
    monkeypatch.setenv("TEST_DISCORD_TOKEN", TOKEN)
    swarm = make_swarm({"services": {"queue": {"enabled": True}, "discord": discord_block(sim),
                                     "gas": {"enabled": True, "poll_interval_s": 0.2}},
                        "agents": {"names": ["Agent-1", "Agent-2"]},
                        "alerts": {"sinks": ["discord"]}})
    swarm.start()
    sim.wait_ready(timeout=15)
    swarm.cli("gas", "progress", "Agent-1", "91", "--task", "build")
    post = sim.wait_post(STATUS_CH, lambda m: "ready → Agent-2" in m["content"], timeout=15)
    assert "prepare → Agent-2" in post["content"] or any(
        "prepare → Agent-2" in p["content"] for p in sim.posts(STATUS_CH))
    assert "HANDOFF 91%" in reply_text(sim, sim.slash(OPS, VIEWER, "gas"))
    assert "Nudged Agent-1" in reply_text(sim, sim.slash(OPS, OPERATOR, "unstall",
                                                         {"agent": "Agent-1"}))
    swarm.cli("gas", "progress", "Agent-1", "100")
    sim.wait_post(STATUS_CH, lambda m: "Agent-1 completed build" in m["content"], timeout=15)
    assert any("Agent-1 unstalled" in p["content"] for p in sim.posts(STATUS_CH))
    assert "0 working" in swarm.service("gas")["detail"]  # Agent-1 is COMPLETE


def test_in_a_direct_message_only_user_id_rules_count_and_server_commands_are_refused(
        make_swarm, sim, monkeypatch):
    monkeypatch.setenv("TEST_DISCORD_TOKEN", TOKEN)
    by_id = 705
    sim.add_member(by_id, "uma")  # no roles: an admin by user id only
    block = discord_block(sim)
    block["permissions"] = {"admins": {"roles": [ADMIN_ROLE], "users": [by_id]},
                            "operators": {"roles": [OPERATOR_ROLE]}}
    swarm = make_swarm({"services": {"queue": {"enabled": True}, "discord": block},
                        "agents": {"names": ["Agent-1"]}})
    swarm.start()
    sim.wait_ready(timeout=15)
    swarm.wait_for(lambda s: s["services"]["discord"]["health"] == "ok", what="discord ok")

    def answer(user: int, text: str) -> dict:
        sent = sim.dm(user, text)
        return sim.wait_post(int(sent["channel_id"]), lambda m: (m.get(
            "message_reference") or {}).get("message_id") == sent["id"], timeout=15)

    assert "queue" in json.dumps(answer(VIEWER, "!status")["embeds"])  # viewers: everyone
    # an operator by role is only a viewer here: Discord sends no roles with a DM
    assert "needs the operator role" in answer(OPERATOR, "!message Agent-1 hi")["content"]
    assert "needs the operator role" in answer(OPERATOR, "Agent-1: hi")["content"]
    assert "Queued for Agent-1" in answer(by_id, "!message Agent-1 from a DM")["content"]
    for command in ("!panel", f"!permissions {OPERATOR}"):
        assert "not in direct messages" in answer(by_id, command)["content"]
    assert "panel" not in answer(by_id, "!help")["content"]
    log = (swarm.dir / "data" / "logs" / "swarm.log").read_text()
    assert '"event": "command_error"' not in log and "Traceback" not in log


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_command_cut_off_by_a_sigkill_is_answered_after_the_restart(discord_swarm, sim, sig):
    """The admin is hung (SIGSTOP), so !status waits for it; the discord actor is SIGKILLed
    meanwhile, or SIGTERMed (as when its supervisor dies: a graceful stop that cancels the
    command). The next start tells the user their command was interrupted."""
    services = discord_swarm.status()["services"]
    admin_pid, discord_pid = services["admin"]["pid"], services["discord"]["pid"]
    os.kill(admin_pid, signal.SIGSTOP)  # the health monitor soon kills it as unresponsive
    try:
        sim.message(OPS, OPERATOR, "!status")
        wait_inflight(discord_swarm, "discord")
        os.kill(discord_pid, sig)
        wait_gone(discord_pid)  # the admin answering before a graceful stop ends would race
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(admin_pid, signal.SIGCONT)
    post = sim.wait_post(OPS, lambda m: "was interrupted" in m["content"], timeout=30)
    assert f"<@{OPERATOR}>" in post["content"] and "`!status`" in post["content"]
