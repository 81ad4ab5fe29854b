"""The Twitch bot: a twitchio 3 ``commands.Bot`` whose commands live in one Component, with a
level guard on each, the free-text interpretation of other chat lines, and one error path.

Every command passes :func:`gate` first (the chatter's level from badges and the allow-list,
then the command's cooldowns) and answers through :class:`ChatOutput` (the limiter), never
with ``ctx.reply``: nothing the bot says escapes the rate limit. Notifications are
deduplicated on ``message_id`` (Twitch delivers at least once, twitchio runs a redelivered
command again); the bot's own lines and shared-chat lines from partner channels are not
interpreted. Actions go through the admin actor (``actors/chat.py``); quote I/O runs in a
worker thread. Nothing here blocks the loop.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

import twitchio
from twitchio import eventsub
from twitchio.ext import commands

from actors.chat import ActionFailed, AdminClient, Journal, handling, interrupted_notice
from actors.twitch import render
from actors.twitch.interpret import ChatEchoes, Kind, interpret, route
from actors.twitch.levels import refusal
from actors.twitch.limiter import Priority
from actors.twitch.quotes import QuoteBook
from actors.twitch.settings import Settings
from system.permissions import Principal

SEEN_IDS = 4096  # message ids remembered for deduplication (redelivery comes within seconds)
USAGE = {
    "status": "!status [agent|service]", "agents": "!agents", "gas": "!gas",
    "quote": "!quote [N] | !quote add TEXT | !quote remove N", "ask": "!ask QUESTION",
    "agent": "!agent AGENT TEXT", "broadcast": "!broadcast TEXT", "unstall": "!unstall AGENT",
    "help": "!help",
}
# Confirmations of what a command changed go first and never expire in the limiter.
CONFIRMED = {"agent", "broadcast", "unstall", "quote add", "quote remove", "ask"}


class ChannelNotFound(Exception):
    """``services.twitch.channel`` names no Twitch user."""


class Refused(commands.GuardFailure):
    """The chatter may not run the command now; ``text`` (None: stay silent) says why."""

    def __init__(self, text: str | None):
        super().__init__(text or "refused")
        self.text = text


def principal_of(chatter: Any, broadcaster_id: str | None) -> Principal:
    """A chatter (twitchio Chatter or PartialUser with badges) as the policy sees them."""
    badges = tuple(b.set_id for b in getattr(chatter, "badges", None) or ())
    if str(chatter.id) == str(broadcaster_id):
        badges += ("broadcaster",)
    login = (chatter.name or "").lower()
    return Principal("twitch", str(chatter.id), login, badges, aliases=(login,) if login else ())


def gate(command: str):
    """The guard of one command: the policy, then its cooldowns (a refused chatter does not
    start one). Also records the principal on the context for the command."""
    async def predicate(ctx: commands.Context) -> bool:
        ctx.bot.check(ctx, command)
        return True
    return commands.guard(predicate)


class SwarmTwitchBot(commands.Bot):
    """One bot object per connection attempt."""

    def __init__(self, settings: Settings, bridge, output, quotes: QuoteBook,
                 token: tuple[str, str], store, journal: Journal, interrupted: list[dict]):
        super().__init__(client_id=settings.client_id, client_secret=settings.client_secret,
                         bot_id=settings.bot_id, prefix=settings.prefix)
        self.settings = settings
        self.bridge = bridge
        self.output = output
        self.quotes = quotes
        self.store = store
        self.journal = journal
        self.interrupted = interrupted  # shared by the run's bots: the first ready tells them
        self._token = token
        self.admin = AdminClient(bridge, settings.agents, "twitch")
        self.channel_ids: dict[str, str] = {}  # broadcaster id -> login, once resolved
        self.session_id: str | None = None
        self.echoes = ChatEchoes()
        self._seen: OrderedDict[str, None] = OrderedDict()

    # -- lifecycle --------------------------------------------------------------------------
    async def setup_hook(self) -> None:
        await self.add_token(*self._token)  # InvalidTokenException: rejected and not refreshable
        users = await self.fetch_users(logins=list(self.settings.channels))
        found = {u.name.lower(): str(u.id) for u in users}
        missing = [c for c in self.settings.channels if c not in found]
        if missing:
            raise ChannelNotFound(f"no Twitch channel named {', '.join(missing)}: check "
                                  f"services.twitch.channels")
        self.channel_ids = {found[c]: c for c in self.settings.channels}
        self.output.attach(self, found)
        await self.add_component(SwarmCommands(self))
        await self.subscribe(list(self.channel_ids))

    async def subscribe(self, broadcaster_ids: list[str]) -> None:
        for broadcaster_id in broadcaster_ids:
            await self.subscribe_websocket(eventsub.ChatMessageSubscription(
                broadcaster_user_id=broadcaster_id, user_id=self.bot_id))

    def subscribed(self) -> set[str]:
        """The channels (broadcaster ids) with a live chat subscription."""
        return {str(s.condition.get("broadcaster_user_id"))
                for s in self.websocket_subscriptions().values()} & set(self.channel_ids)

    async def event_ready(self) -> None:
        self.bridge.post(("connection", {"state": "ready"}))
        while self.interrupted:
            entry = self.interrupted.pop(0)
            self.output.say(entry["channel"], f"@{entry['user']} "
                            + interrupted_notice(entry["text"]), Priority.CONFIRM)

    async def event_websocket_welcome(self, payload: twitchio.WebsocketWelcome) -> None:
        self.session_id = payload.id

    async def event_websocket_closed(self, payload: Any) -> None:
        self.bridge.log("warning", "eventsub_closed", f"EventSub session "
                        f"{payload.socket.session_id} closed")

    async def event_token_refreshed(self, payload: twitchio.TokenRefreshedPayload) -> None:
        if str(payload.user_id) == self.bot_id:
            self.bridge.post(("tokens", payload.token, payload.refresh_token))
            await asyncio.to_thread(self.store.save, payload.token, payload.refresh_token)
            self.bridge.log("info", "token_refreshed", "the bot's user token was refreshed "
                            f"and stored ({self.store.path})")

    # -- chat -------------------------------------------------------------------------------
    async def event_message(self, payload: twitchio.ChatMessage) -> None:
        if payload.id in self._seen:  # a redelivered notification
            return
        self._seen[payload.id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        channel = self.channel_ids.get(str(payload.broadcaster.id))
        if channel is None:
            return  # not a channel of ours (a subscription left over)
        if str(payload.chatter.id) == self.bot_id:
            self.output.bot_badges(channel, payload.chatter)  # a moderator here?
            return
        source = payload.source_broadcaster
        if source is not None and str(source.id) != str(payload.broadcaster.id):
            return  # shared chat: a partner channel's line
        self.output.lines[channel] += 1
        text = payload.text or ""
        if text.startswith(self.settings.prefix):
            login = payload.chatter.name or str(payload.chatter.id)
            # journaled until answered: a SIGKILL meanwhile is told at the next start
            with handling(self.journal, self.bridge, str(payload.id), channel, login, text,
                          login):
                await self.process_commands(payload)
            return
        await self._free_text(payload, text)

    async def _free_text(self, payload: twitchio.ChatMessage, text: str) -> None:
        who = principal_of(payload.chatter, payload.broadcaster.id)
        level = self.settings.policy.level(who)
        echoes = self.echoes.count(text, who.id, time.monotonic())
        seen = interpret(text, level, self.settings.interpretation, self.settings.agents,
                         echoes=echoes)
        self.output.count(seen.kind)
        if seen.kind == Kind.SPAM:
            self.bridge.log("info", "spam", f"{who.label}: {seen.reason}", user_id=who.id)
        if not (seen.forward and self.settings.forward_free_text):
            return
        try:
            queue_id = await self.admin.send(who, seen.agent, text, sender=f"twitch:{who.name}")
        except ActionFailed as exc:
            self.bridge.log("warning", "forward_failed", f"{who.label} -> {seen.agent}: {exc}")
            return
        self.bridge.log("info", "forwarded", f"{who.label} -> {seen.agent} ({seen.reason})",
                        user_id=who.id, agent=seen.agent, id=queue_id)

    # -- permissions ------------------------------------------------------------------------
    def check(self, ctx: commands.Context, command: str) -> Principal:
        """Policy then cooldowns; Refused with the line to answer. Refusals are logged."""
        who = principal_of(ctx.chatter, ctx.broadcaster.id)
        decision = self.settings.policy.check(who, command)
        if not decision.allowed:
            self.bridge.log("warning", "refused", f"{who.label} may not run {command}: "
                            f"{decision.rule} (needs {decision.needed})", user_id=who.id,
                            command=command, via="twitch", role=decision.role,
                            needed=decision.needed)
            raise Refused(refusal(command, decision.needed))
        ok, notice = self.settings.cooldowns.check(command.split()[0], who.id,
                                                   self.settings.policy.level(who),
                                                   time.monotonic())
        if not ok:
            raise Refused(notice)
        return who

    def say(self, ctx: commands.Context, text: str, priority: Priority) -> None:
        """Answer in the channel the command came from."""
        channel = self.channel_ids.get(str(ctx.broadcaster.id))
        if channel is not None:
            self.output.say(channel, f"@{ctx.chatter.name} {text}", priority)

    # -- the one error path -------------------------------------------------------------------
    async def event_command_error(self, payload: commands.CommandErrorPayload) -> None:
        error, ctx = payload.exception, payload.context
        while isinstance(error, commands.CommandInvokeError) and error.original is not None:
            error = error.original
        name = ctx.command.qualified_name if ctx.command else ""
        if isinstance(error, commands.CommandNotFound):
            return  # another bot's command, or a typo: say nothing
        if isinstance(error, Refused):
            text = error.text
        elif isinstance(error, ActionFailed):
            text = str(error)
        elif isinstance(error, (commands.MissingRequiredArgument, commands.ConversionError,
                                commands.BadArgument)):
            text = f"usage: {USAGE.get(name.split()[0] if name else '', '!help')}"
        else:
            self.bridge.log("error", "command_error", f"{name}: {type(error).__name__}: "
                            f"{error}", exc=error)
            text = "something went wrong on our side; it is logged."
        if text:
            self.say(ctx, text, Priority.CONFIRM if name in CONFIRMED else Priority.ANSWER)


class SwarmCommands(commands.Component):
    """The commands; each one's least level is config (levels.DEFAULT_LEVELS by default)."""

    def __init__(self, bot: SwarmTwitchBot):
        self.bot = bot

    def _who(self, ctx: commands.Context) -> Principal:
        return principal_of(ctx.chatter, ctx.broadcaster.id)

    @commands.command()
    @gate("status")
    async def status(self, ctx: commands.Context, *, target: str | None = None) -> None:
        who = self._who(ctx)
        if target and target.casefold() in {a.casefold() for a in self.bot.settings.agents}:
            agents = (await self.bot.admin.call(who, "admin.agents"))["agents"]
            agent = next(a for a in agents if a["name"].casefold() == target.casefold())
            text = render.agent_line(agent)
        else:
            status = await self.bot.admin.call(who, "admin.status")
            if target is None:
                text = render.status_line(status)
            elif target in status.get("services", {}):
                text = render.service_line(target, status["services"][target])
            else:
                text = f"no agent or service named {target!r}"
        self.bot.say(ctx, text, Priority.ANSWER)

    @commands.command()
    @gate("agents")
    async def agents(self, ctx: commands.Context) -> None:
        agents = (await self.bot.admin.call(self._who(ctx), "admin.agents"))["agents"]
        self.bot.say(ctx, render.agents_line(agents), Priority.ANSWER)

    @commands.command()
    @gate("gas")
    async def gas(self, ctx: commands.Context) -> None:
        self.bot.say(ctx, render.gas_line(await self.bot.admin.gas(self._who(ctx), "status")),
                     Priority.ANSWER)

    @commands.command()
    @gate("quote")
    async def quote(self, ctx: commands.Context, *, rest: str = "") -> None:
        """``!quote``, ``!quote N``, ``!quote add TEXT``, ``!quote remove N``."""
        word, _, arg = rest.strip().partition(" ")
        quotes = self.bot.quotes
        if word.lower() in ("add", "remove"):
            name = f"quote {word.lower()}"
            who = self.bot.check(ctx, name)
            try:
                if name == "quote add":
                    n = await asyncio.to_thread(quotes.add, arg, who.label)
                    text = f"added quote #{n}"
                else:
                    if not arg.strip().lstrip("#").isdigit():
                        raise ValueError(f"usage: {USAGE['quote']}")
                    removed = await asyncio.to_thread(quotes.remove,
                                                      int(arg.strip().lstrip("#")), who.label)
                    text = f"removed quote #{removed.n}"
                self.bot.bridge.log("info", "audit", f"{who.label}: {name} -> {text}",
                                    principal=who.label)
            except (ValueError, LookupError) as exc:
                text = str(exc)
            self.bot.say(ctx, text, Priority.CONFIRM)
            return
        if word and not word.lstrip("#").isdigit():
            raise commands.BadArgument("not a quote number")
        found = await asyncio.to_thread(quotes.get, int(word.lstrip("#"))) if word \
            else await asyncio.to_thread(quotes.next)
        text = f"#{found.n}: {found.text}" if found else (
            f"there is no quote #{word.lstrip('#')}" if word else "there are no quotes yet")
        self.bot.say(ctx, text, Priority.ANSWER)

    @commands.command()
    @gate("ask")
    async def ask(self, ctx: commands.Context, *, question: str) -> None:
        """A question for the agent interpretation picks (or the default agent)."""
        who = self._who(ctx)
        settings = self.bot.settings
        seen = interpret(question, settings.policy.level(who), settings.interpretation,
                         settings.agents)
        if seen.kind == Kind.SPAM:
            self.bot.say(ctx, "that looks like spam; not sent.", Priority.ANSWER)
            return
        agent, _ = route(question, settings.interpretation, settings.agents)
        if agent is None:
            self.bot.say(ctx, "no agent matches that question (and no default agent is set).",
                         Priority.ANSWER)
            return
        await self.bot.admin.send(who, agent, f"Question from twitch:{who.name}: {question}",
                                  sender=f"twitch:{who.name}")
        self.bot.say(ctx, f"sent to {agent}", Priority.CONFIRM)

    @commands.command()
    @gate("agent")
    async def agent(self, ctx: commands.Context, name: str, *, text: str) -> None:
        who = self._who(ctx)
        queue_id = await self.bot.admin.send(who, name, text, sender=f"twitch:{who.name}")
        self.bot.say(ctx, f"queued for {self.bot.admin.agent(name)} ({queue_id})",
                     Priority.CONFIRM)

    @commands.command()
    @gate("broadcast")
    async def broadcast(self, ctx: commands.Context, *, text: str) -> None:
        who = self._who(ctx)
        accepted, total, rejected = await self.bot.admin.send_to_all(
            who, text, sender=f"twitch:{who.name}")
        self.bot.say(ctx, f"queued for {accepted} of {total} agents"
                     + (f"; not queued: {rejected}" if rejected else ""), Priority.CONFIRM)

    @commands.command()
    @gate("unstall")
    async def unstall(self, ctx: commands.Context, name: str) -> None:
        agent = await self.bot.admin.nudge(self._who(ctx), name)
        self.bot.say(ctx, f"nudged {agent}; its stall timer starts again", Priority.CONFIRM)

    @commands.command(name="help")
    @gate("help")
    async def help_(self, ctx: commands.Context) -> None:
        who = self._who(ctx)
        names = [c for c in self.bot.settings.policy.allowed_commands(who) if " " not in c]
        self.bot.say(ctx, "you may run: " + ", ".join(USAGE.get(c, f"!{c}") for c in names),
                     Priority.ANSWER)
