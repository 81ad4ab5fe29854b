"""A simulated Twitch: the OAuth, Helix and EventSub websocket parts that a twitchio 3.3.2
``commands.Bot`` uses, served by aiohttp on 127.0.0.1 over real sockets, so the real client
is tested end to end. Viewers chat with chosen badges; every message the bot sends is
recorded with its time and judged by Twitch's rules (duplicates, length, optionally the rate
limit). Knobs break the platform on purpose: expired or revoked tokens, rejected
credentials, forced drop reasons, silent keepalives, dropped sockets, ``session_reconnect``,
refused connections. Protocol facts: /work/shared/PLATFORMS.md.

Synchronous use (a test, or the ``swarm demo`` harness; the bot may run in another process)::

    from actors.twitch.simulator import SimTwitchThread

    with SimTwitchThread() as sim:
        # the bot: twitchio.http.Route.BASE = sim.api_base + "/helix/",
        #   Route.ID_BASE = sim.api_base + "/", twitchio.eventsub.websockets.WSS = sim.ws_url
        #   (in-process: ``with redirect_twitchio(sim.api_base, sim.ws_url):``), then
        #   Bot(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, bot_id=BOT_ID,
        #       owner_id=OWNER_ID) with add_token(sim.bot_token, sim.bot_refresh)
        sim.wait_subscribed()
        sim.chat("alice", "!hello", badges=["subscriber"])
        print(sim.wait_sent(lambda m: "alice" in m["text"])["text"])

:class:`SimTwitch` is the same API as coroutines (``async with SimTwitch() as sim: ...``).
Records are plain dicts; whatever a method returns is a copy. Routes the simulator does not
implement answer 404 and are listed in ``unhandled``; an exception inside it answers 500 and
is listed in ``server_errors`` (a test should assert both are empty).
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self, TypeVar

from aiohttp import web

from actors.twitch.sim_eventsub import WS_PATH, EventSub
from actors.twitch.sim_model import (
    BOT_ID,
    BOT_LOGIN,
    CLIENT_ID,
    CLIENT_SECRET,
    DROP_MESSAGES,
    OWNER_ID,
    OWNER_LOGIN,
    PlatformState,
    new_message_id,
)
from actors.twitch.sim_rest import RestApi

__all__ = ["BOT_ID", "CLIENT_ID", "CLIENT_SECRET", "OWNER_ID", "SimTwitch", "SimTwitchThread",
           "redirect_twitchio"]
T = TypeVar("T")


class SimTwitch(RestApi):
    """The simulated platform on the running asyncio loop (see the module docstring).
    ``state`` holds Twitch's data, ``eventsub`` the websocket sessions.

    Knobs you may set at any time: ``keepalive_every_s`` (None: half the keepalive timeout),
    ``subscribe_window_s`` (None: the keepalive timeout; then 4003), ``reconnect_grace_s``,
    ``user_token_expires_in`` (what validate answers; <= 3600 makes twitchio refresh at
    once), ``enforce_rate_limit`` with ``rate_limit`` / ``moderator_rate_limit`` ((messages,
    seconds) per channel), ``echo_own_messages`` (Twitch delivers the bot's own lines).
    """

    def __init__(self, *, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET,
                 bot_id: str = BOT_ID, bot_login: str = BOT_LOGIN, owner_id: str = OWNER_ID,
                 owner_login: str = OWNER_LOGIN, host: str = "127.0.0.1", port: int = 0,
                 keepalive_every_s: float | None = None, subscribe_window_s: float | None = None,
                 reconnect_grace_s: float = 30.0, user_token_expires_in: int = 14_400,
                 enforce_rate_limit: bool = False, rate_limit: tuple[int, float] = (20, 30.0),
                 moderator_rate_limit: tuple[int, float] = (100, 30.0),
                 echo_own_messages: bool = True):
        self.state = PlatformState(client_id=client_id, client_secret=client_secret,
                                   bot_id=bot_id, bot_login=bot_login, owner_id=owner_id,
                                   owner_login=owner_login)
        token = self.state.issue_user_token(bot_id)
        self.bot_token, self.bot_refresh = token.access, token.refresh
        self.host, self.port = host, port
        self.keepalive_every_s, self.subscribe_window_s = keepalive_every_s, subscribe_window_s
        self.reconnect_grace_s = reconnect_grace_s
        self.user_token_expires_in = user_token_expires_in
        self.enforce_rate_limit = enforce_rate_limit
        self.rate_limit, self.moderator_rate_limit = rate_limit, moderator_rate_limit
        self.echo_own_messages = echo_own_messages
        self.api_base = self.ws_url = ""
        # Records (read them; tests and the harness assert on them).
        self.requests: list[tuple[str, str, int]] = []   # (method, path, status), REST only
        self.subscription_requests: list[dict] = []      # every POST eventsub/subscriptions
        self.notifications: dict[str, tuple[str, dict]] = {}  # message id -> (type, event)
        self.received: set[str] = set()  # message ids a live EventSub session was sent
        self.unhandled: list[tuple[str, str]] = []
        self.server_errors: list[str] = []
        self.eventsub = EventSub(self)
        self._change = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get(WS_PATH, self.eventsub.handle)
        for method, path, handler in self._routes():
            app.router.add_route(method, path, handler)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0,
                                     access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port)
        await self._site.start()
        self.port = self._runner.addresses[0][1]  # port 0 picked a free one: keep it
        self.api_base = f"http://{self.host}:{self.port}"
        self.ws_url = f"ws://{self.host}:{self.port}{WS_PATH}"

    async def stop(self) -> None:
        """Close every EventSub socket (1001) and HTTP connection, then the listener."""
        if self._runner is None:
            return
        await self.eventsub.close_all(1001)
        await self._runner.cleanup()
        self._runner = self._site = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what viewers do ---------------------------------------------------------------------
    def add_user(self, login: str, user_id: str | None = None) -> dict:
        return copy.deepcopy(self.state.add_user(login, user_id))

    async def chat(self, login: str, text: str, badges: Sequence[str | dict] = (),
                   user_id: str | None = None, *, channel: str | None = None,
                   reply_to: str | None = None, shared_from: str | None = None) -> str:
        """``login`` (added if new) types ``text`` in ``channel`` (id or login; default the
        owner's) with ``badges`` (set ids such as "moderator", "vip", "subscriber"). A
        ``channel.chat.message`` notification goes to every enabled subscription for the
        channel. ``reply_to``: a message id it answers; ``shared_from``: a shared-chat
        partner channel (id or login) it came from. Returns the message id."""
        chatter = self.state.add_user(login, user_id)
        room = self.state.user(channel or self.state.owner_id)
        if room is None:
            raise LookupError(f"unknown channel {channel!r}: add_user first")
        partner = self.state.user(shared_from) if shared_from else None
        parent = self.notifications.get(reply_to, (None, None))[1] if reply_to else None
        message_id = new_message_id()
        event = self.state.chat_event(room["id"], chatter["id"], text, badges, message_id,
                                      reply_to=parent, shared_from=partner and partner["id"])
        await self._deliver("channel.chat.message", event, message_id)
        return message_id

    async def redeliver(self, message_id: str) -> int:
        """Send a notification again with the same message id, as Twitch does when unsure
        it arrived (at-least-once delivery). How many sessions got it."""
        kind, event = self.notifications[message_id]
        return await self._deliver(kind, event, message_id)

    async def echo(self, record: dict) -> None:
        """Twitch delivers the bot's own accepted messages like anyone's."""
        if self.echo_own_messages:
            badges = ["moderator"] if self.state.is_moderator(
                record["channel"], record["sender_id"]) and record["channel"] != record[
                "sender_id"] else []
            event = self.state.chat_event(record["channel"], record["sender_id"],
                                          record["text"], badges, record["message_id"])
            await self._deliver("channel.chat.message", event, record["message_id"])

    async def _deliver(self, kind: str, event: dict, message_id: str) -> int:
        self.notifications[message_id] = (kind, event)
        delivered = 0
        for subscription in list(self.state.subscriptions.values()):
            if (subscription.type == kind and subscription.status == "enabled"
                    and subscription.condition["broadcaster_user_id"]
                    == event["broadcaster_user_id"]):
                delivered += await self.eventsub.notify(
                    subscription.session_id, self._subscription_json(subscription), event,
                    message_id)
        if delivered:
            self.received.add(message_id)
        return delivered

    # -- knobs -------------------------------------------------------------------------------
    def expire_user_token(self, user_id: str | None = None) -> int:
        """The user's (default: the bot's) access tokens expire; refreshing works."""
        return self.state.expire_user_tokens(user_id or self.state.bot_id)

    def revoke_user_token(self, user_id: str | None = None) -> int:
        """The user disconnected the app: access and refresh tokens stop working."""
        return self.state.revoke_user(user_id or self.state.bot_id)

    def expire_app_tokens(self) -> int:
        return self.state.expire_app_tokens()

    def reject_credentials(self, rejected: bool = True) -> None:
        """The app's credentials are wrong (a rotated secret): client_credentials answers
        403, validate and every Helix call 401, refresh 400. False undoes it."""
        self.state.credentials_rejected = rejected

    def drop_next(self, code: str = "msg_ratelimit", count: int = 1,
                  message: str | None = None) -> None:
        """The next ``count`` chat messages come back with ``drop_reason`` ``code``."""
        for _ in range(count):
            self.state.forced_drops.append((code, message or DROP_MESSAGES.get(
                code, "The message was dropped.")))

    def set_moderator(self, user_id: str, moderator: bool = True,
                      channel: str | None = None) -> None:
        """Make ``user_id`` (e.g. the bot) a moderator in ``channel`` (default: the owner's);
        a moderator bot gets the higher rate limit."""
        room = channel or self.state.owner_id
        mods = self.state.moderators.setdefault(room, set())
        (mods.add if moderator else mods.discard)(str(user_id))

    def silence_keepalives(self) -> int:
        """No more keepalives on the current sessions: the client should reconnect."""
        return self.eventsub.silence()

    async def drop_sockets(self, code: int | None = None) -> int:
        """Close every EventSub socket with a close code, or (None) cut it dead."""
        return await self.eventsub.close_all(code)

    async def send_reconnect(self) -> int:
        """``session_reconnect`` on every session: the client should move without
        resubscribing."""
        return await self.eventsub.send_reconnect()

    @property
    def refuse_connections(self) -> bool:
        return self._runner is not None and self._site is None

    async def set_refuse_connections(self, refuse: bool) -> None:
        """Stop listening (connections are refused; open sockets are cut) or listen again
        on the same port."""
        if refuse and self._site is not None:
            await self.eventsub.close_all(None)
            await self._site.stop()
            self._site = None
        elif not refuse and self._site is None and self._runner is not None:
            self._site = web.TCPSite(self._runner, self.host, self.port)
            await self._site.start()

    # -- waiting and records -----------------------------------------------------------------
    def changed(self) -> None:
        self._change.set()

    async def wait_until(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        """Wait until ``predicate()`` is truthy (checked on every platform change)."""
        async with asyncio.timeout(timeout):
            while not (value := predicate()):
                self._change.clear()
                await self._change.wait()
        return value

    async def wait_sent(self, predicate: Callable[[dict], bool] | None = None,
                        timeout: float = 5.0, since: int = 0) -> dict:
        """The first chat message the bot sent (``sent`` record from index ``since``) that
        matches ``predicate``; dropped ones count too (check ``is_sent``)."""
        def found() -> dict | None:
            return next((m for m in self.state.sent[since:]
                         if predicate is None or predicate(m)), None)
        return copy.deepcopy(await self.wait_until(found, timeout))

    async def wait_subscribed(self, timeout: float = 5.0, count: int = 1) -> list[dict]:
        """Wait for at least ``count`` enabled subscriptions; returns them."""
        await self.wait_until(lambda: len(self.enabled_subscriptions()) >= count, timeout)
        return self.enabled_subscriptions()

    def enabled_subscriptions(self) -> list[dict]:
        return [self._subscription_json(s) for s in self.state.subscriptions.values()
                if s.status == "enabled"]

    @property
    def sent(self) -> list[dict]:
        return copy.deepcopy(self.state.sent)

    def max_sent_in_window(self, channel: str | None = None, window_s: float = 30.0) -> int:
        """The most accepted bot messages in ``channel`` (default: the owner's) in any
        ``window_s`` window, as the platform saw them."""
        room = self.state.user(channel or self.state.owner_id)
        return self.state.max_sent_in_window(room["id"], window_s)

    def records(self) -> dict[str, Any]:
        """A snapshot: sent, refreshes, subscriptions (all, with status),
        subscription_requests, sessions (live ids), connections, closes, requests,
        unhandled, server_errors."""
        return copy.deepcopy({
            "sent": self.state.sent, "refreshes": self.state.refreshes,
            "subscriptions": [self._subscription_json(s)
                              for s in self.state.subscriptions.values()],
            "subscription_requests": self.subscription_requests,
            "sessions": list(self.eventsub.sessions), "connections": self.eventsub.connections,
            "closes": self.eventsub.closes, "requests": self.requests,
            "unhandled": self.unhandled, "server_errors": self.server_errors})


class SimTwitchThread:
    """:class:`SimTwitch` on its own loop in a daemon thread, with the same methods as plain
    calls, for synchronous tests and the harness: ``with SimTwitchThread() as sim: ...``
    (``sim.sim`` is the asyncio object; touch it only through ``call``)."""

    def __init__(self, **options: Any):
        self._options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.sim: SimTwitch | None = None
        self.api_base = self.ws_url = self.bot_token = self.bot_refresh = ""

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sim-twitch",
                                        daemon=True)
        self._thread.start()

        async def create() -> SimTwitch:
            sim = SimTwitch(**self._options)
            await sim.start()
            return sim
        self.sim = self._run(create())
        self.api_base, self.ws_url = self.sim.api_base, self.sim.ws_url
        self.bot_token, self.bot_refresh = self.sim.bot_token, self.sim.bot_refresh

    def stop(self) -> None:
        if self._thread is None:
            return
        try:
            if self.sim is not None:
                self._run(self.sim.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
            self._thread = self._loop = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, coro: Any, timeout: float | None = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, fn: Callable[[SimTwitch], T]) -> T:
        """Run ``fn(sim)`` on the simulator's loop (to read or set anything safely)."""
        async def run() -> T:
            return fn(self.sim)
        return self._run(run())

    def chat(self, login: str, text: str, badges: Sequence[str | dict] = (),
             user_id: str | None = None, **options: Any) -> str:
        return self._run(self.sim.chat(login, text, badges, user_id, **options))

    def redeliver(self, message_id: str) -> int:
        return self._run(self.sim.redeliver(message_id))

    def reached(self, message_id: str) -> bool:
        """Whether a chat line went to a live EventSub session (one sent while the bot had
        none never does: Twitch does not deliver it later)."""
        return self.call(lambda s: message_id in s.received)

    def wait_until(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        """``predicate`` runs on the simulator's thread."""
        return self._run(self.sim.wait_until(predicate, timeout), timeout + 5)

    def wait_sent(self, predicate: Callable[[dict], bool] | None = None,
                  timeout: float = 5.0, since: int = 0) -> dict:
        return self._run(self.sim.wait_sent(predicate, timeout, since), timeout + 5)

    def wait_subscribed(self, timeout: float = 5.0, count: int = 1) -> list[dict]:
        return self._run(self.sim.wait_subscribed(timeout, count), timeout + 5)

    def records(self) -> dict[str, Any]:
        return self.call(lambda s: s.records())

    def max_sent_in_window(self, channel: str | None = None, window_s: float = 30.0) -> int:
        return self.call(lambda s: s.max_sent_in_window(channel, window_s))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        """The knobs (expire_user_token, drop_next, drop_sockets, send_reconnect,
        set_refuse_connections, ...) as plain calls on the simulator's loop."""
        if name.startswith("_") or self.sim is None or not callable(
                getattr(type(self.sim), name, None)):
            raise AttributeError(name)

        def knob(*args: Any, **kwargs: Any) -> Any:
            async def run() -> Any:
                result = getattr(self.sim, name)(*args, **kwargs)
                return await result if asyncio.iscoroutine(result) else result
            return self._run(run())
        return knob

    def configure(self, **knobs: Any) -> None:
        """Set knobs at runtime, e.g. ``configure(enforce_rate_limit=True)``."""
        def apply(sim: SimTwitch) -> None:
            for name, value in knobs.items():
                if not hasattr(sim, name) or callable(getattr(sim, name)):
                    raise AttributeError(f"SimTwitch has no knob {name!r}")
                setattr(sim, name, value)
        self.call(apply)


@contextlib.contextmanager
def redirect_twitchio(api_base: str, ws_url: str) -> Iterator[None]:
    """Point this process's twitchio at the simulator (Helix, OAuth and EventSub) for the
    block, then restore Twitch's. twitchio reads all three per request / per connect."""
    import twitchio.eventsub.websockets
    import twitchio.http
    route, websockets = twitchio.http.Route, twitchio.eventsub.websockets
    saved = route.BASE, route.ID_BASE, websockets.WSS
    route.BASE, route.ID_BASE, websockets.WSS = api_base + "/helix/", api_base + "/", ws_url
    try:
        yield
    finally:
        route.BASE, route.ID_BASE, websockets.WSS = saved
