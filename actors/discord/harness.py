"""The simulated Discord as a harness platform (``system/harness/scenario.py``): the guild of
the operator's config with an ops channel and the status channel, a member per scenario user,
and the Discord faults.

A user's ``role`` (viewer, operator, admin) becomes a simulated role that the overlay adds to
``services.discord.permissions``, next to the operator's own rules; ``id`` and ``roles`` (role
ids) instead rehearse the operator's rules as they are.
"""
from __future__ import annotations

import itertools
import time

from actors.discord.simulator import GUILD_ID, SimDiscordThread
from system.harness.scenario import later

TOKEN_ENV = "SWARM_SIM_DISCORD_TOKEN"
OPS_CHANNEL, STATUS_CHANNEL = 910_000_000_000_000_001, 910_000_000_000_000_002
ROLE_IDS = {"operator": 910_000_000_000_000_101, "admin": 910_000_000_000_000_102}
REPLY_TIMEOUT_S = 15.0


class DiscordPlatform:
    name = "discord"
    faults = ("gateway_close", "gateway_refuse", "heartbeat_silence")

    def __init__(self) -> None:
        self.sim: SimDiscordThread | None = None
        self.ids: dict[str, int] = {}
        self.token = f"sim-discord-{time.time_ns()}"

    def start(self, users: dict[str, dict], base: dict) -> None:
        block = base.get("services", {}).get("discord", {})
        guild = int((block.get("guild_ids") or [GUILD_ID])[0])
        self.sim = SimDiscordThread(token=self.token, guild_id=guild)
        self.sim.start()
        for role, role_id in ROLE_IDS.items():
            self.sim.add_role(role_id, f"swarm-{role}")
        self.sim.add_channel(OPS_CHANNEL, "ops")
        self.sim.add_channel(STATUS_CHANNEL, "swarm-status")
        fresh = itertools.count(910_000_000_000_001_000)
        for login, spec in users.items():
            user_id = int(spec.get("id") or next(fresh))
            roles = [int(r) for r in spec.get("roles", [])]
            if spec.get("role") in ROLE_IDS:
                roles.append(ROLE_IDS[spec["role"]])
            self.sim.add_member(user_id, login, roles=roles)
            self.ids[login] = user_id

    def overlay(self, base: dict) -> dict:
        block = base.get("services", {}).get("discord", {})
        rules = block.get("permissions") or {}
        permissions = {}
        for role, role_id in ROLE_IDS.items():
            grant = dict(rules.get(f"{role}s") or {})
            grant["roles"] = [*grant.get("roles", []), role_id]
            permissions[f"{role}s"] = grant
        return {"enabled": True, "token": f"${{env:{TOKEN_ENV}}}",
                "guild_ids": [self.sim.sim.guild_id], "status_channel_id": STATUS_CHANNEL,
                "api_base": self.sim.api_base, "gateway_url": self.sim.gateway_url,
                "identify_delay_s": 0, "permissions": permissions,
                "report": {"linger_s": 0.5}}

    def env(self) -> dict[str, str]:
        return {TOKEN_ENV: self.token}

    def wait_connected(self, timeout: float) -> None:
        self.sim.wait_ready(timeout=timeout)

    def say(self, user: str, text: str) -> tuple[str | None, float, str]:
        t0 = time.perf_counter()
        sent = self.sim.message(OPS_CHANNEL, self.ids[user], text)
        try:
            post = self.sim.wait_post(OPS_CHANNEL, timeout=REPLY_TIMEOUT_S, after=sent["id"])
        except TimeoutError:
            return None, time.perf_counter() - t0, sent["id"]
        return _text(post), time.perf_counter() - t0, sent["id"]

    def click(self, user: str, control: str) -> tuple[str | None, float, str]:
        """Click the button ``control`` (a custom_id such as ``swarm:panel:status``) on the
        newest control panel in the ops channel."""
        panel = self.sim.wait_post(OPS_CHANNEL, _newest_panel(self.sim), timeout=5)
        t0 = time.perf_counter()
        interaction = self.sim.click(panel, self.ids[user], control)
        try:
            response = self.sim.wait_response(
                interaction, lambda r: r.get("content") or r.get("embeds"), REPLY_TIMEOUT_S)
        except TimeoutError:
            return None, time.perf_counter() - t0, interaction
        return _text(response), time.perf_counter() - t0, interaction

    def reached(self, ref: str) -> bool:
        return self.sim.reached(ref)

    def refused_label(self, user: str) -> str:
        return f"discord:{self.ids[user]}"

    def fault(self, kind: str, step: dict) -> str:
        if kind == "gateway_close":
            return f"gateway closed ({self.sim.close_gateway(4000, 'harness')} connection(s))"
        if kind == "gateway_refuse":
            self.sim.refuse_connections = True
            self.sim.close_gateway(4000, "harness")
            for_s = float(step.get("for_s", 5.0))
            later(for_s, setattr, self.sim, "refuse_connections", False)
            return f"gateway closed and refusing connections for {for_s:g}s"
        if kind == "heartbeat_silence":
            return f"heartbeat acks silenced ({self.sim.silence_heartbeats()} connection(s))"
        raise ValueError(f"unknown Discord fault {kind!r}")

    def records(self) -> dict:
        r = self.sim.records()
        return {"connections": r["connections"], "identifies": len(r["identifies"]),
                "resumes": len(r["resumes"]), "rate_limited": r["rate_limited"],
                "status_posts": len(self.sim.posts(STATUS_CHANNEL)),
                "server_errors": len(r["server_errors"])}

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.stop()


def _text(message: dict) -> str:
    """A reply as one line: its content and its embeds' titles."""
    embeds = [str(e.get("title") or e.get("description") or "") for e in
              message.get("embeds") or []]
    return " ".join(part for part in [message.get("content") or "", *embeds] if part)


def _newest_panel(sim: SimDiscordThread):
    newest = sim.call(lambda s: max((int(m["id"]) for m in s.posts(OPS_CHANNEL)
                                     if m.get("components")), default=0))
    return lambda m: bool(m.get("components")) and int(m["id"]) >= newest
