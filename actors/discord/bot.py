"""The Discord bot: hybrid commands (``!status`` and ``/status`` are one command), the
persistent control panel, plain-text forwarding, and one error path.

Every path asks :meth:`SwarmBot.authorize` (the shared policy, with the user's roles as Discord
reports them at that moment) before it acts, and refusals are logged with the user id. Actions
go through the admin actor (see ``actions.py``); nothing here blocks the loop.
"""
from __future__ import annotations

import asyncio
from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from actors.chat import Journal, command_done, handling, interrupted_notice
from actors.discord import panel
from actors.discord.actions import (
    COMMANDS,
    HELP,
    ActionFailed,
    Actions,
    Reply,
    plain_message,
    principal_of,
)
from actors.discord.settings import Settings
from system.permissions import Decision, Policy

Priority = Literal["urgent", "high", "normal", "low"]
# Commands about the server itself: in a direct message they are refused with one line.
GUILD_ONLY = frozenset({"permissions", "panel"})


class Refused(commands.CheckFailure):
    """The policy said no; ``text`` is the polite line for the user."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


def needs(command: str):
    """A check: the policy must allow ``command`` (its least role is in ``COMMANDS``)."""
    async def predicate(ctx: commands.Context) -> bool:
        decision = ctx.bot.authorize(ctx.author, command, via="slash" if ctx.interaction
                                     else "prefix", where=ctx.guild)
        if not decision.allowed:
            raise Refused(decision.refusal(command))
        if ctx.guild is None and command in GUILD_ONLY:
            raise Refused(f"`{command}` works in a server channel, not in direct messages.")
        return True
    return commands.check(predicate)


class SwarmBot(commands.Bot):
    """One bot object per connection attempt (a closed discord.py client cannot restart)."""

    def __init__(self, settings: Settings, bridge, journal: Journal, interrupted: list[dict],
                 **kw):
        intents = discord.Intents.none()
        intents.guilds = intents.guild_messages = intents.message_content = True
        intents.dm_messages = True  # commands in a DM: the policy decides by user id
        super().__init__(command_prefix=settings.prefix, intents=intents, help_command=None,
                         chunk_guilds_at_startup=False, guild_ready_timeout=0.5,
                         allowed_mentions=discord.AllowedMentions.none(), max_messages=200, **kw)
        self.settings = settings
        self.bridge = bridge
        self.journal = journal
        self.interrupted = interrupted  # shared by the run's bots: the first ready tells them
        self.policy = Policy.from_config(settings.permissions, COMMANDS)
        self.actions = Actions(bridge, settings.agents)

    # -- lifecycle --------------------------------------------------------------------------
    async def setup_hook(self) -> None:
        await self.add_cog(SwarmCommands(self))
        self.add_view(panel.ControlPanel(self.settings.services))  # buttons live across restarts
        self.add_dynamic_items(panel.RestartConfirm)
        if self.settings.sync_commands:  # here, once per start; on_ready fires after RESUMEs
            for gid in self.settings.guild_ids:
                guild = discord.Object(gid)
                self.tree.copy_global_to(guild=guild)
                await self.tree.sync(guild=guild)
        self.bridge.log("info", "commands_synced", f"{len(self.tree.get_commands())} slash "
                        f"commands synced to {len(self.settings.guild_ids)} guild(s)")

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if not initial:  # Discord allows one IDENTIFY per 5 s; the delay is config
            await asyncio.sleep(self.settings.identify_delay_s)

    async def on_ready(self) -> None:  # also after a failed RESUME: state only, no setup
        self.bridge.post(("connection", {"state": "ready", "user": str(self.user),
                                         "guilds": len(self.guilds), "latency": self.latency}))
        while self.interrupted:
            entry = self.interrupted.pop(0)
            try:
                channel = self.get_channel(int(entry["channel"])) \
                    or await self.fetch_channel(int(entry["channel"]))
                await channel.send(f"<@{entry['user']}> " + interrupted_notice(entry["text"]))
            except discord.HTTPException as exc:
                self.bridge.log("warning", "interrupted_notice", f"could not tell "
                                f"{entry['user']} about {entry['text']!r}: {exc}")

    async def on_resumed(self) -> None:
        self.bridge.post(("connection", {"state": "ready", "user": str(self.user),
                                         "guilds": len(self.guilds), "latency": self.latency}))

    async def on_disconnect(self) -> None:
        self.bridge.post(("connection", {"state": "reconnecting",
                                         "reason": "gateway connection lost; resuming"}))

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """Slash commands, buttons, selects and modal submits are recent activity too, from
        when they arrive (Discord itself waits for their answer)."""
        data = interaction.data or {}
        what = f"/{data['name']}" if data.get("name") and \
            interaction.type is discord.InteractionType.application_command \
            else f"[{data.get('custom_id') or interaction.type.name}]"
        self.bridge.post(command_done(f"@{interaction.user.name}", what))

    # -- permissions ------------------------------------------------------------------------
    def authorize(self, user: discord.abc.User, command: str, *, via: str,
                  where: discord.Guild | None = None) -> Decision:
        """The one check of every path; a refusal is logged with the user id. In a direct
        message (``where`` None) there are no roles: only rules naming the user (or
        ``everyone``) can grant anything."""
        who = principal_of(user)
        if where is None:
            who = who._replace(roles=())
        if where is not None and self.settings.guild_ids \
                and where.id not in self.settings.guild_ids:
            decision = Decision(False, None, COMMANDS.get(command),
                                "outside the configured guilds")
        else:
            decision = self.policy.check(who, command)
        if not decision.allowed:
            self.bridge.log("warning", "refused", f"{who.label} may not run {command} ({via}): "
                            f"{decision.rule}", user_id=who.id, command=command, via=via,
                            role=decision.role, needed=decision.needed)
        return decision

    # -- plain text: "Agent-3: check the build" ---------------------------------------------
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot:
            return
        command = message.content.startswith(self.settings.prefix)
        parsed = None if command or not self.settings.forward_plain_text \
            else plain_message(message.content, self.settings.agents)
        if not command and parsed is None:
            return
        # journaled until answered: a SIGKILL meanwhile is told at the next start
        with handling(self.journal, self.bridge, str(message.id), str(message.channel.id),
                      str(message.author.id), message.content, f"@{message.author.name}"):
            if command:
                await self.process_commands(message)
            else:
                await self._plain(message, parsed)

    async def _plain(self, message: discord.Message, parsed: tuple[str, str]) -> None:
        decision = self.authorize(message.author, "message", via="plain text",
                                  where=message.guild)
        if not decision.allowed:
            await message.reply(decision.refusal("message"), mention_author=False)
            return
        try:
            reply = await self.actions.message(principal_of(message.author), *parsed)
        except ActionFailed as exc:
            reply = Reply(str(exc))
        await message.reply(reply.content, mention_author=False)

    # -- the one error path -------------------------------------------------------------------
    async def on_command_error(self, ctx: commands.Context, error: Exception) -> None:
        while getattr(error, "original", None) is not None:  # hybrid and invoke wrappers
            error = error.original
        if isinstance(error, commands.CommandNotFound):
            return  # someone else's bot, or a typo: say nothing
        if isinstance(error, Refused):
            text = error.text
        elif isinstance(error, ActionFailed):
            text = str(error)
        elif isinstance(error, commands.UserInputError):
            usage = HELP.get(ctx.command.qualified_name if ctx.command else "", "")
            text = f"{error}" + (f" Usage: {usage}" if usage else "")
        elif isinstance(error, (commands.CheckFailure, app_commands.CheckFailure)):
            text = "You cannot run this here."
        else:
            self.bridge.log("error", "command_error", f"{ctx.command}: "
                            f"{type(error).__name__}: {error}", exc=error)
            text = "Something went wrong on our side; it is logged."
        await send(ctx, Reply(text), ephemeral=True)


async def send(ctx: commands.Context, reply: Reply, ephemeral: bool = False) -> None:
    """Answer a prefix or slash invocation (a deferred interaction gets a follow-up)."""
    kwargs = {"ephemeral": ephemeral} if ctx.interaction else {"mention_author": False}
    if reply.embed is not None:
        kwargs["embed"] = reply.embed
    if ctx.interaction:
        await ctx.send(reply.content, **kwargs)
    else:
        await ctx.reply(reply.content, **kwargs)


class SwarmCommands(commands.Cog, name="Swarm"):
    """Every command, prefix and slash; the role each needs is declared with ``needs``."""

    def __init__(self, bot: SwarmBot):
        self.bot = bot

    async def _run(self, ctx: commands.Context, action, *args, ephemeral: bool = False) -> None:
        if ctx.interaction:  # within Discord's 3 s; the answer follows (a prefix command
            await ctx.defer(ephemeral=ephemeral)  # has no deadline: no typing request)
        await send(ctx, await action(principal_of(ctx.author), *args), ephemeral=ephemeral)

    @commands.hybrid_command(description="The tree's state, or one service's")
    @needs("status")
    async def status(self, ctx: commands.Context, service: str | None = None) -> None:
        await self._run(ctx, self.bot.actions.status, service)

    @commands.hybrid_command(description="Every agent: gas state, task and inbox")
    @needs("agents")
    async def agents(self, ctx: commands.Context) -> None:
        await self._run(ctx, self.bot.actions.agents_view)

    @commands.hybrid_command(description="Queue statistics")
    @needs("queue")
    async def queue(self, ctx: commands.Context) -> None:
        await self._run(ctx, self.bot.actions.queue)

    @commands.hybrid_command(description="Dead letters, a page from offset")
    @needs("dlq")
    async def dlq(self, ctx: commands.Context, offset: int = 0) -> None:
        await self._run(ctx, self.bot.actions.dlq, offset)

    @commands.hybrid_command(description="Requeue a dead letter by id, or all")
    @needs("requeue")
    async def requeue(self, ctx: commands.Context, target: str) -> None:
        await self._run(ctx, self.bot.actions.requeue, target)

    @commands.hybrid_command(description="Send a message to an agent")
    @app_commands.describe(agent="agent name", text="the message",
                           priority="urgent, high, normal (default) or low")
    @needs("message")
    async def message(self, ctx: commands.Context, agent: str, *, text: str,
                      priority: Priority | None = None) -> None:
        await self._run(ctx, self.bot.actions.message, agent, text, priority)

    @commands.hybrid_command(description="Send one message to every agent")
    @needs("broadcast")
    async def broadcast(self, ctx: commands.Context, *, text: str,
                        priority: Priority | None = None) -> None:
        await self._run(ctx, self.bot.actions.broadcast, text, priority)

    @commands.hybrid_command(description="Restart a service")
    @needs("restart")
    async def restart(self, ctx: commands.Context, service: str) -> None:
        await self._run(ctx, self.bot.actions.restart, service)

    @commands.hybrid_command(description="Re-read the config file and apply it")
    @needs("reload")
    async def reload(self, ctx: commands.Context) -> None:
        await self._run(ctx, self.bot.actions.reload)

    @commands.hybrid_command(description="The gas pipeline: every agent's progress")
    @needs("gas")
    async def gas(self, ctx: commands.Context) -> None:
        await self._run(ctx, self.bot.actions.agents_view)

    @commands.hybrid_command(description="Nudge a stalled agent and restart its stall timer")
    @needs("unstall")
    async def unstall(self, ctx: commands.Context, agent: str) -> None:
        await self._run(ctx, self.bot.actions.unstall, agent)

    @commands.hybrid_group(description="The swarm brain", fallback="search")
    @needs("brain search")
    async def brain(self, ctx: commands.Context, *, text: str) -> None:
        query = text.removeprefix("search ") if not ctx.interaction else text
        await self._run(ctx, self.bot.actions.brain_search, query)

    @brain.command(name="add", description="Add an entry: TITLE | TEXT")
    @needs("brain add")
    async def brain_add(self, ctx: commands.Context, *, text: str) -> None:
        await self._run(ctx, self.bot.actions.brain_add, text)

    @commands.hybrid_command(name="help", description="What you may run")
    @needs("help")
    async def help_(self, ctx: commands.Context) -> None:
        who = principal_of(ctx.author)
        if ctx.guild is None:  # a DM: no roles, and no server commands
            who = who._replace(roles=())
        allowed = [c for c in self.bot.policy.allowed_commands(who)
                   if ctx.guild is not None or c not in GUILD_ONLY]
        role = self.bot.policy.role_of(who)[0]
        lines = [f"You are a **{role}**. You may run:"] + [
            f"• `{self.bot.settings.prefix}{c}`: {HELP[c]}" for c in allowed]
        if self.bot.settings.forward_plain_text and "message" in allowed:
            lines.append("• `AGENT: text` sends text to that agent")
        await send(ctx, Reply("\n".join(lines)), ephemeral=True)

    @commands.hybrid_command(description="Which role a user has, and which rule decides")
    @app_commands.describe(user="a mention or a user id", command="a command name")
    @needs("permissions")
    async def permissions(self, ctx: commands.Context, user: str,
                          command: str | None = None) -> None:
        uid = user.strip("<@!>")
        if not uid.isdigit():
            raise commands.BadArgument("Give the user as a mention or an id.")
        try:  # the member (with roles) may not be cached: no members intent, no chunking
            user = ctx.guild.get_member(int(uid)) or await ctx.guild.fetch_member(int(uid))
        except discord.NotFound:
            raise commands.BadArgument(f"{uid} is not a member of this server.") from None
        who = principal_of(user)
        role, rule = self.bot.policy.role_of(who)
        text = f"{user.mention} (`{who.id}`) is a **{role or 'nobody'}**: {rule}."
        if command is not None:
            decision = self.bot.policy.check(who, command)
            text += (f"\n`{command}` needs {decision.needed}: "
                     f"{'allowed' if decision.allowed else 'refused'}." if decision.needed
                     else f"\n`{command}` is not a command.")
        await send(ctx, Reply(text), ephemeral=True)

    @commands.hybrid_command(description="Post the control panel in this channel")
    @needs("panel")
    async def panel(self, ctx: commands.Context) -> None:
        view = panel.ControlPanel(self.bot.settings.services)
        if ctx.interaction:
            await ctx.send("Panel posted.", ephemeral=True)
        await ctx.channel.send(embed=panel.panel_embed(), view=view)
