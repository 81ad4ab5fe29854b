"""The gateway half of the simulated Discord platform (the REST half and the public API are in
``simulator.py``; use :class:`actors.discord.simulator.SimDiscord`, not this module).

It speaks gateway v10 as discord.py 2.7.1 uses it: HELLO, heartbeats, IDENTIFY -> READY +
GUILD_CREATE, RESUME -> replay + RESUMED, op 7 / op 9, Discord's close codes, intents (the
message-content rule included) and ``compress=zlib-stream`` (one deflate stream per socket,
each frame ending in Z_SYNC_FLUSH, as Discord sends it).
"""
from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from actors.discord.simulator import SimDiscord

# Gateway intents (Discord docs, "Gateway Intents").
GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_PRESENCES = 1 << 8
GUILD_MESSAGES = 1 << 9
DIRECT_MESSAGES = 1 << 12
MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT
ALL_INTENTS = (1 << 26) - 1

# Events a session receives only with an intent; the rest (READY, GUILD_CREATE,
# INTERACTION_CREATE, ...) always go out, as on Discord.
EVENT_INTENTS = {
    "MESSAGE_CREATE": GUILD_MESSAGES, "MESSAGE_UPDATE": GUILD_MESSAGES,
    "MESSAGE_DELETE": GUILD_MESSAGES, "GUILD_MEMBER_ADD": GUILD_MEMBERS,
    "GUILD_MEMBER_UPDATE": GUILD_MEMBERS, "GUILD_ROLE_CREATE": GUILDS, "CHANNEL_CREATE": GUILDS,
}
REPLAY_LIMIT = 1000  # dispatches kept per session for RESUME; an older seq gets op 9


class _Conn:
    """One gateway websocket. Sends are serialised: the zlib stream and the sequence numbers
    must reach the client in the order they were produced."""

    def __init__(self, ws: web.WebSocketResponse, path: str, compress: str | None):
        self.ws = ws
        self.path = path
        self.compress = compress  # as asked in the URL; only zlib-stream is honoured
        self._deflate = zlib.compressobj() if compress == "zlib-stream" else None
        self._lock = asyncio.Lock()
        self.session: _Session | None = None
        self.silent = False       # a zombie: takes frames, answers nothing
        self.closed_by_us = False

    async def send(self, payload: dict) -> None:
        if self.silent or self.ws.closed:
            return
        text = json.dumps(payload, separators=(",", ":"))
        async with self._lock:
            try:
                if self._deflate is None:
                    await self.ws.send_str(text)
                else:
                    await self.ws.send_bytes(self._deflate.compress(text.encode())
                                             + self._deflate.flush(zlib.Z_SYNC_FLUSH))
            except ConnectionError:  # the client went away mid-send; its handler cleans up
                pass

    async def close(self, code: int, reason: str = "") -> None:
        self.closed_by_us = True
        await self.ws.close(code=code, message=reason.encode())


@dataclass
class _Session:
    id: str
    intents: int
    shard: list | None
    seq: int = 0
    sent: deque = field(default_factory=lambda: deque(maxlen=REPLAY_LIMIT))  # (s, t, d)
    conn: _Conn | None = None
    detached_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Gateway:
    """Sessions, sockets and dispatch for one :class:`SimDiscord` (its token, guild and knobs
    are read from ``sim`` at each use, so runtime changes apply at once)."""

    def __init__(self, sim: SimDiscord):
        self.sim = sim
        self.conns: set[_Conn] = set()
        self.sessions: dict[str, _Session] = {}
        self.identifies: list[dict] = []
        self.resumes: list[dict] = []
        self.received: set[str] = set()  # ids of messages/interactions a live socket was sent
        self.connections = 0

    # -- the websocket endpoint ------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        # timeout: how long our close waits for the client's close frame
        ws = web.WebSocketResponse(timeout=2.0, max_msg_size=0)
        await ws.prepare(request)
        conn = _Conn(ws, request.path, request.query.get("compress"))
        self.conns.add(conn)
        self.connections += 1
        self.sim._changed()
        try:
            await conn.send({"op": 10, "s": None, "t": None,
                             "d": {"heartbeat_interval": self.sim.heartbeat_interval_ms}})
            async for msg in ws:
                try:
                    payload = json.loads(msg.data) if msg.type is WSMsgType.TEXT else None
                except ValueError:
                    payload = None
                if not isinstance(payload, dict):
                    await conn.close(4002, "Error while decoding payload.")
                    break
                await self._on_payload(conn, payload)
        finally:
            self.conns.discard(conn)
            self._detach(conn)
            self.sim._changed()
        return ws

    async def _on_payload(self, conn: _Conn, payload: dict) -> None:
        op, d = payload.get("op"), payload.get("d")
        if op == 1:
            await conn.send({"op": 11, "s": None, "t": None, "d": None})
        elif op == 2:
            await self._identify(conn, d if isinstance(d, dict) else {})
        elif op == 6:
            await self._resume(conn, d if isinstance(d, dict) else {})
        elif op in (3, 4, 8) and conn.session is None:
            await conn.close(4003, "Not authenticated.")
        elif op == 8:  # REQUEST_GUILD_MEMBERS (chunk_guilds_at_startup, guild.chunk())
            chunk = {"guild_id": str(self.sim.guild_id), "members": self.sim._member_objects(),
                     "chunk_index": 0, "chunk_count": 1, "not_found": [], "presences": []}
            if isinstance(d, dict) and d.get("nonce") is not None:
                chunk["nonce"] = d["nonce"]
            async with conn.session.lock:
                await self._send(conn.session, "GUILD_MEMBERS_CHUNK", chunk)
        elif op in (3, 4):  # presence and voice state updates: accepted, not simulated
            pass
        else:
            await conn.close(4001, "Unknown opcode.")

    async def _identify(self, conn: _Conn, d: dict) -> None:
        record = {"at": time.monotonic(), "path": conn.path, "intents": d.get("intents"),
                  "session_id": None, "result": None}
        self.identifies.append(record)
        intents = d.get("intents")
        if conn.session is not None:
            code, reason = 4005, "Already authenticated."
        elif d.get("token") != self.sim.token:
            code, reason = 4004, "Authentication failed."
        elif not isinstance(intents, int) or not 0 <= intents <= ALL_INTENTS:
            code, reason = 4013, "Invalid intent(s)."
        elif intents & PRIVILEGED_INTENTS & ~self.sim.allowed_intents:
            code, reason = 4014, "Disallowed intent(s)."
        else:
            code, reason = 0, ""
        if code:
            record["result"] = code
            self.sim._changed()
            await conn.close(code, reason)
            return
        session = _Session(uuid.uuid4().hex, intents, d.get("shard"))
        self.sessions[session.id] = session
        async with session.lock:
            session.conn, conn.session = conn, session
            await self._send(session, "READY", self._ready(session))
            await self._send(session, "GUILD_CREATE", self.sim._guild_object(intents))
        record.update(session_id=session.id, result="ready")
        self.sim._changed()

    def _ready(self, session: _Session) -> dict:
        sim = self.sim
        ready = {
            "v": 10, "user": sim._user_object(sim.bot_user_id) | {"verified": True,
                                                                    "mfa_enabled": False},
            "guilds": [{"id": str(sim.guild_id), "unavailable": True}],
            "session_id": session.id, "session_type": "normal",
            "resume_gateway_url": sim.gateway_url + "/resume",
            "application": {"id": str(sim.app_id), "flags": sim._app_flags()},
            "private_channels": [], "relationships": [], "presences": [],
            "user_settings": {}, "geo_ordered_rtc_regions": [], "guild_join_requests": [],
        }
        if session.shard is not None:
            ready["shard"] = session.shard
        return ready

    async def _resume(self, conn: _Conn, d: dict) -> None:
        record = {"at": time.monotonic(), "path": conn.path, "session_id": d.get("session_id"),
                  "seq": d.get("seq"), "replayed": 0, "result": None}
        self.resumes.append(record)
        session = self.sessions.get(d.get("session_id"))
        seq = d.get("seq") or 0
        if conn.session is not None:
            record["result"] = 4005
            await conn.close(4005, "Already authenticated.")
            return
        if d.get("token") != self.sim.token:
            record["result"] = 4004
            await conn.close(4004, "Authentication failed.")
            return
        if session is None or (session.sent and seq < session.sent[0][0] - 1):
            record["result"] = "invalid"  # the client identifies again
            self.sim._changed()
            await conn.send({"op": 9, "s": None, "t": None, "d": False})
            return
        async with session.lock:
            previous = session.conn
            session.conn, conn.session = conn, session
            if previous is not None:
                previous.session = None
            missed = [event for event in session.sent if event[0] > seq]
            for s, t, data in missed:
                await conn.send({"op": 0, "s": s, "t": t, "d": data})
                self._received(t, data)
            session.seq += 1
            await conn.send({"op": 0, "s": session.seq, "t": "RESUMED", "d": {}})
        record.update(result="resumed", replayed=len(missed))
        self.sim._changed()
        if previous is not None:  # Discord drops the old socket of a resumed session
            await previous.close(4000, "Session resumed elsewhere.")

    def _detach(self, conn: _Conn) -> None:
        session = conn.session
        if session is None or session.conn is not conn:
            return
        session.conn, session.detached_at = None, time.monotonic()
        # A client that closes with 1000/1001 ends its session (discord.py's close() does);
        # every other drop leaves it resumable.
        if not conn.closed_by_us and conn.ws.close_code in (1000, 1001):
            self.sessions.pop(session.id, None)

    # -- dispatch --------------------------------------------------------------------------
    async def dispatch(self, event: str, data: dict) -> None:
        """Send ``event`` to every session whose intents allow it; a detached session buffers
        it for its RESUME."""
        cutoff = time.monotonic() - self.sim.resume_window_s
        for sid, session in list(self.sessions.items()):
            if session.conn is None and session.detached_at < cutoff:
                del self.sessions[sid]
                continue
            visible = self._visible(session, event, data)
            if visible is not None:
                async with session.lock:
                    await self._send(session, event, visible)

    async def _send(self, session: _Session, event: str, data: dict) -> None:
        """Number and buffer one dispatch; the caller holds ``session.lock``."""
        session.seq += 1
        session.sent.append((session.seq, event, data))
        if session.conn is not None:
            await session.conn.send({"op": 0, "s": session.seq, "t": event, "d": data})
            self._received(event, data)

    def _received(self, event: str, data: dict) -> None:
        if event in ("MESSAGE_CREATE", "INTERACTION_CREATE") and "id" in data:
            self.received.add(str(data["id"]))

    def _visible(self, session: _Session, event: str, data: dict) -> dict | None:
        needed = EVENT_INTENTS.get(event, 0)
        direct = event.startswith("MESSAGE_") and "guild_id" not in data
        if direct:  # a DM: its own intent, and its content is always sent
            needed = DIRECT_MESSAGES
        if needed and not session.intents & needed:
            return None
        data = copy.deepcopy(data)  # a snapshot: later edits must not change a replay
        if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE") and not direct \
                and not session.intents & MESSAGE_CONTENT:
            bot = str(self.sim.bot_user_id)
            mentioned = any(user.get("id") == bot for user in data.get("mentions", []))
            if data.get("author", {}).get("id") != bot and not mentioned:
                data.update(content="", embeds=[], attachments=[], components=[])
                data.pop("poll", None)
        return data

    # -- fault knobs -----------------------------------------------------------------------
    async def close_all(self, code: int, reason: str = "") -> int:
        conns = list(self.conns)
        await asyncio.gather(*(conn.close(code, reason) for conn in conns))
        return len(conns)

    async def send_all(self, payload: dict) -> int:
        conns = list(self.conns)
        await asyncio.gather(*(conn.send(payload) for conn in conns))
        return len(conns)

    def silence(self) -> int:
        for conn in self.conns:
            conn.silent = True
        return len(self.conns)
