"""The simulated Twitch as a harness platform (``system/harness/scenario.py``): the channel of
the operator's config (default ``streamer``), a chatter per scenario user with its ``badges``
(subscriber, vip, moderator, broadcaster), and the Twitch faults.

A user's ``role`` (operator, admin) adds its login to the allow-list of
``services.twitch.permissions``, next to the operator's own entries.
"""
from __future__ import annotations

import time

from actors.twitch.simulator import BOT_ID, CLIENT_ID, CLIENT_SECRET, SimTwitchThread
from system.harness.scenario import later

ENV = {"secret": "SWARM_SIM_TWITCH_SECRET", "token": "SWARM_SIM_TWITCH_TOKEN",
       "refresh": "SWARM_SIM_TWITCH_REFRESH"}
REPLY_TIMEOUT_S = 15.0


class TwitchPlatform:
    name = "twitch"
    faults = ("token_expire", "keepalive_silence", "outage")

    def __init__(self) -> None:
        self.sim: SimTwitchThread | None = None
        self.users: dict[str, dict] = {}
        self.ids: dict[str, str] = {}

    def start(self, users: dict[str, dict], base: dict) -> None:
        block = base.get("services", {}).get("twitch", {})
        channel = str((block.get("channels") or ["streamer"])[0]).lower()
        self.sim = SimTwitchThread(keepalive_every_s=2.0, owner_login=channel)
        self.sim.start()
        self.users = users
        for login, spec in users.items():
            user = self.sim.call(lambda s, login=login, spec=spec: s.add_user(
                login, str(spec["id"]) if spec.get("id") else None))
            self.ids[login] = user["id"]

    def overlay(self, base: dict) -> dict:
        block = base.get("services", {}).get("twitch", {})
        rules = block.get("permissions") or {}
        permissions = {}
        for role in ("operator", "admin"):
            grant = dict(rules.get(f"{role}s") or {})
            grant["users"] = [*grant.get("users", []),
                              *(u for u, spec in self.users.items() if spec.get("role") == role)]
            permissions[f"{role}s"] = grant
        return {"enabled": True, "client_id": CLIENT_ID,
                "client_secret": f"${{env:{ENV['secret']}}}", "bot_id": BOT_ID,
                "bot_token": f"${{env:{ENV['token']}}}",
                "bot_refresh_token": f"${{env:{ENV['refresh']}}}",
                "channels": block.get("channels") or ["streamer"],
                "api_base": self.sim.api_base, "id_base": self.sim.api_base,
                "eventsub_url": self.sim.ws_url, "permissions": permissions,
                "resubscribe_after_s": 2.0}

    def env(self) -> dict[str, str]:
        return {ENV["secret"]: CLIENT_SECRET, ENV["token"]: self.sim.bot_token,
                ENV["refresh"]: self.sim.bot_refresh}

    def wait_connected(self, timeout: float) -> None:
        self.sim.wait_subscribed(timeout=timeout)

    def say(self, user: str, text: str) -> tuple[str | None, float, str]:
        since = self.sim.call(lambda s: len(s.state.sent))
        t0 = time.perf_counter()
        ref = self.sim.chat(user, text, badges=self.users[user].get("badges", []))
        try:
            sent = self.sim.wait_sent(lambda m: m["text"].startswith(f"@{user} "),
                                      REPLY_TIMEOUT_S, since)
        except TimeoutError:
            return None, time.perf_counter() - t0, ref
        return sent["text"], time.perf_counter() - t0, ref

    def reached(self, ref: str) -> bool:
        return self.sim.reached(ref)

    def refused_label(self, user: str) -> str:
        return f"twitch:{self.ids[user]}"

    def fault(self, kind: str, step: dict) -> str:
        if kind == "token_expire":
            return f"user token expired ({self.sim.expire_user_token()})"
        if kind == "keepalive_silence":
            return f"keepalives silenced ({self.sim.silence_keepalives()} session(s))"
        if kind == "outage":  # EventSub and Helix: sockets cut, connections refused
            for_s = float(step.get("for_s", 5.0))
            self.sim.set_refuse_connections(True)
            later(for_s, self.sim.set_refuse_connections, False)
            return f"Twitch down for {for_s:g}s"
        raise ValueError(f"unknown Twitch fault {kind!r}")

    def records(self) -> dict:
        r = self.sim.records()
        return {"sent": sum(1 for m in r["sent"] if m["is_sent"]),
                "dropped": sum(1 for m in r["sent"] if not m["is_sent"]),
                "refreshes": len(r["refreshes"]) if isinstance(r["refreshes"], list)
                else r["refreshes"], "connections": r["connections"],
                "max_in_30s": self.sim.max_sent_in_window(),
                "server_errors": len(r["server_errors"])}

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.stop()
