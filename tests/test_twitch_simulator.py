"""The simulated Twitch against the real twitchio 3.3.2 client: a bare ``commands.Bot`` and
the simulator on one loop (``asyncio.run`` per test), real sockets on 127.0.0.1.

Besides proving the simulator, these tests pin what twitchio does, for the service's author:
the startup sequence; ``ctx.reply``/``ctx.send`` use the *app* token, ``send_message(...,
token_for=bot_id)`` the bot's user token; a 401 ``invalid access token`` refreshes the token
and retries; twitchio checks the 500-character limit on the collapsed text but sends the
raw text; a ``drop_reason`` raises ``MessageRejectedError`` (wrapped in
``CommandInvokeError`` inside a command); redelivered notifications run a command twice (no
``message_id`` deduplication); the bot's own lines and shared-chat lines reach
``event_message`` and ``commands.Bot`` ignores them; a dropped socket or silent keepalives
make a new session and a resubscription; ``session_reconnect`` moves without one; close
4003 ends the socket for good.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import twitchio
from twitchio import eventsub
from twitchio.ext import commands

from actors.twitch.simulator import (
    BOT_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    OWNER_ID,
    SimTwitch,
    SimTwitchThread,
    redirect_twitchio,
)


class Greeter(commands.Component):
    def __init__(self, bot: Bot):
        self.bot = bot

    @commands.command()
    async def hello(self, ctx: commands.Context) -> None:
        self.bot.results.append(await ctx.reply(f"hello {ctx.chatter.name}"))

    @commands.command()
    async def say(self, ctx: commands.Context, *, text: str) -> None:
        """Sends with the bot's user token, the way Twitch recommends for chat bots."""
        self.bot.results.append(await ctx.broadcaster.send_message(
            text, sender=self.bot.bot_id, token_for=self.bot.bot_id))


class Bot(commands.Bot):
    """A bare twitchio 3 bot as PLATFORMS.md describes: the user token added in setup_hook,
    chat subscribed there. Records what happens for the assertions."""

    def __init__(self, sim: SimTwitch):
        super().__init__(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, bot_id=BOT_ID,
                         owner_id=OWNER_ID, prefix="!")
        self.sim = sim
        self.results: list[twitchio.models.SentMessage] = []
        self.errors: list[BaseException] = []
        self.seen: list[twitchio.ChatMessage] = []
        self.refreshed: list[str] = []
        self.closed_sockets: list[str] = []

    async def setup_hook(self) -> None:
        await self.add_token(self.sim.bot_token, self.sim.bot_refresh)
        await self.subscribe_websocket(eventsub.ChatMessageSubscription(
            broadcaster_user_id=OWNER_ID, user_id=BOT_ID))
        await self.add_component(Greeter(self))

    async def event_message(self, payload: twitchio.ChatMessage) -> None:
        self.seen.append(payload)
        await super().event_message(payload)

    async def event_command_error(self, payload: commands.CommandErrorPayload) -> None:
        self.errors.append(payload.exception)

    async def event_token_refreshed(self, payload: twitchio.TokenRefreshedPayload) -> None:
        self.refreshed.append(payload.user_id)

    async def event_websocket_closed(self, payload: object) -> None:
        self.closed_sockets.append(str(payload.socket.session_id))


@contextlib.asynccontextmanager
async def running_bot(sim: SimTwitch) -> AsyncIterator[Bot]:
    """A started, subscribed bot; closed (and its task awaited) on exit."""
    bot = Bot(sim)
    task = asyncio.create_task(
        bot.start(with_adapter=False, load_tokens=False, save_tokens=False))
    try:
        await sim.wait_subscribed()
        yield bot
    finally:
        await bot.close()
        await asyncio.wait_for(task, 5)


def scenario(test: Callable[[SimTwitch], Awaitable[None]], **options: object) -> None:
    """Run ``test(sim)`` with a started simulator that twitchio is pointed at; then check
    the simulator saw no route it lacks and raised nothing."""
    async def run() -> None:
        async with SimTwitch(**options) as sim:
            with redirect_twitchio(sim.api_base, sim.ws_url):
                await test(sim)
            assert sim.unhandled == [] and sim.server_errors == []
    asyncio.run(run())


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait for state the bot holds (the simulator's own waits cover its state)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def command(sim: SimTwitch, bot: Bot, text: str, login: str = "alice") -> str:
    """A viewer runs a command; wait until the bot's handler finished (result or error)."""
    done = len(bot.results) + len(bot.errors)
    message_id = await sim.chat(login, text, badges=["subscriber"])
    await until(lambda: len(bot.results) + len(bot.errors) > done)
    return message_id


def test_startup_sequence_then_a_command_is_answered_with_the_app_token(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    async def test(sim: SimTwitch) -> None:
        async with running_bot(sim) as bot:
            message_id = await command(sim, bot, "!hello")
            reply = sim.sent[-1]
            assert reply["text"] == "hello alice" and reply["reply_to"] == message_id
            assert reply["auth"] == "app" and reply["is_sent"]
            assert bot.results[-1].id == reply["message_id"]
            # Twitch delivers the bot's own line too; commands.Bot ignores it
            await until(lambda: any(m.chatter.id == BOT_ID for m in bot.seen))
        assert sim.requests[:6] == [
            ("POST", "/oauth2/token", 200), ("GET", "/oauth2/validate", 200),
            ("GET", "/helix/users", 200), ("GET", "/helix/users", 200),
            ("GET", "/oauth2/validate", 200), ("POST", "/helix/eventsub/subscriptions", 202)]
        [subscription] = sim.records()["subscriptions"]
        assert subscription["type"] == "channel.chat.message"
        assert subscription["condition"] == {"broadcaster_user_id": OWNER_ID, "user_id": BOT_ID}
        assert sim.subscription_requests[0]["auth"] == "user"
        assert sim.eventsub.closes == [] and sim.eventsub.connections == 1
    scenario(test)
    assert not (tmp_path / ".tio.tokens.json").exists()


def test_an_expired_user_token_is_refreshed_and_chat_continues():
    async def test(sim: SimTwitch) -> None:
        async with running_bot(sim) as bot:
            old_token = sim.bot_token
            assert sim.expire_user_token() == 1
            await command(sim, bot, "!say still here")
            assert bot.errors == [] and sim.sent[-1]["text"] == "still here"
            assert sim.sent[-1]["auth"] == "user"
            assert [r["user_id"] for r in sim.state.refreshes] == [BOT_ID]
            await until(lambda: bot.refreshed == [BOT_ID])
            assert ("POST", "/helix/chat/messages", 401) in sim.requests
            assert sim.state.authenticate(f"Bearer {old_token}") is None
    scenario(test)


def test_an_expired_app_token_is_replaced_by_a_new_client_credentials_grant():
    async def test(sim: SimTwitch) -> None:
        async with running_bot(sim) as bot:
            sim.expire_app_tokens()
            await command(sim, bot, "!hello")
            assert bot.errors == [] and sim.sent[-1]["text"] == "hello alice"
            assert [r for r in sim.requests if r[1] == "/oauth2/token"] == [
                ("POST", "/oauth2/token", 200)] * 2
            assert sim.state.refreshes == []
    scenario(test)


@pytest.mark.parametrize("code", [None, 4000])
def test_a_dropped_socket_reconnects_and_resubscribes(code):
    async def test(sim: SimTwitch) -> None:
        async with running_bot(sim) as bot:
            [first] = sim.enabled_subscriptions()
            assert await sim.drop_sockets(code) == 1
            await sim.wait_until(lambda: len(sim.subscription_requests) == 2
                                 and sim.enabled_subscriptions())
            [again] = sim.enabled_subscriptions()
            assert again["transport"]["session_id"] != first["transport"]["session_id"]
            assert sim.eventsub.connections == 2
            await command(sim, bot, "!hello")
            assert sim.sent[-1]["text"] == "hello alice"
    scenario(test)


def test_silent_keepalives_make_twitchio_reconnect_and_resubscribe():
    async def test(sim: SimTwitch) -> None:
        async with running_bot(sim) as bot:
            started = time.monotonic()
            sim.silence_keepalives()
            # twitchio checks every keepalive_timeout (10 s) for silence longer than 15 s
            await sim.wait_until(lambda: len(sim.subscription_requests) == 2
                                 and sim.enabled_subscriptions(), timeout=30)
            assert 15 <= time.monotonic() - started <= 25
            assert len(sim.enabled_subscriptions()) == 1
            await command(sim, bot, "!hello")
            assert sim.sent[-1]["text"] == "hello alice"
    scenario(test)


def test_session_reconnect_moves_the_subscription_without_resubscribing():
    async def test(sim: SimTwitch) -> None:
        async with running_bot(sim) as bot:
            [old] = sim.eventsub.sessions
            assert await sim.send_reconnect() == 1
            await sim.wait_until(lambda: old not in sim.eventsub.sessions
                                 and len(sim.eventsub.sessions) == 1)
            [new] = sim.eventsub.sessions
            [subscription] = sim.enabled_subscriptions()
            assert subscription["transport"]["session_id"] == new
            assert len(sim.subscription_requests) == 1 and sim.eventsub.closes == []
            seen = len(bot.seen)
            await command(sim, bot, "!hello")
            assert sim.sent[-1]["text"] == "hello alice"
            assert len([m for m in bot.seen[seen:] if m.chatter.id != BOT_ID]) == 1
    scenario(test)


def test_a_drop_reason_raises_message_rejected_error():
    async def test(sim: SimTwitch) -> None:
        async with running_bot(sim) as bot:
            sim.drop_next("msg_ratelimit")
            await command(sim, bot, "!hello")
            [error] = bot.errors
            assert isinstance(error, commands.CommandInvokeError)
            assert isinstance(error.original, twitchio.MessageRejectedError)
            assert error.original.code == "msg_ratelimit"
            assert sim.sent[-1]["drop_reason"] == "msg_ratelimit"
            # Twitch's own rule: the same text again within 30 s is dropped
            await command(sim, bot, "!say same words")
            await command(sim, bot, "!say same   words")
            assert bot.errors[-1].original.code == "msg_duplicate"
            assert [m["is_sent"] for m in sim.sent[-2:]] == [True, False]
    scenario(test)


def test_twitchio_measures_collapsed_text_but_sends_it_raw():
    async def test(sim: SimTwitch) -> None:
        async with running_bot(sim) as bot:
            channel = bot.create_partialuser(OWNER_ID)
            with pytest.raises(ValueError, match="500"):
                await channel.send_message("x" * 501, sender=BOT_ID)
            assert sim.sent == []
            spaced = "a" + " " * 600 + "b"  # 3 characters for twitchio, 602 for Twitch
            with pytest.raises(twitchio.HTTPException) as refused:
                await channel.send_message(spaced, sender=BOT_ID)
            assert refused.value.status == 400 and sim.sent == []
    scenario(test)


def test_redelivered_and_shared_chat_notifications():
    async def test(sim: SimTwitch) -> None:
        sim.add_user("partner")
        async with running_bot(sim) as bot:
            shared = await sim.chat("bob", "!hello", shared_from="partner")
            message_id = await command(sim, bot, "!hello")
            assert [m["reply_to"] for m in sim.sent] == [message_id]
            assert any(m.id == shared and m.source_broadcaster.name == "partner"
                       for m in bot.seen)
            assert await sim.redeliver(message_id) == 1
            await until(lambda: len(bot.results) + len(bot.errors) == 2)
            # the command ran again: its identical reply is Twitch's msg_duplicate
            assert [(m["reply_to"], m["drop_reason"]) for m in sim.sent] == [
                (message_id, None), (message_id, "msg_duplicate")]
            assert "msg_duplicate" in str(bot.errors[0])
    scenario(test)


def test_close_4003_is_final_for_twitchio():
    async def test(sim: SimTwitch) -> None:
        async with running_bot(sim) as bot:
            await sim.drop_sockets(4003)
            await until(lambda: bot.closed_sockets)
            await asyncio.sleep(0.3)  # a reconnect would have started by now
            assert sim.eventsub.connections == 1 and not sim.enabled_subscriptions()
    scenario(test)


def test_a_socket_without_subscription_is_closed_with_4003():
    async def test(sim: SimTwitch) -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(
                sim.ws_url + "?keepalive_timeout_seconds=3") as ws:
            welcome = json.loads((await ws.receive()).data)
            assert welcome["metadata"]["message_type"] == "session_welcome"
            assert welcome["payload"]["session"]["keepalive_timeout_seconds"] == 10
            closing = await ws.receive()
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4003
    scenario(test, subscribe_window_s=0.2)


def test_the_platform_rate_limit_drops_the_excess():
    async def test(sim: SimTwitch) -> None:
        async with running_bot(sim) as bot:
            for n in range(4):
                await command(sim, bot, f"!say line {n}")
            assert [m["drop_reason"] for m in sim.sent] == [None, None, None, "msg_ratelimit"]
            assert sim.max_sent_in_window() == 3
            sim.set_moderator(BOT_ID)  # a moderator bot gets the higher limit
            await command(sim, bot, "!say line 4")
            assert sim.sent[-1]["is_sent"] and sim.max_sent_in_window() == 4
    scenario(test, enforce_rate_limit=True, rate_limit=(3, 30.0),
             moderator_rate_limit=(5, 30.0))


def test_rejected_credentials_and_a_revoked_user_token_fail_the_start():
    async def test(sim: SimTwitch) -> None:
        sim.reject_credentials()
        with pytest.raises(twitchio.HTTPException) as rejected:
            await Bot(sim).start(with_adapter=False, load_tokens=False, save_tokens=False)
        assert rejected.value.status == 403
        sim.reject_credentials(False)
        sim.revoke_user_token()
        with pytest.raises(twitchio.InvalidTokenException):
            await Bot(sim).start(with_adapter=False, load_tokens=False, save_tokens=False)
        assert ("GET", "/oauth2/validate", 401) in sim.requests
        assert ("POST", "/oauth2/token", 400) in sim.requests  # the refresh attempt
    scenario(test)


def test_refused_connections_then_listening_again():
    async def test(sim: SimTwitch) -> None:
        await sim.set_refuse_connections(True)
        assert sim.refuse_connections
        with pytest.raises(aiohttp.ClientConnectorError):
            await Bot(sim).start(with_adapter=False, load_tokens=False, save_tokens=False)
        await sim.set_refuse_connections(False)
        async with running_bot(sim) as bot:
            await command(sim, bot, "!hello")
    scenario(test)


def test_the_thread_facade_serves_a_bot_on_another_loop():
    with SimTwitchThread() as sim:
        async def bot_side() -> None:
            with redirect_twitchio(sim.api_base, sim.ws_url):
                bot = Bot(sim)  # reads only bot_token and bot_refresh from it
                task = asyncio.create_task(
                    bot.start(with_adapter=False, load_tokens=False, save_tokens=False))
                await asyncio.to_thread(sim.wait_subscribed)
                await asyncio.to_thread(sim.chat, "carol", "!hello", ["vip"])
                await until(lambda: bot.results)
                await bot.close()
                await asyncio.wait_for(task, 5)
        asyncio.run(bot_side())
        assert sim.wait_sent(lambda m: m["text"] == "hello carol")["is_sent"]
        sim.drop_next("msg_duplicate")
        assert sim.call(lambda s: len(s.state.forced_drops)) == 1
        assert sim.records()["server_errors"] == []
