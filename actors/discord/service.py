"""The Discord service: a thin actor around the bot, which runs on its own asyncio loop.

    services:
      discord:
        enabled: true
        token: "${env:DISCORD_TOKEN}"
        guild_ids: [123456789012345678]
        status_channel_id: 234567890123456789
        permissions: {admins: {roles: [345678901234567890]}, operators: {users: [...]}}

The actor holds the config and the connection state (its health), answers the bot's requests by
asking the admin actor (see ``actors/chat.py``), and hands notifications (alerts, state changes, gas milestones: it is a sink
in ``alerts.sinks``) to the status channel's poster. Without a token it is ``disabled``; a final
gateway failure (bad token, missing intent) parks it in ``failed`` with the reason, never in a
restart loop.
"""
from __future__ import annotations

import contextlib

from actors.chat import ChatService
from actors.discord import runner
from actors.discord.settings import settings_from
from system import protocol
from system.bridge import AsyncBridge
from system.service import handles


class DiscordService(ChatService):
    tick_s = 0.5

    def on_start(self) -> None:
        self.settings = settings_from(self.config)
        self.connection: dict = {"state": "connecting"}
        self.latency: float | None = None
        self.bridge = AsyncBridge()
        self.poster = runner.StatusPoster(self.settings, self.bridge)
        self.bridge.start(self._client, name="discord")

    async def _client(self, bridge: AsyncBridge) -> None:
        bridge.capture_logs("discord")
        await runner.run(bridge, self.settings, self.poster)

    def on_client_event(self, kind: str, *value) -> None:
        if kind == "connection":
            self.connection_changed("discord", value[0])
            self.latency = value[0].get("latency", self.latency)
        elif kind == "latency":
            self.latency = value[0]

    # -- to the status channel ------------------------------------------------------------------
    @handles(protocol.NOTIFY)
    def _notice(self, env, sender) -> None:
        if self.bridge.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing: the actor goes too
                self.bridge.loop.call_soon_threadsafe(self.poster.feed, dict(env.b))

    def health(self) -> tuple[str, str]:
        c = self.connection
        channel = "" if self.settings.status_channel_id else "; no status channel set"
        backlog = self.poster.reporter.backlog
        notes = f"; {backlog} notifications waiting" if backlog else ""
        if c.get("state") == "ready":
            latency = f"{self.latency * 1000:.0f} ms" if self.latency is not None and \
                self.latency != float("inf") else "not measured yet"
            return "ok", (f"connected as {c.get('user')} to {c.get('guilds', 0)} guild(s); "
                          f"gateway latency {latency}{channel}{notes}")
        reason = f": {c['reason']}" if c.get("reason") else ""
        retry = f"; retry in {c['retry_in_s']:g}s" if c.get("retry_in_s") else ""
        return "degraded", f"{c.get('state', 'connecting')}{reason}{retry}{channel}{notes}"

