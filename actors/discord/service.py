"""The Discord service: a thin actor around the bot, which runs on its own asyncio loop.

    services:
      discord:
        enabled: true
        token: "${env:DISCORD_TOKEN}"
        guild_ids: [123456789012345678]
        status_channel_id: 234567890123456789
        permissions: {admins: {roles: [345678901234567890]}, operators: {users: [...]}}

The actor holds the config and the connection state (its health), answers the bot's requests by
asking the admin actor (its address cached, checked against the registry on each request: it may
have restarted), and hands notifications (alerts, state changes, gas milestones: it is a sink
in ``alerts.sinks``) to the status channel's poster. Without a token it is ``disabled``; a final
gateway failure (bad token, missing intent) parks it in ``failed`` with the reason, never in a
restart loop.
"""
from __future__ import annotations

import contextlib

from thespian.actors import ActorExitRequest

from actors.discord import runner
from actors.discord.settings import settings_from
from system import protocol
from system.bridge import AsyncBridge
from system.service import ServiceActor, handles

ADMIN_TIMEOUT_S = 12.0


class DiscordService(ServiceActor):
    tick_s = 0.5

    def on_start(self) -> None:
        self.settings = settings_from(self.config)
        self.connection: dict = {"state": "connecting"}
        self.latency: float | None = None
        self.bridge = AsyncBridge()
        self.admin_addr: str | None = None  # cached; checked by a lookup on every request
        self.poster = runner.StatusPoster(self.settings, self.bridge)
        self.bridge.start(self._client, name="discord")

    async def _client(self, bridge: AsyncBridge) -> None:
        bridge.capture_logs("discord")
        await runner.run(bridge, self.settings, self.poster)

    # -- from the bot ---------------------------------------------------------------------------
    def on_event(self, event) -> None:
        kind, value = event[0], event[1:]
        if kind == "ask":
            self._ask(*value)
        elif kind == "connection":
            state = value[0]
            if state.get("state") != self.connection.get("state"):
                self.log("info" if state["state"] == "ready" else "warning", "connection",
                         f"discord {state['state']}" + (f": {state['reason']}"
                                                        if state.get("reason") else ""))
            self.connection = state
            if "latency" in state:
                self.latency = state["latency"]
        elif kind == "latency":
            self.latency = value[0]
        elif kind == "fatal":
            self.log("error", "connection_failed", value[0])
            self.fail(value[0])
        elif kind == "bridge.error":  # the client loop died: a fresh actor starts a fresh loop
            self.log("error", "client_crashed", f"{type(value[0]).__name__}: {value[0]}",
                     exc=value[0])
            self.send(self.myAddress, ActorExitRequest())

    def _ask(self, rid: int, request: dict) -> None:
        """A bot request for the admin actor; the answer goes back through the bridge.

        The admin's address is cached: the request goes straight there, and the registry lookup
        that used to come first runs alongside to check the cache. When the admin has moved (a
        restart: what went to the old address is lost without a word from Thespian) the request
        goes again to the new one; with nothing cached it waits for the lookup. (A second copy
        could reach an admin only if the old one took the request just before it exited and
        its successor registered before the registry answered this lookup.)"""
        mtype = protocol.TYPES.get(request.get("type", ""))
        if mtype is None or not mtype.name.startswith("admin."):
            self.bridge.answer(rid, _error("bad_request", f"not an admin request: {mtype}"))
            return
        answered = False

        def answer(result: dict) -> None:
            nonlocal answered
            if not answered:  # the copy sent to a moved admin timing out, or a late reply
                answered = True
                self.bridge.answer(rid, result)

        def done(reply) -> None:
            if reply is None:
                self.admin_addr = None  # look it up before the next request
                answer(_error("timeout", "The swarm did not answer in time."))
            elif reply.t == "error":
                answer(_error(reply.b["code"], reply.b["detail"]))
            else:
                answer({"ok": reply.b})

        def send_to(addr: str) -> None:
            self.request(protocol.address_from_wire(addr), mtype, request["body"], done,
                         ADMIN_TIMEOUT_S)

        cached = self.admin_addr
        if cached:
            send_to(cached)

        def with_admin(found) -> None:
            if found is None or found.t == "error" or not found.b.get("addr"):
                if not cached:  # else the cached admin may still answer (or time out)
                    answer(_error("not_ready", "The swarm's admin is restarting; try again."))
                return
            self.admin_addr = found.b["addr"]
            if self.admin_addr != cached and not answered:
                send_to(self.admin_addr)

        self.request(protocol.address_from_wire(self.registry), protocol.REGISTRY_LOOKUP,
                     {"name": "admin"}, with_admin, 3.0)

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


def _error(code: str, detail: str) -> dict:
    return {"error": {"code": code, "detail": detail}}
