"""The Twitch service for real: a real swarm, the real twitchio 3 client inside the service
actor, against the simulated Twitch (Helix + EventSub) on 127.0.0.1."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import time

import pytest

from actors.twitch.simulator import BOT_ID, CLIENT_ID, CLIENT_SECRET, SimTwitchThread
from system import protocol
from tests.conftest import ROOT, wait_gone, wait_inflight

AGENTS = ["Agent-1", "Agent-2", "Agent-3"]
MOD, VIP, SUB, VIEWER, ALLOWED = "mo", "vi", "sue", "vic", "allie"


def test_without_credentials_twitch_is_disabled_with_the_keys_to_set(make_swarm):
    swarm = make_swarm({"services": {"twitch": {"enabled": True, "client_id": "x"}}})
    swarm.start()
    view = swarm.service("twitch")
    assert view["state"] == "disabled" and view["healthy"]
    assert "services.twitch.client_secret" in view["detail"]
    assert "services.twitch.bot_token" in view["detail"]
    time.sleep(1.0)
    assert swarm.service("twitch")["restarts"] == 0


# --- against the simulated Twitch ----------------------------------------------------------
@pytest.fixture
def sim():
    with SimTwitchThread(keepalive_every_s=2.0) as s:
        yield s
        records = s.records()
        assert not records["unhandled"], records["unhandled"]
        assert not records["server_errors"], records["server_errors"]


def twitch_block(sim, **extra) -> dict:
    return {"enabled": True, "client_id": CLIENT_ID, "client_secret": "${env:TEST_TWITCH_SECRET}",
            "bot_id": BOT_ID, "bot_token": "${env:TEST_TWITCH_TOKEN}",
            "bot_refresh_token": "${env:TEST_TWITCH_REFRESH}", "channels": ["streamer"],
            "api_base": sim.api_base, "id_base": sim.api_base, "eventsub_url": sim.ws_url,
            "permissions": {"operators": {"users": [ALLOWED]}},
            "interpretation": {"keywords": {"Agent-2": ["build", "ci"],
                                            "Agent-3": ["docs"]},
                               "default_agent": "Agent-1"},
            "resubscribe_after_s": 1.0,
            "cooldowns": {name: {"global_s": 0} for name in ("status", "agents", "gas", "quote",
                                                              "help")}, **extra}


def start_twitch(make_swarm, sim, monkeypatch, health: dict | None = None, **extra):
    monkeypatch.setenv("TEST_TWITCH_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("TEST_TWITCH_TOKEN", sim.bot_token)
    monkeypatch.setenv("TEST_TWITCH_REFRESH", sim.bot_refresh)
    swarm = make_swarm({"services": {"queue": {"enabled": True},
                                     "twitch": twitch_block(sim, **extra)},
                        "agents": {"names": AGENTS}, **({"health": health} if health else {})})
    swarm.start()
    sim.wait_subscribed(timeout=15)
    swarm.wait_for(lambda s: s["services"]["twitch"]["health"] == "ok", timeout=15,
                   what="twitch ok")
    return swarm


@pytest.fixture
def twitch_swarm(make_swarm, sim, monkeypatch):
    swarm = start_twitch(make_swarm, sim, monkeypatch)
    yield swarm
    logs = "".join(p.read_text() for p in (swarm.dir / "data" / "logs").glob("*.log*"))
    for secret in (CLIENT_SECRET, sim.bot_token, sim.bot_refresh):
        assert secret not in logs, "a secret reached a log file"


def say(sim, login: str, text: str, badges=(), timeout: float = 10.0) -> dict:
    """``login`` types ``text``; the bot's next line addressed to them."""
    since = len(sim.records()["sent"])
    sim.chat(login, text, badges=list(badges))
    return sim.wait_sent(lambda m: m["text"].startswith(f"@{login} "), timeout, since)


@contextlib.contextmanager
def resubscribed(sim, timeout: float = 15.0):
    """The block drops the bot's subscription; wait until a new connection subscribed (a
    subscription of a session that was not there before: the old one can stay enabled for a
    moment, until the platform sees its socket close, and what it is sent then is lost)."""
    before = set(sim.records()["sessions"])
    yield
    sim.wait_until(lambda: any(s["transport"]["session_id"] not in before
                               for s in sim.sim.enabled_subscriptions()), timeout)


def inbox(swarm, agent: str, count: int = 1, timeout: float = 10.0) -> list[str]:
    folder = swarm.dir / "agents" / agent / "inbox"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(folder.glob("*.md")) if folder.exists() else []
        if len(files) >= count:
            return [f.read_text() for f in files]
        time.sleep(0.05)
    raise AssertionError(f"{agent}'s inbox has fewer than {count} files")


def test_running_with_session_and_subscriptions_in_health_and_viewer_commands(twitch_swarm,
                                                                              sim, tmp_path):
    view = twitch_swarm.service("twitch")
    assert view["state"] == "running" and "EventSub session sim_" in view["detail"]
    assert "1 subscription(s)" in view["detail"]
    assert "Swarm healthy" in say(sim, VIEWER, "!status")["text"]
    assert "Agent-2: no gas data, inbox 0" in say(sim, VIEWER, "!status agent-2")["text"]
    assert "queue: running" in say(sim, "vic2", "!status queue")["text"]
    assert "Agent-1" in say(sim, VIEWER, "!agents")["text"]
    assert "gas pipeline" in say(sim, VIEWER, "!gas")["text"]  # not running in this swarm
    quote = say(sim, VIEWER, "!quote")["text"]
    assert quote.startswith(f"@{VIEWER} #")
    help_text = say(sim, VIEWER, "!help")["text"]
    assert "!ask" in help_text and "!agent AGENT" not in help_text
    assert "!agent AGENT TEXT" in say(sim, MOD, "!help", ["moderator"])["text"]
    # every line went out with the bot's user token, none over the limit
    sent = sim.records()["sent"]
    assert all(m["auth"] == "user" and m["is_sent"] for m in sent)
    assert not list(ROOT.glob(".tio.tokens.json"))  # twitchio's own token file is off
    # the last commands are the service's recent activity (swarm status --json, swarm top)
    recent = twitch_swarm.wait_for(
        lambda s: [(a["user"], a["text"]) for a in s["services"]["twitch"]["activity"][-1:]]
        == [(MOD, "!help")], what="recent commands")["services"]["twitch"]["activity"]
    assert [(a["user"], a["text"]) for a in recent[-3:]] == [
        (VIEWER, "!quote"), (VIEWER, "!help"), (MOD, "!help")]


def test_ask_is_routed_and_the_inbox_names_the_viewer(twitch_swarm, sim):
    assert say(sim, VIEWER, "!ask why is the build red?")["text"] == f"@{VIEWER} sent to Agent-2"
    text = inbox(twitch_swarm, "Agent-2")[0]
    assert "twitch:vic" in text and "why is the build red?" in text
    # the per-user cooldown: one "wait" notice, then silence; another viewer is not held back
    assert "cooling down" in say(sim, VIEWER, "!ask and the docs?")["text"]
    assert say(sim, "val", "!ask are the docs up to date?")["text"] == "@val sent to Agent-3"
    assert say(sim, "walt", "!ask anything new")["text"] == "@walt sent to Agent-1"  # default


def test_agent_steering_is_refused_below_moderator_and_allowed_for_mods_and_the_allow_list(
        twitch_swarm, sim):
    for login, badges in ((VIEWER, ()), (SUB, ["subscriber"]), (VIP, ["vip"])):
        reply = say(sim, login, "!agent Agent-3 rerun tests", badges)["text"]
        assert reply == f"@{login} !agent is for moderators and up."
        assert "moderators" in say(sim, login, "!broadcast stop everything", badges)["text"]
    time.sleep(0.5)
    folder = twitch_swarm.dir / "agents" / "Agent-3" / "inbox"
    assert not folder.exists() or not list(folder.iterdir())
    reply = say(sim, MOD, "!agent Agent-3 rerun tests", ["moderator"])["text"]
    assert reply.startswith(f"@{MOD} queued for Agent-3")
    assert "twitch:mo" in inbox(twitch_swarm, "Agent-3")[0]
    reply = say(sim, ALLOWED, "!agent agent-3 and lint")["text"]  # allow-listed, no badge
    assert reply.startswith(f"@{ALLOWED} queued for Agent-3")
    assert "queued for 3 of 3 agents" in say(sim, "streamer", "!broadcast hello all")["text"]
    assert "No agent named 'Agent-9'" in say(sim, MOD, "!agent Agent-9 x", ["moderator"])["text"]
    assert "usage: !agent AGENT TEXT" in say(sim, MOD, "!agent", ["moderator"])["text"]
    log = (twitch_swarm.dir / "data" / "logs" / "swarm.log").read_text()
    refusals = [json.loads(line) for line in log.splitlines() if '"event": "refused"' in line]
    assert {r["command"] for r in refusals} >= {"agent", "broadcast"}


def test_free_text_forwarding_by_level_spam_never_and_redelivery_once(twitch_swarm, sim):
    sim.chat(VIEWER, "Agent-2: the build is red")  # below subscriber: not forwarded
    sim.chat(SUB, "Agent-2 visit free-followers.xyz now", badges=["subscriber"])  # spam
    first = sim.chat(SUB, "Agent-2: the build is red again", badges=["subscriber"])
    texts = inbox(twitch_swarm, "Agent-2")
    assert len(texts) == 1 and "twitch:sue" in texts[0] and "again" in texts[0]
    assert sim.redeliver(first) == 1  # Twitch delivers at least once: handled once
    command = sim.chat(SUB, "!status", badges=["subscriber"])
    sim.wait_sent(lambda m: m["text"].startswith(f"@{SUB} Swarm"), 10)
    assert sim.redeliver(command) == 1
    time.sleep(1.0)
    assert len(inbox(twitch_swarm, "Agent-2")) == 1
    assert sum(m["text"].startswith(f"@{SUB} ") for m in sim.records()["sent"]) == 1


def test_quotes_add_by_number_remove_and_persist_across_a_restart(twitch_swarm, sim):
    assert "!quote is for" not in say(sim, VIEWER, "!quote 1")["text"]
    assert "quote add is for moderators" in say(sim, VIEWER, "!quote add mine")["text"]
    reply = say(sim, MOD, "!quote add Relays beat sprints.", ["moderator"])["text"]
    number = int(reply.rsplit("#", 1)[1])
    with resubscribed(sim):
        twitch_swarm.cli("restart", "twitch")
    twitch_swarm.wait_for(lambda s: s["services"]["twitch"]["health"] == "ok", timeout=15,
                          what="twitch back")
    assert say(sim, "vic3", f"!quote {number}")["text"] == f"@vic3 #{number}: Relays beat sprints."
    assert say(sim, MOD, f"!quote remove {number}", ["moderator"])["text"] == \
        f"@{MOD} removed quote #{number}"
    assert "there is no quote" in say(sim, "vic4", f"!quote {number}", timeout=15)["text"]


def test_a_burst_stays_within_the_limit_and_confirmations_are_never_lost(make_swarm, sim,
                                                                         monkeypatch):
    """A raid: 1,000 lines at once, 200 of them !status, with Twitch's limit scaled down to 5
    messages per 3 s so that the test takes seconds, not minutes."""
    # the test suite's 1 s health timeout is shorter than a 1,000-line burst can keep the
    # actor busy on a loaded machine (two test workers): the production default is longer
    swarm = start_twitch(make_swarm, sim, monkeypatch, health={"timeout_s": 5.0},
                         limits={"limit": 5, "window_s": 3.0, "max_queue": 20, "margin_s": 0.5})
    sim.configure(enforce_rate_limit=True, rate_limit=(5, 3.0))
    for n in range(1000):
        sim.chat(f"raider{n}", "!status" if n % 5 == 0 else f"hype line {n} lets go",
                 badges=["subscriber"] if n % 2 else [])
        if n in (100, 500, 900):
            sim.chat(MOD, f"!agent Agent-1 job {n}", badges=["moderator"])
    def accounted(status: dict) -> int:  # sent + dropped, once nothing waits (0 before)
        m = re.search(r"sent (\d+), queued 0, dropped (\d+)", status["services"]["twitch"]["detail"])
        return int(m[1]) + int(m[2]) if m else 0

    # the queue can be empty between lines of the burst: wait for all of them, not for a lull
    with contextlib.suppress(TimeoutError):
        swarm.wait_for(lambda s: accounted(s) >= 203, timeout=60, what="the burst accounted")
    status = swarm.status()
    assert status["services"]["twitch"]["restarts"] == 0, status.get("alerts")
    assert accounted(status) == 203  # 200 answers + 3 confirmations: sent or counted
    records = sim.records()["sent"]
    assert [m for m in records if m["drop_reason"]] == []  # never over Twitch's limit
    assert sim.max_sent_in_window(window_s=3.0) <= 5
    confirmations = [m["text"] for m in records if m["text"].startswith(f"@{MOD} queued")]
    assert len(confirmations) == 3  # the admin confirmations all went out
    assert len(inbox(swarm, "Agent-1", 3)) == 3


def test_token_expiry_is_refreshed_and_stored_owner_only(twitch_swarm, sim):
    sim.expire_user_token()
    assert "Swarm" in say(sim, VIEWER, "!status", timeout=15)["text"]
    assert sim.records()["refreshes"], "the expired token was not refreshed"
    token_file = twitch_swarm.dir / "data" / "twitch" / "tokens.json"
    deadline = time.monotonic() + 5
    while not token_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    stored = json.loads(token_file.read_text())
    assert stored["access"] != sim.bot_token


def test_eventsub_loss_reconnect_and_4003_are_survived(twitch_swarm, sim):
    sim.send_reconnect()  # session_reconnect: move without resubscribing
    time.sleep(1.0)
    assert "Swarm" in say(sim, VIEWER, "!status", timeout=15)["text"]
    with resubscribed(sim):  # twitchio gives up on a 4003 socket: the watchdog subscribes
        sim.drop_sockets(4003)
    assert "Swarm" in say(sim, "vic5", "!status", timeout=15)["text"]


def test_rejected_credentials_fail_with_the_reason_and_no_restart_loop(make_swarm, sim,
                                                                       monkeypatch):
    sim.reject_credentials()
    monkeypatch.setenv("TEST_TWITCH_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("TEST_TWITCH_TOKEN", sim.bot_token)
    monkeypatch.setenv("TEST_TWITCH_REFRESH", sim.bot_refresh)
    swarm = make_swarm({"services": {"twitch": twitch_block(sim)}, "agents": {"names": AGENTS}})
    swarm.cli("start", "-d", "--wait", "20", check=False)  # --wait: twitch is unhealthy
    view = swarm.wait_for(lambda s: s["services"]["twitch"]["state"] == "failed", timeout=15,
                          what="twitch failed")["services"]["twitch"]
    assert "client_id and client_secret" in view["detail"]
    tokens = sum(1 for r in sim.records()["requests"] if r[1] == "/oauth2/token")
    time.sleep(2.0)
    assert swarm.service("twitch")["restarts"] == 0
    assert sum(1 for r in sim.records()["requests"] if r[1] == "/oauth2/token") == tokens


def test_sigkill_of_the_twitch_actor_comes_back_subscribed(twitch_swarm, sim):
    pid = twitch_swarm.service("twitch")["pid"]
    os.kill(pid, signal.SIGKILL)
    twitch_swarm.wait_for(lambda s: s["services"]["twitch"]["pid"] not in (None, pid)
                          and s["services"]["twitch"]["health"] == "ok", timeout=20,
                          what="twitch restarted")
    assert "Swarm" in say(sim, VIEWER, "!status", timeout=15)["text"]


def test_announcements_and_the_status_timer(make_swarm, sim, monkeypatch):
    swarm = start_twitch(make_swarm, sim, monkeypatch,
                         announce={"kinds": ["gas"], "min_severity": "info"},
                         timers={"status_every_s": 0.5, "min_lines": 3})
    swarm.tell("registry", protocol.NOTIFY.encode({
        "kind": "gas", "severity": "info", "service": "gas",
        "summary": "go sent to Agent-2 for T1", "details": "", "key": "gas:T1:go"}))
    assert sim.wait_sent(lambda m: m["text"] == "[gas] go sent to Agent-2 for T1", 10)
    time.sleep(1.5)  # a quiet chat gets no periodic post
    assert not [m for m in sim.records()["sent"] if m["text"].startswith("Swarm")]
    for n in range(3):
        sim.chat(f"v{n}", f"hello there {n}")
    assert sim.wait_sent(lambda m: m["text"].startswith("Swarm healthy"), 10)


def test_a_token_revoked_at_runtime_fails_the_service_naming_the_keys(twitch_swarm, sim):
    sim.revoke_user_token()
    sim.chat(VIEWER, "!status")  # the reply's send meets the revoked token
    view = twitch_swarm.wait_for(lambda s: s["services"]["twitch"]["state"] == "failed",
                                 timeout=15, what="twitch failed")["services"]["twitch"]
    assert "services.twitch.bot_token" in view["detail"]
    time.sleep(1.0)
    assert twitch_swarm.service("twitch")["restarts"] == 0


def test_an_unreachable_platform_is_degraded_then_recovers_by_itself(make_swarm, sim,
                                                                     monkeypatch):
    sim.set_refuse_connections(True)
    monkeypatch.setenv("TEST_TWITCH_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("TEST_TWITCH_TOKEN", sim.bot_token)
    monkeypatch.setenv("TEST_TWITCH_REFRESH", sim.bot_refresh)
    swarm = make_swarm({"services": {"twitch": twitch_block(sim)}, "agents": {"names": AGENTS}})
    swarm.cli("start", "-d", "--wait", "20", check=False)
    swarm.wait_for(lambda s: "platform unreachable" in s["services"]["twitch"]["detail"],
                   timeout=15, what="twitch degraded")
    sim.set_refuse_connections(False)
    swarm.wait_for(lambda s: s["services"]["twitch"]["health"] == "ok", timeout=30,
                   what="twitch recovered")
    assert swarm.service("twitch")["restarts"] == 0
    assert "Swarm" in say(sim, VIEWER, "!status", timeout=15)["text"]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SWARM_SLOW") != "1", reason="keepalive loss takes ~25 s: "
                    "SWARM_SLOW=1")
def test_silent_keepalives_make_a_new_session_that_is_subscribed(twitch_swarm, sim):
    with resubscribed(sim, timeout=40):
        sim.silence_keepalives()
    assert "Swarm" in say(sim, VIEWER, "!status", timeout=15)["text"]


def test_permissions_explain_for_twitch_chatters(make_swarm, sim):
    swarm = make_swarm({"services": {"twitch": twitch_block(sim, enabled=False)}})

    def explain(*args: str) -> tuple[int, dict]:
        proc = swarm.cli("permissions", "explain", "--platform", "twitch", *args, "--json",
                         check=False)
        return proc.returncode, json.loads(proc.stdout)
    code, report = explain("--user", VIEWER, "agent")
    assert code == 1 and report["commands"]["agent"] == {
        "allowed": False, "needs": "moderator", "rule": "no badge (everyone)"}
    code, report = explain("--user", VIEWER, "--role", "moderator", "agent")
    assert code == 0 and report["role"] == "moderator"
    code, report = explain("--user", ALLOWED.upper())  # logins in any case
    assert report["rule"] == f"user {ALLOWED} is listed in operators.users"
    assert report["commands"]["broadcast"]["allowed"] and report["commands"]["ask"]["allowed"]


def test_brain_entries_of_category_quote_join_the_quotes(make_swarm, sim, monkeypatch,
                                                          tmp_path):
    packaged = tmp_path / "quotes.txt"
    packaged.write_text("Only packaged quote.\n", encoding="utf-8")
    monkeypatch.setenv("TEST_TWITCH_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("TEST_TWITCH_TOKEN", sim.bot_token)
    monkeypatch.setenv("TEST_TWITCH_REFRESH", sim.bot_refresh)
    swarm = make_swarm({"services": {
        "queue": {"enabled": True}, "gas": {"enabled": True},
        "twitch": twitch_block(sim, quotes={"file": str(packaged)})}, "agents": {"names": AGENTS}})
    swarm.start()
    sim.wait_subscribed(timeout=15)
    swarm.cli("brain", "add", "--title", "motto", "--category", "quote", "Brains beat bots.")
    quotes = {say(sim, f"q{n}", "!quote")["text"].split(": ", 1)[1] for n in range(2)}
    assert quotes == {"Only packaged quote.", "Brains beat bots."}


def test_two_channels_each_answered_where_asked_and_the_owner_is_an_admin(make_swarm, sim,
                                                                          monkeypatch):
    other = sim.add_user("otherchan")
    owner = sim.add_user("botowner")
    swarm = start_twitch(make_swarm, sim, monkeypatch, channels=["streamer", "otherchan"],
                         owner_id=owner["id"])
    sim.wait_subscribed(timeout=15, count=2)
    assert "2 subscription(s)" in swarm.service("twitch")["detail"]
    since = len(sim.records()["sent"])
    sim.chat(VIEWER, "!status", channel="otherchan")
    reply = sim.wait_sent(lambda m: m["text"].startswith(f"@{VIEWER} Swarm"), 10, since)
    assert reply["channel"] == other["id"]
    sim.chat("botowner", "!agent Agent-1 from the owner", channel="otherchan")
    reply = sim.wait_sent(lambda m: m["text"].startswith("@botowner queued"), 10, since)
    assert reply["channel"] == other["id"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])  # SIGTERM: a graceful stop
def test_a_command_cut_off_by_a_sigkill_is_answered_after_the_restart(twitch_swarm, sim, sig):
    services = twitch_swarm.status()["services"]
    admin_pid, twitch_pid = services["admin"]["pid"], services["twitch"]["pid"]
    os.kill(admin_pid, signal.SIGSTOP)  # !status waits for it; the health monitor kills it
    try:
        since = len(sim.records()["sent"])
        sim.chat(VIEWER, "!status")
        wait_inflight(twitch_swarm, "twitch")
        os.kill(twitch_pid, sig)
        wait_gone(twitch_pid)  # the admin answering before a graceful stop ends would race
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(admin_pid, signal.SIGCONT)
    line = sim.wait_sent(lambda m: "was interrupted" in m["text"], 30, since)
    assert line["text"].startswith(f"@{VIEWER} ") and "`!status`" in line["text"]
