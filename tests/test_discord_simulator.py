"""The simulated Discord platform against the real discord.py 2.7.1 client: a bare
commands.Bot on its own loop in a thread (as in the service's process), the simulator in
another (SimDiscordThread), real sockets on 127.0.0.1, synchronous test code."""
from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from actors.discord.simulator import (
    APP_ID,
    GUILD_ID,
    SimDiscord,
    SimDiscordThread,
    redirect_discord_py,
)

CHANNEL, OTHER_CHANNEL = 601, 602
OPERATOR, VIEWER = 501, 502
ALICE, BOB = 701, 702           # alice is an operator, bob a viewer
TOKEN = "sim-token"


def eventually(condition, timeout: float = 5.0, what: str = "condition"):
    """Poll ``condition`` (state held by the bot's thread) until truthy."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.01)
    return value


def refused(request: urllib.request.Request) -> tuple[int, dict]:
    """Send a raw REST request the platform must refuse: (status, JSON error)."""
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=5)
    with error.value as response:  # closes its socket
        return response.code, json.load(response)


# -- the bot under test ---------------------------------------------------------------------
class Form(discord.ui.Modal, title="A note"):
    note = discord.ui.TextInput(label="Note", custom_id="note")

    def __init__(self):
        super().__init__(custom_id="panel:form-modal")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"noted {self.note.value}")


class Panel(discord.ui.View):
    """Persistent: no timeout, fixed custom_ids, registered with add_view in setup_hook."""

    def __init__(self):
        super().__init__(timeout=None)

    @discord.ui.button(label="Go", custom_id="panel:go")
    async def go(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        roles = sorted(r.name for r in interaction.user.roles if not r.is_default())
        await interaction.response.send_message(f"went {roles}", ephemeral=True)

    @discord.ui.button(label="Form", custom_id="panel:form")
    async def form(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.send_modal(Form())

    @discord.ui.select(custom_id="panel:pick", options=[
        discord.SelectOption(label=v, value=v) for v in ("a", "b", "c")], max_values=2)
    async def pick(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        await interaction.response.send_message(f"picked {sorted(select.values)}")


class Tools(app_commands.Group):
    @app_commands.command(description="Echo a text")
    async def echo(self, interaction: discord.Interaction, text: str, times: int = 1) -> None:
        await interaction.response.send_message(" ".join([text] * times))


class SimBot(commands.Bot):
    """A bare bot: a few prefix and slash commands, the persistent panel."""

    def __init__(self, *, content: bool = True, on_setup=None, **options):
        intents = discord.Intents.none()
        intents.guilds = intents.guild_messages = True
        intents.message_content = content
        options = {"guild_ready_timeout": 0.05, "heartbeat_timeout": 5.0} | options
        super().__init__(command_prefix="!", intents=intents, chunk_guilds_at_startup=False,
                         help_command=None, **options)
        self.on_setup = on_setup
        self.seen: list[discord.Message] = []
        self.events: list[str] = []
        self.errors: list[Exception] = []
        self.interactions: list[discord.Interaction] = []

        @self.command()
        async def ping(ctx: commands.Context) -> None:
            await ctx.reply("pong")

        @self.command()
        @commands.has_role("operator")
        async def roles(ctx: commands.Context) -> None:
            await ctx.send(f"{ctx.guild.name}: {sorted(r.name for r in ctx.author.roles[1:])}")

        @self.command()
        async def burst(ctx: commands.Context) -> None:
            await asyncio.gather(*(ctx.send(f"burst {i}") for i in range(6)))

        @self.command()
        async def panel(ctx: commands.Context) -> None:
            await ctx.send("The panel", view=Panel())

        @self.tree.command(description="Say hello")
        async def hello(interaction: discord.Interaction, who: discord.Member) -> None:
            roles = sorted(r.name for r in who.roles if not r.is_default())
            await interaction.response.send_message(f"hello {who.name} {roles} "
                                                    f"from {interaction.user.name}")

        @self.tree.command(description="Defer, then follow up")
        async def slow(interaction: discord.Interaction) -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            await asyncio.sleep(0.05)
            await interaction.followup.send("done")

        @self.tree.command(description="Answer too late")
        async def late(interaction: discord.Interaction) -> None:
            await asyncio.sleep(0.4)
            await interaction.response.send_message("too late")

        @self.tree.error
        async def tree_error(interaction: discord.Interaction, error: Exception) -> None:
            self.errors.append(getattr(error, "original", error))

        self.tree.add_command(Tools(name="tools", description="Tools"))

    async def setup_hook(self) -> None:
        self.add_view(Panel())
        guild = discord.Object(GUILD_ID)
        self.tree.copy_global_to(guild=guild)
        await self.tree.sync(guild=guild)  # here, once per start: never in on_ready
        if self.on_setup:
            self.on_setup(self)

    async def before_identify_hook(self, shard_id, *, initial: bool = False) -> None:
        pass  # discord.py sleeps 5 s before every non-first IDENTIFY

    async def on_ready(self) -> None:
        self.events.append("ready")

    async def on_resumed(self) -> None:
        self.events.append("resumed")

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        self.interactions.append(interaction)

    async def on_message(self, message: discord.Message) -> None:
        self.seen.append(message)
        await self.process_commands(message)

    async def on_command_error(self, ctx: commands.Context, error: Exception) -> None:
        await ctx.send(f"denied: {type(error).__name__}")


class BotThread:
    """One bot object on its own loop in a thread; ``error`` is what ``start()`` raised."""

    def __init__(self, token: str = TOKEN, **options):
        self.token, self.options = token, options
        self.bot: SimBot | None = None
        self.error: Exception | None = None
        self.done = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()),
                                        name="sim-bot", daemon=True)
        self._thread.start()
        eventually(lambda: self.bot is not None, what="bot object")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.bot = SimBot(**self.options)
        try:
            async with self.bot:
                await self.bot.start(self.token)
        except Exception as exc:  # noqa: BLE001 - what start() raised is the observation
            self.error = exc
        finally:
            self.done.set()

    def finished(self, timeout: float = 5.0) -> Exception | None:
        assert self.done.wait(timeout), "the bot is still running"
        return self.error

    def stop(self) -> None:
        if not self.done.is_set():
            asyncio.run_coroutine_threadsafe(self.bot.close(), self._loop).result(10)
        self._thread.join(10)
        assert not self._thread.is_alive()


class Platform(SimDiscordThread):
    """The simulator plus the bots a test started (stopped with it)."""

    def __init__(self, **options):
        super().__init__(**options)
        self.bots: list[BotThread] = []


@pytest.fixture
def platform():
    """A started simulator with a guild (two channels, roles, alice and bob) and this
    process's discord.py pointed at it; afterwards nothing may be left running."""
    before = set(threading.enumerate())
    sim = Platform(token=TOKEN, heartbeat_interval_ms=200)
    sim.start()
    try:
        sim.add_role(OPERATOR, "operator")
        sim.add_role(VIEWER, "viewer")
        sim.add_channel(CHANNEL, "ops")
        sim.add_channel(OTHER_CHANNEL, "other")
        sim.add_member(ALICE, "alice", roles=[OPERATOR])
        sim.add_member(BOB, "bob", roles=[VIEWER])
        with redirect_discord_py(sim.api_base, sim.gateway_url):
            yield sim
        records = sim.records()
        assert records["server_errors"] == [] and records["unhandled"] == []
    finally:
        for bot in sim.bots:
            bot.stop()
        sim.stop()
    eventually(lambda: set(threading.enumerate()) <= before, what="threads to end")


def start_bot(sim: Platform, count: int = 1, **options) -> SimBot:
    """Start a bot and wait until the platform sent its ``count``-th READY in all."""
    runner = BotThread(**options)
    sim.bots.append(runner)
    sim.wait_ready(count=count)
    eventually(lambda: "ready" in runner.bot.events, what="on_ready")
    return runner.bot


def posted(sim: Platform, content: str, channel: int = CHANNEL, after=None) -> dict:
    return sim.wait_post(channel, lambda m: m["content"] == content, after=after)


# -- tests ----------------------------------------------------------------------------------
def test_login_ready_guild_members_roles_and_prefix_commands(platform):
    bot = start_bot(platform)
    records = platform.records()
    assert records["ready_count"] == 1 and records["connections"] == 1
    assert records["identifies"][0]["intents"] & (1 << 15)  # message_content was identified
    assert ("GET", "/users/@me", 200) in records["requests"]
    assert bot.get_guild(GUILD_ID).get_channel(CHANNEL).name == "ops"

    asked = platform.message(CHANNEL, ALICE, "!ping")
    reply = posted(platform, "pong")
    assert reply["message_reference"]["message_id"] == asked["id"] and reply["type"] == 19
    # Discord echoes the bot's own post as MESSAGE_CREATE (author bot: true)
    eventually(lambda: any(m.author.bot and m.content == "pong" for m in bot.seen))

    # the member's roles reach the check; bob lacks the role
    platform.message(CHANNEL, ALICE, "!roles")
    posted(platform, "Sim Guild: ['operator']")
    platform.message(CHANNEL, BOB, "!roles")
    posted(platform, "denied: MissingRole")
    platform.set_roles(BOB, [OPERATOR, VIEWER])  # roles change at runtime: the next message
    platform.message(CHANNEL, BOB, "!roles")     # carries them
    posted(platform, "Sim Guild: ['operator', 'viewer']")


def test_without_the_message_content_intent_content_is_blank_unless_mentioned(platform):
    bot = start_bot(platform, content=False)
    platform.message(CHANNEL, ALICE, "!ping")
    platform.message(CHANNEL, ALICE, f"<@{APP_ID}> hello")
    eventually(lambda: len([m for m in bot.seen if not m.author.bot]) == 2)
    assert [m.content for m in bot.seen] == ["", f"<@{APP_ID}> hello"]
    assert platform.posts(CHANNEL) == []  # "!ping" never reached the command


def test_slash_commands_synced_once_in_setup_hook_and_invoked(platform):
    start_bot(platform)
    syncs = platform.records()["syncs"]
    assert len(syncs) == 1 and syncs[0]["scope"] == "guild"
    assert syncs[0]["readies_before"] == 0  # before its IDENTIFY
    assert set(syncs[0]["names"]) == {"tools", "hello", "slow", "late"}

    iid = platform.slash(CHANNEL, ALICE, "hello", {"who": BOB})
    response = platform.wait_response(iid)
    assert response["kind"] == "callback" and response["type"] == 4
    assert response["content"] == "hello bob ['viewer'] from alice"
    assert not response["ephemeral"]
    assert posted(platform, response["content"])["interaction_metadata"]["id"] == iid

    iid = platform.slash(CHANNEL, ALICE, "tools echo", {"text": "hi", "times": 3})
    assert platform.wait_response(iid)["content"] == "hi hi hi"
    with pytest.raises(LookupError):
        platform.slash(CHANNEL, ALICE, "nope")
    with pytest.raises(ValueError):
        platform.slash(CHANNEL, ALICE, "tools echo", {"times": 2})  # text is required

    # a RESUME and a fresh IDENTIFY (op 9) fire no new sync: it lives in setup_hook
    platform.close_gateway(4000)
    platform.wait_until(lambda: platform.sim.resumes)
    platform.invalidate_sessions()
    platform.wait_ready(count=2)
    assert len(platform.records()["syncs"]) == 1


def test_defer_then_followup_fills_the_thinking_message(platform):
    start_bot(platform)
    iid = platform.slash(CHANNEL, ALICE, "slow")
    deferred = platform.wait_response(iid)
    assert deferred["type"] == 5 and deferred["ephemeral"]
    followup = platform.wait_response(iid, lambda r: r["kind"] == "followup")
    assert followup["content"] == "done" and followup["ephemeral"]  # the defer decides
    assert followup["message"]["id"] == deferred["message"]["id"]
    assert platform.posts(CHANNEL) == []  # ephemeral: nobody else sees it


def test_interaction_rules_one_response_within_the_deadline(platform):
    platform.configure(response_deadline_s=0.2)
    bot = start_bot(platform)
    iid = platform.slash(CHANNEL, ALICE, "late")
    eventually(lambda: bot.errors, what="the late response to fail")
    assert isinstance(bot.errors[0], discord.NotFound) and bot.errors[0].code == 10062

    iid = platform.slash(CHANNEL, ALICE, "tools echo", {"text": "x"})
    platform.wait_response(iid)
    # a second bot instance answering the same interaction gets Discord's 40060
    token = next(i.token for i in bot.interactions if str(i.id) == iid)
    request = urllib.request.Request(
        f"{platform.api_base}/api/v10/interactions/{iid}/{token}/callback",
        data=json.dumps({"type": 4, "data": {"content": "again"}}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    status, error = refused(request)
    assert status == 400 and error["code"] == 40060
    errors = platform.records()["interaction_errors"]
    assert [e["code"] for e in errors] == [10062, 40060]


def test_persistent_view_button_select_and_modal_across_a_restart(platform):
    start_bot(platform)
    platform.message(CHANNEL, ALICE, "!panel")
    panel = posted(platform, "The panel")
    iid = platform.click(panel, ALICE, "panel:go")
    went = platform.wait_response(iid)
    assert went["content"] == "went ['operator']" and went["ephemeral"]

    platform.bots[0].stop()  # a new bot object (as after a crash): add_view in its setup_hook
    start_bot(platform, count=2)  # matches the old message by custom_id
    iid = platform.click(panel, BOB, "panel:go")
    assert platform.wait_response(iid)["content"] == "went ['viewer']"

    iid = platform.select(panel, ALICE, "panel:pick", ["c", "a"])
    assert platform.wait_response(iid)["content"] == "picked ['a', 'c']"
    with pytest.raises(ValueError):
        platform.select(panel, ALICE, "panel:pick", ["z"])

    iid = platform.click(panel, ALICE, "panel:form")
    opened = platform.wait_response(iid)
    assert opened["type"] == 9 and opened["modal"]["custom_id"] == "panel:form-modal"
    iid = platform.submit_modal(CHANNEL, ALICE, "panel:form-modal", {"note": "remember"})
    assert platform.wait_response(iid)["content"] == "noted remember"
    with pytest.raises(LookupError):  # submitted once; a modal is not open twice
        platform.submit_modal(CHANNEL, ALICE, "panel:form-modal", {"note": "again"})


def test_a_burst_over_the_channel_limit_is_paced_or_retried_and_all_posts_arrive(platform):
    platform.configure(rate_limit=(5, 1.0))
    start_bot(platform)
    # with the bucket headers discord.py paces itself: no 429
    platform.message(CHANNEL, ALICE, "!burst")
    platform.wait_until(lambda: len(platform.sim.posts(CHANNEL)) == 6)
    assert platform.records()["rate_limited"] == 0
    # without them (a bucket discord.py cannot see) it learns from 429 + retry_after
    platform.configure(rate_limit_headers=False)
    platform.message(OTHER_CHANNEL, ALICE, "!burst")
    platform.wait_until(lambda: len(platform.sim.posts(OTHER_CHANNEL)) == 6)
    assert platform.records()["rate_limited"] >= 1
    contents = sorted(m["content"] for m in platform.posts(OTHER_CHANNEL))
    assert contents == [f"burst {i}" for i in range(6)]


def test_close_4000_op_7_and_a_zombie_socket_resume_and_replay_missed_events(platform):
    bot = start_bot(platform, heartbeat_timeout=0.6)

    def resumed(count: int):
        platform.wait_until(lambda: [r["result"] for r in platform.sim.resumes].count(
            "resumed") == count)
    assert platform.close_gateway(4000) == 1
    resumed(1)
    eventually(lambda: "resumed" in bot.events)
    records = platform.records()
    assert records["ready_count"] == 1 and records["resumes"][0]["path"] == "/gateway/resume"
    assert platform.reconnect() == 1  # op 7
    resumed(2)

    platform.silence_heartbeats()      # no ACK, no dispatch: the message waits for RESUME
    asked = platform.message(CHANNEL, ALICE, "!ping")
    posted(platform, "pong", after=asked["id"])
    resumes = platform.records()["resumes"]
    assert len(resumes) == 3 and resumes[-1]["replayed"] >= 1
    assert platform.records()["ready_count"] == 1  # no new IDENTIFY


def test_a_revoked_token_closes_4004_and_start_raises(platform):
    runner = BotThread()
    platform.bots.append(runner)
    platform.wait_ready()
    platform.invalidate_token()
    error = runner.finished()
    assert isinstance(error, discord.ConnectionClosed) and error.code == 4004
    assert platform.records()["ready_count"] == 1  # discord.py does not retry it
    request = urllib.request.Request(f"{platform.api_base}/api/v10/users/@me",
                                     headers={"Authorization": f"Bot {TOKEN}"})
    assert refused(request) == (401, {"message": "401: Unauthorized", "code": 0})

    # revoked between login and IDENTIFY: the IDENTIFY is answered with close 4004
    platform.configure(token=TOKEN)
    runner = BotThread(on_setup=lambda bot: platform.invalidate_token())
    platform.bots.append(runner)
    error = runner.finished()
    assert isinstance(error, discord.ConnectionClosed) and error.code == 4004
    assert platform.records()["identifies"][-1]["result"] == 4004


def test_a_wrong_token_is_a_login_failure(platform):
    runner = BotThread(token="not-the-token")
    platform.bots.append(runner)
    assert isinstance(runner.finished(), discord.LoginFailure)
    assert platform.records()["connections"] == 0


def test_privileged_intents_not_allowed_close_4014(platform):
    platform.configure(allowed_intents=0)
    runner = BotThread()
    platform.bots.append(runner)
    assert isinstance(runner.finished(), discord.PrivilegedIntentsRequired)
    assert platform.records()["identifies"][0]["result"] == 4014
    runner = BotThread(content=False)  # without message_content it is allowed
    platform.bots.append(runner)
    platform.wait_ready()


def test_refused_first_connect_pins_what_discord_py_2_7_1_does(platform):
    # The whole platform down: start() fails at login with aiohttp's connection error.
    platform.refuse_connections = True
    runner = BotThread()
    platform.bots.append(runner)
    assert isinstance(runner.finished(), aiohttp.ClientConnectorError)

    # REST up, gateway refused at the very first connect: 2.7.1 backs off (0-2 s), then
    # crashes with AttributeError on ws.sequence (client.py:787) instead of retrying. A
    # service must restart the client itself.
    platform.refuse_connections = False
    runner = BotThread(on_setup=lambda bot: setattr(platform, "refuse_connections", True))
    platform.bots.append(runner)
    error = runner.finished(timeout=5)
    assert isinstance(error, AttributeError) and "sequence" in str(error)

    platform.refuse_connections = False  # back on the same port: a new bot object connects
    start_bot(platform)


def test_an_outage_after_ready_ends_in_a_resume_when_the_platform_returns(platform):
    bot = start_bot(platform)
    platform.refuse_connections = True
    eventually(lambda: platform.records()["live_connections"] == 0)
    time.sleep(0.05)  # let the immediate reconnect attempt be refused
    platform.refuse_connections = False
    platform.wait_until(lambda: any(r["result"] == "resumed" for r in platform.sim.resumes),
                        timeout=12)  # discord.py's backoff: 0-2 s, then 0-4 s
    assert platform.records()["ready_count"] == 1
    eventually(lambda: "resumed" in bot.events)
    platform.message(CHANNEL, ALICE, "!ping")
    posted(platform, "pong")


def test_async_api_and_zlib_stream_frames_on_one_loop():
    """SimDiscord used directly (bot and platform on one loop); discord.py asks for
    compress=zlib-stream and gets deflate frames."""
    async def scenario() -> None:
        async with SimDiscord(token=TOKEN) as sim:
            await sim.add_channel(CHANNEL, "ops")
            await sim.add_member(ALICE, "alice")
            with redirect_discord_py(sim.api_base, sim.gateway_url):
                bot = SimBot()
                async with bot:
                    task = asyncio.create_task(bot.start(TOKEN))
                    await sim.wait_ready()
                    assert [c.compress for c in sim.gateway.conns] == ["zlib-stream"]
                    await sim.message(CHANNEL, ALICE, "!ping")
                    assert (await sim.wait_post(CHANNEL))["content"] == "pong"
                    await bot.close()
                    await task
            assert sim.server_errors == [] and sim.unhandled == []
    asyncio.run(scenario())
