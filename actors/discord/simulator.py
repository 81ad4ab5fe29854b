"""A simulated Discord platform: the parts of REST API v10 and the gateway that a discord.py
``commands.Bot`` uses, served by aiohttp on 127.0.0.1 over real sockets, so the real client is
tested end to end (no mocks of discord.py). One guild, its channels, roles and members; users
type messages, run slash commands, click buttons, pick select options and submit modals; the
bot's answers are recorded and can be awaited. Discord's rules that bots trip over are
enforced: the message-content intent, privileged intents (close 4014), one interaction
response within 3 s (40060 / 10062), per-channel message rate limits (429 + ``retry_after``).
Knobs break the platform on purpose: close the gateway with any code, op 7, op 9, a zombie
socket, refused connections, a revoked token. Protocol facts: /work/shared/PLATFORMS.md.

Synchronous use (a test, or the ``swarm demo`` harness; the bot may run in another process)::

    from actors.discord.simulator import SimDiscordThread

    with SimDiscordThread(token="sim-token") as sim:
        sim.add_role(501, "operator")
        sim.add_channel(601, "ops")
        sim.add_member(701, "alice", roles=[501])
        # in the bot's process, before the client starts:
        #   discord.http.Route.BASE = sim.api_base + "/api/v10"
        #   discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(sim.gateway_url)
        # (or ``with redirect_discord_py(sim.api_base, sim.gateway_url):`` in-process)
        sim.wait_ready()
        sim.message(601, 701, "!ping")
        assert sim.wait_post(601, lambda m: m["content"] == "pong")
        iid = sim.slash(601, 701, "status", {"service": "queue"})
        print(sim.wait_response(iid)["content"])

:class:`SimDiscord` is the same API as coroutines, for a test whose bot shares its loop
(``async with SimDiscord() as sim: ...``).

Messages and records are plain JSON-like dicts in Discord's shapes (ids are strings);
whatever a method returns is a copy. Routes the simulator does not implement answer 404 and
are listed in ``unhandled``; an exception inside the simulator answers 500 and is listed in
``server_errors`` (a test should assert both are empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self, TypeVar

from aiohttp import web

from actors.discord.sim_gateway import (
    GUILD_MEMBERS,
    GUILD_PRESENCES,
    MESSAGE_CONTENT,
    PRIVILEGED_INTENTS,
    Gateway,
)
from actors.discord.sim_model import (
    APP_ID,
    GUILD_ID,
    LOADING,
    OWNER_ID,
    GuildState,
    Interaction,
    now_iso,
)
from actors.discord.sim_rest import API, RestApi

__all__ = ["APP_ID", "GUILD_ID", "OWNER_ID", "SimDiscord", "SimDiscordThread",
           "redirect_discord_py"]
T = TypeVar("T")


class SimDiscord(RestApi, GuildState):
    """The simulated platform on the running asyncio loop (see the module docstring). The
    guild's data and Discord's objects are :class:`GuildState`'s, the REST routes
    :class:`RestApi`'s, the websocket side ``self.gateway``'s.

    Knobs you may set at any time: ``allowed_intents`` (privileged intents the app may use),
    ``response_deadline_s`` (3 s on Discord), ``rate_limit`` ((posts, seconds) per channel),
    ``rate_limit_headers`` (False hides the bucket so discord.py learns only from 429s),
    ``heartbeat_interval_ms`` (for new connections), ``resume_window_s``.
    """

    def __init__(self, token: str = "sim-token", *, guild_id: int = GUILD_ID,
                 guild_name: str = "Sim Guild", app_id: int = APP_ID,
                 bot_user_id: int | None = None, bot_name: str = "sim-bot",
                 owner_id: int = OWNER_ID, host: str = "127.0.0.1", port: int = 0,
                 heartbeat_interval_ms: int = 1000, allowed_intents: int = PRIVILEGED_INTENTS,
                 response_deadline_s: float = 3.0, rate_limit: tuple[int, float] = (5, 5.0),
                 rate_limit_headers: bool = True, resume_window_s: float = 60.0):
        super().__init__(guild_id=guild_id, guild_name=guild_name, app_id=app_id,
                         bot_user_id=app_id if bot_user_id is None else bot_user_id,
                         bot_name=bot_name, owner_id=owner_id)
        self.token = token
        self.host, self.port = host, port
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.allowed_intents = allowed_intents
        self.response_deadline_s = response_deadline_s
        self.rate_limit = rate_limit
        self.rate_limit_headers = rate_limit_headers
        self.resume_window_s = resume_window_s
        self.api_base = self.gateway_url = ""
        # Records (read them; tests and the harness assert on them).
        self.syncs: list[dict] = []              # every bulk overwrite of application commands
        self.responses: list[dict] = []          # every accepted interaction response
        self.interaction_errors: list[dict] = []  # every refused one (40060, 10062, ...)
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of REST calls
        self.unhandled: list[tuple[str, str]] = []
        self.server_errors: list[str] = []
        self.rate_limited = 0                    # 429s answered
        self.gateway = Gateway(self)
        self._buckets: dict[int, list] = {}      # channel id -> [window start, posts in it]
        self._change = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=26 * 1024 * 1024)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/gateway/resume", self.gateway.handle)
        for method, path, handler in self._routes():
            app.router.add_route(method, API + path, handler)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0,
                                     access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port)
        await self._site.start()
        self.port = self._runner.addresses[0][1]  # port 0 picked a free one: keep it
        self.api_base = f"http://{self.host}:{self.port}"
        self.gateway_url = f"ws://{self.host}:{self.port}/gateway"

    async def stop(self) -> None:
        """Close every gateway socket (1001) and HTTP connection, then the listener."""
        if self._runner is None:
            return
        await self.gateway.close_all(1001, "Simulator stopping.")
        self._drop_connections()
        await self._runner.cleanup()
        self._runner = self._site = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the guild -------------------------------------------------------------------------
    async def add_role(self, role_id: int, name: str, permissions: int = 0) -> dict:
        role = self._role_object(role_id, name, permissions, len(self._roles))
        self._roles[role_id] = role
        await self.gateway.dispatch("GUILD_ROLE_CREATE", {"guild_id": str(self.guild_id),
                                                          "role": role})
        return copy.deepcopy(role)

    async def add_channel(self, channel_id: int, name: str) -> dict:
        channel = {"id": str(channel_id), "type": 0, "guild_id": str(self.guild_id),
                   "name": name, "position": len(self._channels), "permission_overwrites": [],
                   "topic": None, "nsfw": False, "rate_limit_per_user": 0, "parent_id": None,
                   "last_message_id": None}
        self._channels[channel_id] = channel
        self._history.setdefault(channel_id, [])
        await self.gateway.dispatch("CHANNEL_CREATE", channel)
        return copy.deepcopy(channel)

    async def add_member(self, user_id: int, name: str, roles: Sequence[int] = (),
                         bot: bool = False, nick: str | None = None) -> dict:
        unknown = [r for r in roles if r not in self._roles]
        if unknown:
            raise ValueError(f"unknown role id(s) {unknown}: add_role first")
        self._add_user(user_id, name, bot=bot)
        self._members[user_id] = {"roles": [int(r) for r in roles], "nick": nick,
                                  "joined_at": now_iso()}
        member = self._member_object(user_id)
        await self.gateway.dispatch("GUILD_MEMBER_ADD", member | {"guild_id": str(self.guild_id)})
        return copy.deepcopy(member)

    async def set_roles(self, user_id: int, roles: Sequence[int]) -> None:
        """Change a member's roles (GUILD_MEMBER_UPDATE; later events carry the new roles)."""
        self._require(None, user_id)
        self._members[user_id]["roles"] = [int(r) for r in roles]
        await self.gateway.dispatch("GUILD_MEMBER_UPDATE",
                                    self._member_object(user_id) | {"guild_id": str(self.guild_id)})

    # -- what users do ---------------------------------------------------------------------
    async def message(self, channel_id: int, user_id: int, content: str) -> dict:
        """A member types ``content`` in a channel (MESSAGE_CREATE)."""
        self._require(channel_id, user_id)
        message = self._new_message(channel_id, user_id, {"content": content}, [])
        await self._post(message)
        return copy.deepcopy(message)

    async def dm(self, user_id: int, content: str) -> dict:
        """A member writes ``content`` to the bot in a direct message (their DM channel is
        opened on first use; MESSAGE_CREATE without a guild, needing DIRECT_MESSAGES). The
        message's ``channel_id`` is where the bot's answers appear (``wait_post``)."""
        self._require(None, user_id)
        if user_id not in self._dms:
            channel_id = self._snowflake()
            self._dms[user_id] = {"id": str(channel_id), "type": 1, "last_message_id": None,
                                  "recipients": [self._user_object(user_id)], "flags": 0}
            self._history[channel_id] = []
        message = self._new_message(int(self._dms[user_id]["id"]), user_id,
                                    {"content": content}, [])
        await self._post(message)
        return copy.deepcopy(message)

    async def slash(self, channel_id: int, user_id: int, name: str,
                    options: dict[str, Any] | None = None) -> str:
        """A member runs a registered slash command; ``name`` may name a subcommand
        ("brain add"). Options are typed by the registered command (a user, role or channel
        option takes an id and is resolved). Returns the interaction id."""
        self._require(channel_id, user_id)
        first, *subs = name.split()
        scope = self.guild_id if self._find_command(self.guild_id, first) else None
        command = self._find_command(scope, first)
        if command is None:
            raise LookupError(f"/{first} is not registered (synced) for this guild or "
                              "globally; Discord would not offer it")
        data = {"id": command["id"], "name": command["name"], "type": 1}
        if scope is not None:
            data["guild_id"] = str(scope)
        holder, definitions = data, command.get("options", [])
        for sub in subs:  # nest subcommand groups (type 2) and subcommands (type 1)
            found = next((o for o in definitions if o["name"] == sub and o["type"] in (1, 2)),
                         None)
            if found is None:
                raise LookupError(f"/{name}: {sub!r} is not a subcommand")
            nested = {"name": sub, "type": found["type"], "options": []}
            holder["options"] = [nested]
            holder, definitions = nested, found.get("options", [])
        resolved: dict[str, dict] = {}
        holder["options"] = self._options(name, definitions, options or {}, resolved)
        if resolved:
            data["resolved"] = resolved
        return await self._interact(2, channel_id, user_id, data, None)

    async def click(self, message: dict, user_id: int, custom_id: str) -> str:
        """A member clicks the button ``custom_id`` on ``message`` (a posted or response
        message; its current state is used). Returns the interaction id."""
        stored, component = self._component(message, custom_id, {2})
        if component.get("disabled"):
            raise ValueError(f"button {custom_id!r} is disabled")
        return await self._interact(3, int(stored["channel_id"]), user_id,
                                    {"custom_id": custom_id, "component_type": 2}, stored)

    async def select(self, message: dict, user_id: int, custom_id: str,
                     values: list[str]) -> str:
        """A member picks ``values`` in the string select ``custom_id`` on ``message``."""
        stored, component = self._component(message, custom_id, {3})
        offered = {option["value"] for option in component.get("options", [])}
        low, high = component.get("min_values", 1), component.get("max_values", 1)
        if not set(values) <= offered or not low <= len(values) <= high:
            raise ValueError(f"select {custom_id!r} offers {sorted(offered)} "
                             f"({low}..{high} of them), not {values}")
        return await self._interact(3, int(stored["channel_id"]), user_id,
                                    {"custom_id": custom_id, "component_type": 3,
                                     "values": list(values)}, stored)

    async def submit_modal(self, channel_id: int, user_id: int, custom_id: str,
                           fields: dict[str, str | list[str]]) -> str:
        """A member submits the modal ``custom_id`` the bot opened for them (response type 9),
        with text input values (or select values) by the inputs' custom_ids."""
        opener = next((it for it in reversed(self._interactions.values())
                       if it.modal and it.modal.get("custom_id") == custom_id
                       and it.user_id == user_id and not it.modal_submitted), None)
        if opener is None:
            raise LookupError(f"no open modal {custom_id!r} for user {user_id}: the bot must "
                              "answer an interaction of theirs with one (type 9)")
        left = dict(fields)

        def answer(component: dict) -> dict | None:
            if component["type"] == 1:
                return {"type": 1, "components": [a for c in component["components"]
                                                  if (a := answer(c))]}
            if component["type"] == 18:  # a label around one input
                inner = answer(component["component"])
                return inner and {"type": 18, "id": component.get("id"), "component": inner}
            cid = component.get("custom_id")
            if component["type"] == 4:
                value = left.pop(cid, "")
                if component.get("required", True) and not value:
                    raise ValueError(f"text input {cid!r} is required")
                return {"type": 4, "custom_id": cid, "value": value}
            if component["type"] == 3:
                return {"type": 3, "custom_id": cid, "values": list(left.pop(cid, []))}
            return None  # text displays and the like send nothing back

        components = [a for c in opener.modal.get("components", []) if (a := answer(c))]
        if left:
            raise ValueError(f"modal {custom_id!r} has no input(s) {sorted(left)}")
        opener.modal_submitted = True
        message = self._messages.get(opener.message_id) if opener.message_id else None
        return await self._interact(5, channel_id, user_id,
                                    {"custom_id": custom_id, "components": components}, message)

    # -- waiting for the bot ---------------------------------------------------------------
    async def wait_until(self, predicate: Callable[[], T], timeout: float = 5.0,
                         what: str = "condition") -> T:
        """Return ``predicate()``'s first truthy value, re-checked on every change of the
        simulator and every 50 ms (for a predicate that also reads state outside it)."""
        deadline = time.monotonic() + timeout
        while True:
            change = self._change
            value = predicate()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"simulated Discord: no {what} within {timeout} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(change.wait(), min(left, 0.05))

    async def wait_ready(self, timeout: float = 5.0, count: int = 1) -> None:
        """Wait until READY + GUILD_CREATE went out ``count`` times in all (each IDENTIFY)."""
        await self.wait_until(lambda: self.ready_count >= count, timeout, f"READY #{count}")

    async def wait_post(self, channel_id: int, predicate: Callable[[dict], bool] | None = None,
                        timeout: float = 5.0, after: str | None = None) -> dict:
        """The first message the bot has in the channel (posted, or a public interaction
        response) matching ``predicate``, newer than the message id ``after`` if given.
        A deferred response still "thinking" counts once it has its content."""
        def find() -> dict | None:
            for mid in self._history.get(channel_id, ()):
                message = self._messages[mid]
                if (message["author"]["id"] == str(self.bot_user_id)
                        and not message["flags"] & LOADING
                        and (after is None or int(mid) > int(after))
                        and (predicate is None or predicate(message))):
                    return message
            return None
        return copy.deepcopy(await self.wait_until(find, timeout, f"post in {channel_id}"))

    async def wait_response(self, interaction_id: str,
                            predicate: Callable[[dict], bool] | None = None,
                            timeout: float = 5.0) -> dict:
        """The first response record of the interaction (callback, follow-up, edit or delete;
        see ``responses``) matching ``predicate``."""
        def find() -> dict | None:
            return next((r for r in self.responses if r["interaction_id"] == interaction_id
                         and (predicate is None or predicate(r))), None)
        return copy.deepcopy(await self.wait_until(find, timeout,
                                                   f"response to {interaction_id}"))

    # -- records ---------------------------------------------------------------------------
    @property
    def ready_count(self) -> int:
        return sum(1 for i in self.gateway.identifies if i["result"] == "ready")

    @property
    def identifies(self) -> list[dict]:
        return self.gateway.identifies

    @property
    def resumes(self) -> list[dict]:
        return self.gateway.resumes

    @property
    def connections(self) -> int:
        """Gateway websockets accepted so far."""
        return self.gateway.connections

    @property
    def live_connections(self) -> int:
        return len(self.gateway.conns)

    @property
    def refuse_connections(self) -> bool:
        return self._site is None and self._runner is not None

    def posts(self, channel_id: int) -> list[dict]:
        """The bot's visible messages in a channel, oldest first (``timestamp`` is ISO)."""
        bot = str(self.bot_user_id)
        return [copy.deepcopy(self._messages[mid]) for mid in self._history.get(channel_id, ())
                if self._messages[mid]["author"]["id"] == bot]

    def history(self, channel_id: int) -> list[dict]:
        """Every visible message in a channel (members' and the bot's), oldest first."""
        return [copy.deepcopy(self._messages[mid]) for mid in self._history.get(channel_id, ())]

    def get_message(self, message_id: str) -> dict:
        return copy.deepcopy(self._messages[str(message_id)])

    # -- fault knobs -----------------------------------------------------------------------
    async def close_gateway(self, code: int = 4000, reason: str = "") -> int:
        """Close every live gateway socket with ``code`` (1000/4000: discord.py resumes;
        4004: authentication failed, fatal; 4014: disallowed intents). Returns how many."""
        return await self.gateway.close_all(code, reason)

    async def reconnect(self) -> int:
        """op 7 RECONNECT on every live socket: the client reconnects and resumes."""
        return await self.gateway.send_all({"op": 7, "s": None, "t": None, "d": None})

    async def invalidate_sessions(self, resumable: bool = False) -> int:
        """op 9 INVALID_SESSION on every live socket; not resumable: the client identifies
        again (and on_ready fires again)."""
        if not resumable:
            self.gateway.sessions.clear()
        return await self.gateway.send_all({"op": 9, "s": None, "t": None, "d": resumable})

    def silence_heartbeats(self) -> int:
        """The live sockets turn zombie: no heartbeat ACK, no dispatch (buffered for RESUME).
        discord.py notices after its ``heartbeat_timeout`` and reconnects; new sockets are
        healthy."""
        return self.gateway.silence()

    async def invalidate_token(self, new_token: str | None = None) -> str:
        """Revoke the token (as a reset does): REST answers 401, live sockets close 4004."""
        self.token = new_token or secrets.token_urlsafe(24)
        self.gateway.sessions.clear()
        await self.gateway.close_all(4004, "Authentication failed.")
        return self.token

    async def set_refuse_connections(self, refuse: bool) -> None:
        """True: stop listening and cut every established connection (REST keep-alives and
        gateway sockets drop without a close frame), as an outage looks to a client.
        False: listen again on the same port."""
        if self._runner is None or refuse == self.refuse_connections:
            return
        if refuse:
            await self._site.stop()  # the listening socket closes: connects are refused
            self._site = None
            self._drop_connections()
        else:
            self._site = web.TCPSite(self._runner, self.host, self.port)
            await self._site.start()

    def _drop_connections(self) -> None:
        for handler in self._runner.server.connections:
            handler.force_close()

    # -- stores that dispatch --------------------------------------------------------------
    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    def _app_flags(self) -> int:
        # GATEWAY_PRESENCE_LIMITED, GATEWAY_GUILD_MEMBERS_LIMITED, GATEWAY_MESSAGE_CONTENT_LIMITED
        allowed = self.allowed_intents
        return ((1 << 13 if allowed & GUILD_PRESENCES else 0)
                | (1 << 15 if allowed & GUILD_MEMBERS else 0)
                | (1 << 19 if allowed & MESSAGE_CONTENT else 0))

    async def _post(self, message: dict) -> None:
        """Store a visible message and dispatch MESSAGE_CREATE (the bot's own too, as Discord
        does)."""
        channel_id = int(message["channel_id"])
        self._messages[message["id"]] = message
        self._history[channel_id].append(message["id"])
        self._channel_object(channel_id)["last_message_id"] = message["id"]
        self._changed()
        await self.gateway.dispatch("MESSAGE_CREATE", self._event_message(message))

    async def _edit(self, message: dict, payload: dict, attachments: list[dict] | None) -> dict:
        for key in ("content", "embeds", "components"):
            if key in payload:
                message[key] = payload[key] if payload[key] is not None else (
                    "" if key == "content" else [])
        if attachments is not None:
            message["attachments"] = attachments
        if "flags" in payload and payload["flags"] is not None:  # only SUPPRESS_EMBEDS changes
            message["flags"] = message["flags"] & ~4 | payload["flags"] & 4
        message["edited_timestamp"] = now_iso()
        self._changed()
        if self._visible(message):
            await self.gateway.dispatch("MESSAGE_UPDATE", self._event_message(message))
        return message

    async def _delete(self, message: dict) -> None:
        self._messages.pop(message["id"], None)
        channel_id = int(message["channel_id"])
        if self._visible(message):
            self._history[channel_id].remove(message["id"])
            event = {"id": message["id"], "channel_id": message["channel_id"]}
            if channel_id in self._channels:  # not a DM
                event["guild_id"] = str(self.guild_id)
            await self.gateway.dispatch("MESSAGE_DELETE", event)
        self._changed()

    async def _interact(self, kind: int, channel_id: int, user_id: int, data: dict,
                        message: dict | None) -> str:
        self._require(channel_id, user_id)
        it = Interaction(str(self._snowflake()), secrets.token_urlsafe(32), kind, channel_id,
                         user_id, time.monotonic(), message["id"] if message else None)
        self._interactions[it.id] = self._by_token[it.token] = it
        self._changed()
        await self.gateway.dispatch("INTERACTION_CREATE",
                                    self._interaction_payload(it, data, message))
        return it.id


class SimDiscordThread:
    """:class:`SimDiscord` on its own loop in a daemon thread, with the same methods as plain
    calls, for synchronous tests and the harness. ``with SimDiscordThread() as sim: ...``
    (``sim.sim`` is the asyncio object; touch it only through ``call``)."""

    def __init__(self, token: str = "sim-token", **options: Any):
        self._options = dict(options, token=token)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.sim: SimDiscord | None = None
        self.api_base = self.gateway_url = ""

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sim-discord",
                                        daemon=True)
        self._thread.start()

        async def create() -> SimDiscord:
            sim = SimDiscord(**self._options)
            await sim.start()
            return sim
        self.sim = self._run(create())
        self.api_base, self.gateway_url = self.sim.api_base, self.sim.gateway_url

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

    def call(self, fn: Callable[[SimDiscord], T]) -> T:
        """Run ``fn(sim)`` on the simulator's loop (to read or set anything safely)."""
        async def run() -> T:
            return fn(self.sim)
        return self._run(run())

    # the guild
    def add_role(self, role_id: int, name: str, permissions: int = 0) -> dict:
        return self._run(self.sim.add_role(role_id, name, permissions))

    def add_channel(self, channel_id: int, name: str) -> dict:
        return self._run(self.sim.add_channel(channel_id, name))

    def add_member(self, user_id: int, name: str, roles: Sequence[int] = (), bot: bool = False,
                   nick: str | None = None) -> dict:
        return self._run(self.sim.add_member(user_id, name, roles, bot, nick))

    def set_roles(self, user_id: int, roles: Sequence[int]) -> None:
        self._run(self.sim.set_roles(user_id, roles))

    # what users do
    def message(self, channel_id: int, user_id: int, content: str) -> dict:
        return self._run(self.sim.message(channel_id, user_id, content))

    def dm(self, user_id: int, content: str) -> dict:
        return self._run(self.sim.dm(user_id, content))

    def slash(self, channel_id: int, user_id: int, name: str,
              options: dict[str, Any] | None = None) -> str:
        return self._run(self.sim.slash(channel_id, user_id, name, options))

    def click(self, message: dict, user_id: int, custom_id: str) -> str:
        return self._run(self.sim.click(message, user_id, custom_id))

    def select(self, message: dict, user_id: int, custom_id: str, values: list[str]) -> str:
        return self._run(self.sim.select(message, user_id, custom_id, values))

    def submit_modal(self, channel_id: int, user_id: int, custom_id: str,
                     fields: dict[str, str | list[str]]) -> str:
        return self._run(self.sim.submit_modal(channel_id, user_id, custom_id, fields))

    # waiting (the predicate runs on the simulator's thread)
    def wait_until(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        return self._run(self.sim.wait_until(predicate, timeout), timeout + 5)

    def wait_ready(self, timeout: float = 5.0, count: int = 1) -> None:
        self._run(self.sim.wait_ready(timeout, count), timeout + 5)

    def wait_post(self, channel_id: int, predicate: Callable[[dict], bool] | None = None,
                  timeout: float = 5.0, after: str | None = None) -> dict:
        return self._run(self.sim.wait_post(channel_id, predicate, timeout, after), timeout + 5)

    def wait_response(self, interaction_id: str,
                      predicate: Callable[[dict], bool] | None = None,
                      timeout: float = 5.0) -> dict:
        return self._run(self.sim.wait_response(interaction_id, predicate, timeout), timeout + 5)

    # records (copies)
    def posts(self, channel_id: int) -> list[dict]:
        return self.call(lambda s: s.posts(channel_id))

    def history(self, channel_id: int) -> list[dict]:
        return self.call(lambda s: s.history(channel_id))

    def get_message(self, message_id: str) -> dict:
        return self.call(lambda s: s.get_message(message_id))

    def reached(self, ref: str) -> bool:
        """Whether a message or interaction (by id) was sent to a bot on a live gateway
        socket, at once or in a RESUME's replay (one sent while no bot was connected never
        is: Discord does not deliver it later)."""
        return self.call(lambda s: str(ref) in s.gateway.received)

    def records(self) -> dict[str, Any]:
        """A snapshot: identifies, resumes, syncs, responses, interaction_errors, requests,
        unhandled, server_errors, rate_limited, connections, live_connections, ready_count."""
        names = ("identifies", "resumes", "syncs", "responses", "interaction_errors",
                 "requests", "unhandled", "server_errors", "rate_limited", "connections",
                 "live_connections", "ready_count")
        return self.call(lambda s: copy.deepcopy({n: getattr(s, n) for n in names}))

    # fault knobs
    def close_gateway(self, code: int = 4000, reason: str = "") -> int:
        return self._run(self.sim.close_gateway(code, reason))

    def reconnect(self) -> int:
        return self._run(self.sim.reconnect())

    def invalidate_sessions(self, resumable: bool = False) -> int:
        return self._run(self.sim.invalidate_sessions(resumable))

    def silence_heartbeats(self) -> int:
        return self.call(lambda s: s.silence_heartbeats())

    def invalidate_token(self, new_token: str | None = None) -> str:
        return self._run(self.sim.invalidate_token(new_token))

    @property
    def refuse_connections(self) -> bool:
        return self.call(lambda s: s.refuse_connections)

    @refuse_connections.setter
    def refuse_connections(self, refuse: bool) -> None:
        self._run(self.sim.set_refuse_connections(refuse))

    def configure(self, **knobs: Any) -> None:
        """Set knobs at runtime, e.g. ``configure(rate_limit=(5, 1.0), allowed_intents=0)``."""
        def apply(sim: SimDiscord) -> None:
            for name, value in knobs.items():
                if not hasattr(sim, name):
                    raise AttributeError(f"SimDiscord has no knob {name!r}")
                setattr(sim, name, value)
        self.call(apply)


@contextlib.contextmanager
def redirect_discord_py(api_base: str, gateway_url: str) -> Iterator[None]:
    """Point this process's discord.py at the simulator (REST base and gateway) for the
    block, then restore Discord's. Clients read both per request / per connect."""
    import discord.gateway
    import discord.http
    import yarl
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = api_base + API
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved
