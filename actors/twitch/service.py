"""The Twitch service: a thin actor around the bot, which runs on its own asyncio loop.

    services:
      twitch:
        enabled: true
        client_id: "${env:TWITCH_CLIENT_ID}"
        client_secret: "${env:TWITCH_CLIENT_SECRET}"
        bot_id: "123456"
        bot_token: "${env:TWITCH_BOT_TOKEN}"
        bot_refresh_token: "${env:TWITCH_BOT_REFRESH_TOKEN}"
        channels: [mychannel]

The actor holds the config and the connection state (its health: EventSub session and
subscriptions, output counters), answers the bot's requests by asking the admin actor (see
``actors/chat.py``), and hands notifications to the chat output when announcements are on.
Missing credentials: ``disabled`` naming the keys; rejected ones: ``failed`` with the reason,
never a restart loop.
"""
from __future__ import annotations

import contextlib

from actors.chat import ChatService
from actors.twitch import runner
from actors.twitch.settings import settings_from
from system import protocol
from system.bridge import AsyncBridge
from system.logs import redact_in_process
from system.service import handles


class TwitchService(ChatService):
    tick_s = 0.5

    def on_start(self) -> None:
        self.settings = settings_from(self.config)
        self.connection: dict = {"state": "connecting"}
        self.eventsub: dict = {}
        self.stats: dict = {}
        self.bridge = AsyncBridge()
        self.output = runner.ChatOutput(self.settings, self.bridge)
        self.bridge.start(self._client, name="twitch")

    async def _client(self, bridge: AsyncBridge) -> None:
        bridge.capture_logs("twitchio")
        await runner.run(bridge, self.settings, self.output)

    def on_client_event(self, kind: str, *value) -> None:
        if kind == "connection":
            self.connection_changed("twitch", value[0])
        elif kind == "eventsub":
            self.eventsub = value[0]
        elif kind == "stats":
            self.stats = value[0]
        elif kind == "tokens":  # a refreshed pair: secrets from now on, like the configured one
            redact_in_process([*self.config.get("_secret_values", []), *value])

    @handles(protocol.NOTIFY)
    def _notice(self, env, sender) -> None:
        if self.bridge.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing: the actor goes too
                self.bridge.loop.call_soon_threadsafe(self.output.notice, dict(env.b))

    def health(self) -> tuple[str, str]:
        c, e, s = self.connection, self.eventsub, self.stats
        output = (f"; sent {s.get('sent', 0)}, queued {s.get('queued', 0)}, dropped "
                  f"{s.get('dropped', 0)}" + (f", refused by Twitch {sum(s['rejected'].values())}"
                                              if s.get("rejected") else "")) if s else ""
        if c.get("state") == "ready":
            subscriptions, channels = e.get("subscriptions", 0), len(self.settings.channels)
            detail = (f"in {', '.join('#' + c for c in self.settings.channels)}; EventSub "
                      f"session {e.get('session') or '?'}, {subscriptions} subscription(s)"
                      f"{output}")
            return ("ok" if subscriptions == channels else "degraded"), detail
        reason = f": {c['reason']}" if c.get("reason") else ""
        retry = f"; retry in {c['retry_in_s']:g}s" if c.get("retry_in_s") else ""
        return "degraded", f"{c.get('state', 'connecting')}{reason}{retry}{output}"
