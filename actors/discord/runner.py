"""The bot's life on the client loop: a new bot per connection attempt, backoff between them,
the status channel's poster, and what the service must hear (connected, latency, a failure
that retrying cannot fix).

discord.py reconnects and resumes by itself once connected; what it does not handle is left
to :func:`run`: a refused first connect (2.7.1 crashes with ``AttributeError ... 'sequence'``
instead of retrying), an unreachable platform at login, a close it gives up on. Close codes
4004 and 4010-4014 are final: retrying a bad token is how an IP gets banned by Cloudflare.
"""
from __future__ import annotations

import asyncio
import time

import discord
import yarl

from actors.chat import Journal
from actors.discord.bot import SwarmBot
from actors.discord.reporter import ChannelReporter
from actors.discord.settings import Settings

BACKOFF_INITIAL_S, BACKOFF_MAX_S, STABLE_S = 1.0, 60.0, 60.0
LATENCY_EVERY_S = 5.0
FATAL_CLOSES = {
    4004: "authentication failed: check services.discord.token",
    4010: "invalid shard", 4011: "sharding required", 4012: "invalid gateway API version",
    4013: "invalid intents",
    4014: "the Message Content privileged intent is not enabled for this bot: enable it in the "
          "Discord developer portal (Bot > Privileged Gateway Intents)",
}


def classify(exc: BaseException) -> tuple[bool, str]:
    """(final, reason) of a connection attempt that ended with ``exc``."""
    if isinstance(exc, discord.LoginFailure):
        return True, FATAL_CLOSES[4004]
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return True, FATAL_CLOSES[4014]
    if isinstance(exc, discord.ConnectionClosed) and exc.code in FATAL_CLOSES:
        return True, FATAL_CLOSES[exc.code]
    return False, f"platform unreachable: {type(exc).__name__}: {exc}"[:300]


def point_at(settings: Settings) -> None:
    """Aim discord.py at the configured endpoints (the real ones by default). Read per request
    and per connect; this process runs one bot."""
    discord.http.Route.BASE = f"{settings.api_base}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)


class StatusPoster:
    """Feeds the status channel from the reporter; outlives the bots it posts through."""

    def __init__(self, settings: Settings, bridge):
        report = settings.report
        self.channel_id = settings.status_channel_id
        self.reporter = ChannelReporter(
            posts=int(report.get("posts", 5)), per_s=float(report.get("per_s", 5.0)),
            linger_s=float(report.get("linger_s", 1.0)),
            kinds=tuple(report.get("kinds", ("alert", "state", "gas"))),
            min_severity=report.get("min_severity", "info"))
        self.bridge = bridge
        self.bot: SwarmBot | None = None
        self.wake = asyncio.Event()
        self.posted = 0

    def feed(self, notice: dict) -> None:
        """On the loop: one notification for the channel."""
        if self.channel_id is not None:
            self.reporter.add(notice, time.monotonic())
            self.wake.set()

    async def run(self) -> None:
        while True:
            wait = self.reporter.wait_s(time.monotonic())
            bot = self.bot
            if wait is None or wait > 0 or bot is None or not bot.is_ready():
                self.wake.clear()
                # no bot: look again soon, the next one may be up; else sleep to the next slot
                timeout = 1.0 if wait is not None and wait <= 0 else wait
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout)
                except TimeoutError:
                    pass
                continue
            text = self.reporter.take(time.monotonic())
            if text is not None:
                await self._post(bot, text)

    async def _post(self, bot: SwarmBot, text: str) -> None:
        try:
            channel = bot.get_channel(self.channel_id) or await bot.fetch_channel(
                self.channel_id)
            await channel.send(text)  # a 429 is waited out and retried by discord.py
            self.posted += 1
        except (discord.Forbidden, discord.NotFound) as exc:
            self.bridge.log("error", "status_channel", f"cannot post to status channel "
                            f"{self.channel_id} ({exc.status}): check "
                            f"services.discord.status_channel_id; dropped: {text[:200]}")
        except (discord.HTTPException, OSError) as exc:  # give it back: it goes with the next
            self.bridge.log("warning", "status_channel", f"posting failed ({exc}); retrying")
            self.reporter.add({"kind": "alert", "severity": "warning", "service": "discord",
                               "summary": text, "key": f"repost:{time.monotonic()}"},
                              time.monotonic())


async def run(bridge, settings: Settings, poster: StatusPoster) -> None:
    """Connect, and connect again, until a final failure (then ``("fatal", reason)``)."""
    point_at(settings)
    journal = await asyncio.to_thread(Journal, settings.journal)
    interrupted = await asyncio.to_thread(journal.interrupted)  # told on the first ready
    poster_task = asyncio.create_task(poster.run())
    delay = BACKOFF_INITIAL_S
    try:
        while True:
            bot = poster.bot = SwarmBot(settings, bridge, journal, interrupted)
            bridge.post(("connection", {"state": "connecting"}))
            started = time.monotonic()
            watcher = asyncio.create_task(_latency(bot, bridge))
            try:
                await bot.start(settings.token)
                reason = "the gateway connection ended"
            except Exception as exc:  # noqa: BLE001 - every way an attempt ends is classified
                final, reason = classify(exc)
                if final:
                    bridge.post(("fatal", reason))
                    return
            finally:
                watcher.cancel()
                poster.bot = None
                if not bot.is_closed():
                    await bot.close()
            if time.monotonic() - started > STABLE_S:
                delay = BACKOFF_INITIAL_S
            bridge.post(("connection", {"state": "reconnecting", "reason": reason,
                                        "retry_in_s": delay}))
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
    finally:
        poster_task.cancel()
        await asyncio.to_thread(journal.close)


async def _latency(bot: SwarmBot, bridge) -> None:
    """While one bot lives: its gateway latency (heartbeat round trip), for the health detail."""
    while True:
        await asyncio.sleep(LATENCY_EVERY_S)
        if bot.is_ready():
            bridge.post(("latency", bot.latency))
