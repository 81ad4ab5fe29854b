"""The bot's life on the client loop: a new bot per connection attempt with backoff between
them, the chat output sender, the EventSub watchdog, the status timer, announcements, and
what the service must hear (connection state, stats, a failure retrying cannot fix).

twitchio reconnects a dropped EventSub socket and resubscribes by itself; what it does not do
is left here: a socket closed for good (4003: not subscribed in time, or a revoked
subscription) leaves the bot deaf, so the watchdog subscribes again when the bot has had no
subscription for ``resubscribe_after_s``. Rejected app credentials, a user token that can
neither be validated nor refreshed and a missing channel are final: retrying a bad secret
only gets an app throttled.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import twitchio
import twitchio.eventsub.websockets
import twitchio.http

from actors.chat import ActionFailed, AdminClient, Journal
from actors.twitch import render
from actors.twitch.bot import ChannelNotFound, SwarmTwitchBot
from actors.twitch.limiter import Priority
from actors.twitch.quotes import QuoteBook
from actors.twitch.settings import Settings
from actors.twitch.tokens import TokenStore
from system.permissions import Principal

BACKOFF_INITIAL_S, BACKOFF_MAX_S, STABLE_S = 1.0, 60.0, 60.0
STATS_EVERY_S = 1.0
WATCH_EVERY_S = 1.0
SEVERITIES = ("info", "warning", "error", "critical")
TIMER = Principal("twitch", "timer", "status timer")
QUOTES = Principal("twitch", "quotes", "quote book")
TOKEN_REJECTED = ("the bot's user token was rejected or revoked and could not be refreshed: "
                  "set services.twitch.bot_token and bot_refresh_token")


def point_at(settings: Settings) -> None:
    """Aim twitchio at the configured endpoints (Twitch's by default); read per request and
    per connect. This process runs one bot."""
    twitchio.http.Route.BASE = f"{settings.api_base}/helix/"
    twitchio.http.Route.ID_BASE = f"{settings.id_base}/"
    twitchio.eventsub.websockets.WSS = settings.eventsub_url


def classify(exc: BaseException) -> tuple[bool, str]:
    """(final, reason) of a connection attempt that ended with ``exc``."""
    if isinstance(exc, twitchio.InvalidTokenException) or refresh_refused(exc):
        return True, TOKEN_REJECTED
    if isinstance(exc, ChannelNotFound):
        return True, str(exc)
    if isinstance(exc, twitchio.HTTPException) and exc.status in (400, 401, 403):
        return True, (f"Twitch refused the app credentials (HTTP {exc.status}: "
                      f"{exc.extra.get('message') if isinstance(exc.extra, dict) else ''}): "
                      f"check services.twitch.client_id and client_secret")
    return False, f"platform unreachable: {type(exc).__name__}: {exc}"[:300]


def refresh_refused(exc: BaseException) -> bool:
    """A refresh of the user token that Twitch refused (revoked: the user disconnected the
    app, or the refresh token is stale)."""
    url = str(getattr(getattr(exc, "route", None), "url", ""))
    return (isinstance(exc, twitchio.HTTPException) and exc.status in (400, 401)
            and "/oauth2/token" in url and "grant_type=refresh_token" in url)


class ChatOutput:
    """Everything the bot says goes through here: offered to the limiter, sent when it hands
    the line back, with the bot's user token. Outlives the bots it sends through."""

    def __init__(self, settings: Settings, bridge):
        self.limiter = settings.limiter()
        self.bridge = bridge
        self.announce = settings.announce
        self.bot: SwarmTwitchBot | None = None
        self.channels = settings.channels    # the limiter's keys: the channels' logins
        self.channel_ids: dict[str, str] = {}  # login -> broadcaster id, once resolved
        self.lines: Counter[str] = Counter()  # chat lines seen per channel (the timer's rule)
        self.wake = asyncio.Event()
        self.rejected: Counter[str] = Counter()  # drop_reason -> count (Twitch refused it)
        self.failed = 0                            # sends that failed (network, HTTP error)
        self.kinds: Counter[str] = Counter()     # interpreted free-text lines by kind

    def attach(self, bot: SwarmTwitchBot, channel_ids: dict[str, str]) -> None:
        self.bot, self.channel_ids = bot, dict(channel_ids)
        for login, channel_id in channel_ids.items():
            if channel_id == bot.bot_id:
                self.limiter.set_moderator(login, True)  # the bot's own channel
        self.wake.set()

    def bot_badges(self, channel: str, chatter: twitchio.Chatter) -> None:
        """The bot's own line came back: its badges say whether it moderates the channel."""
        badges = {b.set_id for b in chatter.badges or ()}
        self.limiter.set_moderator(channel, bool(
            badges & {"moderator", "lead_moderator", "broadcaster"}))

    def count(self, kind: str) -> None:
        self.kinds[kind] += 1

    def say(self, channel: str, text: str, priority: Priority) -> None:
        """Queue a line for a channel (sent once a bot is connected; old answers expire
        meanwhile)."""
        self.limiter.offer(channel, text, priority, time.monotonic())
        self.wake.set()

    def notice(self, notice: dict) -> None:
        """On the loop: a notification; announced if ``services.twitch.announce`` wants it."""
        kinds = self.announce.get("kinds") or []
        least = self.announce.get("min_severity", "warning")
        severity = notice.get("severity", "info")
        if notice.get("kind") in kinds and (SEVERITIES.index(severity) if severity in SEVERITIES
                                            else 0) >= SEVERITIES.index(least):
            for channel in self.channels:
                self.say(channel, render.notice_line(notice), Priority.NOTICE)

    async def run(self) -> None:
        while True:
            bot = self.bot
            wait = self.limiter.next_due_in(time.monotonic())
            if bot is None or wait is None or wait > 0:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), 1.0 if wait is None or bot is None
                                           else wait)
                except TimeoutError:
                    pass
                continue
            for channel, text in self.limiter.due(time.monotonic(), most=1):
                await self._send(bot, channel, text)
                self.limiter.delivered(channel, time.monotonic())

    async def _send(self, bot: SwarmTwitchBot, channel: str, text: str) -> None:
        try:
            await bot.create_partialuser(self.channel_ids[channel]).send_message(
                text, sender=bot.bot_id, token_for=bot.bot_id)
        except twitchio.MessageRejectedError as exc:
            self.rejected[exc.code or "unknown"] += 1
            self.bridge.log("warning", "message_dropped", f"Twitch dropped a message "
                            f"({exc.code}: {exc.message})", drop_reason=exc.code)
        except twitchio.InvalidTokenException:
            self.bridge.post(("fatal", TOKEN_REJECTED))
        except (twitchio.HTTPException, aiohttp.ClientError, OSError, ValueError) as exc:
            if refresh_refused(exc):  # the 401 made twitchio refresh, and Twitch said no
                self.bridge.post(("fatal", TOKEN_REJECTED))
                return
            self.failed += 1
            self.bridge.log("warning", "send_failed", f"a chat message was not sent: "
                            f"{type(exc).__name__}: {exc}"[:300])

    def stats(self) -> dict:
        stats = self.limiter.stats()
        return {"sent": stats["sent"], "queued": stats["queued"],
                "dropped": stats["dropped_total"], "dropped_by": stats["dropped"],
                "rejected": dict(self.rejected), "failed": self.failed,
                "lines": dict(self.kinds)}


async def run(bridge, settings: Settings, output: ChatOutput) -> None:
    """Connect, and connect again, until a final failure (then ``("fatal", reason)``)."""
    point_at(settings)
    store = TokenStore(settings.token_file, settings.bot_token, settings.bot_refresh_token)
    settings.quotes_db.parent.mkdir(parents=True, exist_ok=True)
    quotes = await asyncio.to_thread(QuoteBook, settings.quotes_db, settings.quotes_file,
                                     extra=_brain_quotes(bridge, settings))
    journal = await asyncio.to_thread(Journal, settings.journal)
    interrupted = await asyncio.to_thread(journal.interrupted)  # told on the first ready
    helpers = [asyncio.create_task(output.run()), asyncio.create_task(_stats(bridge, output)),
               asyncio.create_task(_timer(settings, output))]
    delay = BACKOFF_INITIAL_S
    try:
        while True:
            token = await asyncio.to_thread(store.load)
            bot = SwarmTwitchBot(settings, bridge, output, quotes, token, store, journal,
                                 interrupted)
            bridge.post(("connection", {"state": "connecting"}))
            started = time.monotonic()
            watchdog = asyncio.create_task(_watch(bot, settings, bridge))
            try:
                await bot.start(with_adapter=False, load_tokens=False, save_tokens=False)
                reason = "the client stopped"
            except Exception as exc:  # noqa: BLE001 - every way an attempt ends is classified
                final, reason = classify(exc)
                if final:
                    bridge.post(("fatal", reason))
                    return
            finally:
                watchdog.cancel()
                output.bot = None
                await bot.close()
            if time.monotonic() - started > STABLE_S:
                delay = BACKOFF_INITIAL_S
            bridge.post(("connection", {"state": "reconnecting", "reason": reason,
                                        "retry_in_s": delay}))
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.to_thread(quotes.close)
        await asyncio.to_thread(journal.close)


def _brain_quotes(bridge, settings: Settings):
    """The swarm brain's entries of category ``quote``, for the quote book's new rounds (it
    calls this from its worker thread; an unavailable brain leaves the packaged quotes)."""
    admin, loop = AdminClient(bridge, settings.agents, "twitch"), asyncio.get_running_loop()

    def read() -> list[str]:
        future = asyncio.run_coroutine_threadsafe(admin.gas(
            QUOTES, "brain_list", {"category": "quote", "limit": 1000}), loop)
        return [entry["content"] for entry in future.result(30)["entries"]]
    return read


async def _watch(bot: SwarmTwitchBot, settings: Settings, bridge) -> None:
    """Subscribe again when the bot has been without a subscription for a while (twitchio
    gives up on a socket closed with 4003); after three failed tries, a new bot."""
    deaf_since, failures = None, 0
    while True:
        await asyncio.sleep(WATCH_EVERY_S)
        if not bot.channel_ids or bot.output.bot is not bot:
            continue  # still starting
        subscribed = bot.subscribed()
        missing = [c for c in bot.channel_ids if c not in subscribed]
        bridge.post(("eventsub", {"session": bot.session_id, "subscriptions": len(subscribed),
                                  "channels": len(bot.channel_ids)}))
        if not missing:
            deaf_since, failures = None, 0
            continue
        deaf_since = deaf_since or time.monotonic()
        if time.monotonic() - deaf_since < settings.resubscribe_after_s:
            continue
        bridge.log("warning", "resubscribe", f"no EventSub subscription for "
                   f"{', '.join(bot.channel_ids[c] for c in missing)}: subscribing again")
        try:
            await bot.subscribe(missing)
            deaf_since = None
        except Exception as exc:  # noqa: BLE001 - counted; a new bot after three
            failures += 1
            bridge.log("warning", "resubscribe_failed", f"{type(exc).__name__}: {exc}"[:300])
            if failures >= 3:
                await bot.close()  # start() returns: the loop makes a new bot
                return


async def _stats(bridge, output: ChatOutput) -> None:
    while True:
        await asyncio.sleep(STATS_EVERY_S)
        bridge.post(("stats", output.stats()))


async def _timer(settings: Settings, output: ChatOutput) -> None:
    """``timers.status_every_s`` (0: off): a status line in each channel where at least
    ``timers.min_lines`` chat lines were seen since the last one."""
    every = float(settings.timers.get("status_every_s") or 0)
    if every <= 0:
        return
    least = int(settings.timers.get("min_lines", 10))
    last: Counter[str] = Counter()
    while True:
        await asyncio.sleep(every)
        bot = output.bot
        busy = [c for c in settings.channels if output.lines[c] - last[c] >= least]
        if bot is None or not busy:
            continue
        try:
            status = await bot.admin.call(TIMER, "admin.status")
        except ActionFailed:
            continue  # the next round tries again
        for channel in busy:
            last[channel] = output.lines[channel]
            output.say(channel, render.status_line(status), Priority.PERIODIC)
