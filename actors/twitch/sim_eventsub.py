"""The simulated EventSub websocket: sessions, welcome, keepalives, notifications,
``session_reconnect`` and Twitch's close codes. Part of
:class:`actors.twitch.simulator.SimTwitch` (which owns the subscriptions and the knobs).

Twitch's rules kept here: the first message is ``session_welcome`` with the session id and
``keepalive_timeout_seconds`` (10..600, from the query); a session without a subscription
after the subscribe window (default: the keepalive timeout) is closed with 4003; a client
that sends anything is closed with 4001; on ``session_reconnect`` the client connects to
``reconnect_url``, its subscriptions move to the new session (no resubscribing), and an old
socket still open ``reconnect_grace_s`` later is closed with 4004; a reconnect URL used
twice or for an unknown session is closed with 4007. When a socket closes any other way its
subscriptions become ``websocket_disconnected`` and the client must subscribe again.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from actors.twitch.sim_model import new_message_id, now_rfc3339

if TYPE_CHECKING:
    from actors.twitch.simulator import SimTwitch

WS_PATH = "/ws"
CLOSE_REASONS = {4000: "internal server error", 4001: "sent inbound traffic",
                 4002: "failed ping-pong", 4003: "connection unused",
                 4004: "reconnect grace time expired", 4005: "network timeout",
                 4006: "network error", 4007: "invalid reconnect"}


@dataclass
class Session:
    id: str
    ws: web.WebSocketResponse
    request: web.Request
    keepalive_s: int
    connected_at: str = field(default_factory=now_rfc3339)
    user_id: str | None = None     # the user whose token subscribed on it first
    silent: bool = False           # keepalive knob: send no more keepalives
    reconnecting: bool = False     # session_reconnect sent, the client has not moved yet
    moved: bool = False            # the client moved to a reconnect session
    tasks: list[asyncio.Task] = field(default_factory=list)


class EventSub:
    """The websocket side of the platform."""

    def __init__(self, sim: SimTwitch):
        self.sim = sim
        self.sessions: dict[str, Session] = {}      # live sessions
        self.connections = 0                        # websocket connections accepted
        self.closes: list[tuple[str, int | None]] = []  # (session id, close code we sent)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.connections += 1
        old = self._reconnect_origin(request.query.get("reconnect"))
        if old is False:
            await ws.close(code=4007, message=CLOSE_REASONS[4007].encode())
            return ws
        keepalive = old.keepalive_s if old else _clamp_keepalive(
            request.query.get("keepalive_timeout_seconds"))
        session = Session(f"sim_{secrets.token_hex(10)}", ws, request, keepalive)
        self.sessions[session.id] = session
        await self._send(session, "session_welcome", {"session": self._session_json(session)})
        if old:
            self._move(old, session)
        session.tasks.append(asyncio.create_task(self._keepalives(session)))
        if not old:
            session.tasks.append(asyncio.create_task(self._unused_check(session)))
        self.sim.changed()
        try:
            async for message in ws:
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self.close(session, 4001)  # Twitch allows no inbound messages
        finally:
            self._closed(session)
        return ws

    # -- what the platform does --------------------------------------------------------------
    async def notify(self, session_id: str, subscription: dict, event: dict,
                     message_id: str | None = None) -> bool:
        """Send a notification to a live session; False if it is gone."""
        session = self.sessions.get(session_id)
        if session is None or session.ws.closed:
            return False
        await self._send(session, "notification", {"subscription": subscription,
                                                   "event": event},
                         subscription_type=subscription["type"],
                         subscription_version=subscription["version"], message_id=message_id)
        return True

    async def send_reconnect(self) -> int:
        """``session_reconnect`` on every live session; how many got it."""
        sessions = [s for s in self.sessions.values() if not s.reconnecting]
        for session in sessions:
            session.reconnecting = True
            url = f"{self.sim.ws_url}?reconnect={session.id}"
            await self._send(session, "session_reconnect", {"session": dict(
                self._session_json(session), status="reconnecting", reconnect_url=url,
                keepalive_timeout_seconds=None)})
            session.tasks.append(asyncio.create_task(self._grace(session)))
        return len(sessions)

    async def close(self, session: Session, code: int | None) -> None:
        """Close with a Twitch close code, or (None) cut the connection like a network
        failure: no close frame at all."""
        self.closes.append((session.id, code))
        if code is None:
            transport = session.request.transport
            if transport is not None:
                transport.abort()
            self._closed(session)
        else:
            await session.ws.close(code=code, message=CLOSE_REASONS.get(code, "").encode())

    async def close_all(self, code: int | None) -> int:
        sessions = list(self.sessions.values())
        for session in sessions:
            await self.close(session, code)
        return len(sessions)

    def silence(self) -> int:
        """Stop the keepalives of every live session (new sessions get them again)."""
        for session in self.sessions.values():
            session.silent = True
        return len(self.sessions)

    # -- internals ---------------------------------------------------------------------------
    def _reconnect_origin(self, session_id: str | None) -> Session | None | bool:
        """The session a reconnect URL names; None for a fresh connection, False for a
        URL that is not (or no longer) valid."""
        if session_id is None:
            return None
        old = self.sessions.get(session_id)
        return old if old is not None and old.reconnecting and not old.moved else False

    def _move(self, old: Session, new: Session) -> None:
        old.moved = True
        new.user_id = old.user_id
        for subscription in self.sim.state.subscriptions.values():
            if subscription.session_id == old.id and subscription.status == "enabled":
                subscription.session_id = new.id

    def _closed(self, session: Session) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        for task in session.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if not session.moved:
            for subscription in self.sim.state.subscriptions.values():
                if subscription.session_id == session.id and subscription.status == "enabled":
                    subscription.status = "websocket_disconnected"
        self.sim.changed()

    async def _keepalives(self, session: Session) -> None:
        while not session.ws.closed:
            await asyncio.sleep(self.sim.keepalive_every_s or session.keepalive_s / 2)
            if not session.silent:
                await self._send(session, "session_keepalive", {})

    async def _unused_check(self, session: Session) -> None:
        await asyncio.sleep(self.sim.subscribe_window_s or session.keepalive_s)
        if not any(s.session_id == session.id for s in self.sim.state.subscriptions.values()):
            await self.close(session, 4003)

    async def _grace(self, session: Session) -> None:
        await asyncio.sleep(self.sim.reconnect_grace_s)
        if not session.ws.closed:
            await self.close(session, 4004)

    async def _send(self, session: Session, kind: str, payload: dict, *,
                    message_id: str | None = None, **metadata: Any) -> None:
        message = {"metadata": {"message_id": message_id or new_message_id(),
                                "message_type": kind, "message_timestamp": now_rfc3339(),
                                **metadata}, "payload": payload}
        with contextlib.suppress(ConnectionError, RuntimeError):  # closing under our feet
            await session.ws.send_str(json.dumps(message))

    @staticmethod
    def _session_json(session: Session) -> dict:
        return {"id": session.id, "status": "connected",
                "keepalive_timeout_seconds": session.keepalive_s, "reconnect_url": None,
                "connected_at": session.connected_at, "recovery_url": None}


def _clamp_keepalive(value: str | None) -> int:
    """Twitch takes 10..600 and answers an out-of-range number with the nearest one."""
    try:
        return max(10, min(600, int(value))) if value is not None else 10
    except ValueError:
        return 10
