"""What the chat services (Discord, Twitch) share: the admin requests a chat command turns
into, on the client's loop, and the actor side that answers them.

A chat service is a thin actor (:class:`ChatService`) whose client runs on an asyncio loop
behind an :class:`~system.bridge.AsyncBridge`. A command, once the service's permission check
passed, calls :class:`AdminClient`: each call is a bridge ``ask`` that the actor turns into the
admin request the CLI sends (to the admin's cached address, checked against the registry on
each request: the admin may have restarted), carrying the principal, so CLI and chat share one audit trail::

    admin = AdminClient(bridge, agents=["Agent-1"], platform="twitch")
    queue_id = await admin.send(who, "Agent-1", "rerun the tests")   # ActionFailed: one line

Rendering the answers is each platform's own business (embeds, one chat line).

A command the client has received but not answered when its process dies (a SIGKILL, an OOM
kill) would be lost without a word: the platform does not deliver it again. The
:class:`Journal` keeps such commands in SQLite until they are answered; the next start tells
each user that theirs was interrupted and may or may not have been done.
"""
from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from thespian.actors import ActorExitRequest

from actors.queue.commands import text_item
from actors.queue.core import NOT_COMMITTED
from system import protocol
from system.permissions import Principal
from system.service import ServiceActor

ASK_TIMEOUT_S = 14.0    # the loop's wait; the admin gives up on its own hops after 10 s
ADMIN_TIMEOUT_S = 12.0  # the actor's wait for the admin's answer
PRIORITIES = ("urgent", "high", "normal", "low")


JOURNAL_MAX_AGE_S = 600.0  # older interrupted commands are dropped, not announced
RECENT_COMMANDS = 10       # the last commands a chat service shows (swarm top, status --json)


class Journal:
    """Commands being handled, in ``path`` (SQLite): :meth:`begin` when one arrives,
    :meth:`end` when it was answered, :meth:`interrupted` at the next start. The writes run
    in order on one worker thread and are not awaited: they cost the command nothing (a
    command that arrived just before the process died may be missed: it was not written)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # survives a process kill, which is its job
        self.db.execute("CREATE TABLE IF NOT EXISTS inflight (key TEXT PRIMARY KEY, "
                        "channel TEXT, user TEXT, text TEXT, at REAL)")
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-journal")

    def interrupted(self, now: float | None = None) -> list[dict]:
        """The commands a previous process left unanswered (recent ones), forgotten now."""
        now = time.time() if now is None else now
        rows = self.db.execute("SELECT key, channel, user, text, at FROM inflight "
                               "WHERE at > ? ORDER BY at", (now - JOURNAL_MAX_AGE_S,)).fetchall()
        self.db.execute("DELETE FROM inflight")
        return [dict(zip(("key", "channel", "user", "text", "at"), r)) for r in rows]

    def begin(self, key: str, channel: str, user: str, text: str) -> None:
        self._later("INSERT OR REPLACE INTO inflight VALUES (?, ?, ?, ?, ?)",
                    (key, channel, user, text[:200], time.time()))

    def end(self, key: str) -> None:
        self._later("DELETE FROM inflight WHERE key = ?", (key,))

    def _later(self, sql: str, args: tuple) -> None:
        self.worker.submit(self.db.execute, sql, args)

    def close(self) -> None:
        self.worker.shutdown(wait=True)
        self.db.close()


@contextlib.contextmanager
def handling(journal: Journal, bridge, key: str, channel: str, user: str, text: str,
             label: str) -> Iterator[None]:
    """Around one chat command: journaled until answered (an error escaping counts: the error
    path answered it); then, with how long it took, posted to the actor as recent activity
    (``label`` names the user there). Cancelled, because the client is stopping, it stays
    in the journal: a graceful stop of the service mid-command is told at the next start,
    as a SIGKILL is."""
    journal.begin(key, channel, user, text)
    started = time.monotonic()
    try:
        yield
    except (asyncio.CancelledError, GeneratorExit):  # the client is stopping mid-command (its
        raise  # task cancelled, or closed with the loop): unanswered, it stays journaled
    except BaseException:
        _handled(journal, bridge, key, label, text, started)
        raise
    task = asyncio.current_task()
    if task is None or not task.cancelling():  # discord.py swallows a command's cancellation
        _handled(journal, bridge, key, label, text, started)


def _handled(journal: Journal, bridge, key: str, label: str, text: str, started: float) -> None:
    journal.end(key)
    bridge.post(command_done(label, text, (time.monotonic() - started) * 1000))


def command_done(label: str, text: str, ms: float | None = None) -> tuple:
    """The bridge event of one command for the actor's recent activity (ChatService)."""
    return ("command", {"at": round(time.time(), 3), "user": label[:40], "text": text[:80],
                        "ms": None if ms is None else round(ms)})


def interrupted_notice(text: str) -> str:
    return (f"your command `{text}` was interrupted by a restart of the bot; it may or may "
            "not have been done: check status before trying again.")


class ActionFailed(Exception):
    """The admin refused or did not answer, or the request is wrong: one line for the user."""


def find_agent(name: str, agents: Sequence[str]) -> str:
    """The configured agent called ``name`` (any case); ActionFailed naming them if none.

    >>> find_agent("agent-2", ["Agent-1", "Agent-2"])
    'Agent-2'
    """
    by_fold = {a.casefold(): a for a in agents}
    agent = by_fold.get(name.strip().casefold())
    if agent is None:
        raise ActionFailed(f"No agent named {name!r}. Agents: {', '.join(agents) or 'none'}.")
    return agent


class AdminClient:
    """Admin requests through the bridge, from the client's loop. ``platform`` names the
    surface in the ``Via`` header of every message it enqueues."""

    def __init__(self, bridge, agents: Sequence[str], platform: str):
        self.bridge = bridge
        self.agents = list(agents)
        self.platform = platform

    async def call(self, who: Principal, mtype: str, body: dict | None = None) -> dict:
        """One admin request (``admin.status``, ...); its answer, or ActionFailed."""
        try:
            answer = await self.bridge.ask({"type": mtype, "body": {
                **(body or {}), "principal": who.label}}, ASK_TIMEOUT_S)
        except TimeoutError:
            raise ActionFailed("The swarm did not answer in time; it may still be working on "
                               "it (check status).") from None
        if "error" in answer:
            error = answer["error"]
            if error["code"] == "storage":  # the queue refused to store it: nothing was queued
                why = error["detail"].removeprefix(NOT_COMMITTED)
                raise ActionFailed(f"Not queued: the queue cannot store messages right now "
                                   f"({why}); try again later.")
            raise ActionFailed(error["detail"])
        return answer["ok"]

    def agent(self, name: str) -> str:
        return find_agent(name, self.agents)

    def item(self, who: Principal, agent: str, text: str, priority: str | None = None,
             sender: str | None = None) -> dict:
        """One queue item for ``agent``; ``sender`` (default: the principal's label) is what
        the inbox file shows as From."""
        if not text.strip():
            raise ActionFailed("The message is empty.")
        if priority is not None and priority not in PRIORITIES:
            raise ActionFailed(f"Priority must be one of {', '.join(PRIORITIES)}.")
        try:
            return text_item(agent, text, priority=priority, sender=sender or who.label,
                             headers=[f"Via={self.platform} {who.label}"])
        except ValueError as exc:
            raise ActionFailed(str(exc)) from None

    async def send(self, who: Principal, agent: str, text: str, priority: str | None = None,
                   sender: str | None = None) -> str:
        """Enqueue ``text`` for the agent called ``agent``; the queue's id."""
        item = self.item(who, self.agent(agent), text, priority, sender)
        reply = await self.call(who, "admin.send", {"items": [item]})
        if reply["rejected"]:
            raise ActionFailed(f"Not queued: {reply['rejected'][0][1]}")
        return reply["ids"][0]

    async def send_to_all(self, who: Principal, text: str, priority: str | None = None,
                          sender: str | None = None) -> tuple[int, int, str]:
        """One message to every configured agent, in one batch: (accepted, total, why the
        rest were not queued)."""
        if not self.agents:
            raise ActionFailed("No agents are configured (agents.names).")
        items = [self.item(who, agent, text, priority, sender) for agent in self.agents]
        reply = await self.call(who, "admin.send", {"items": items})
        rejected = "; ".join(f"{self.agents[i]}: {why}" for i, why in reply["rejected"])
        return len(reply["accepted"]), len(items), rejected

    async def gas(self, who: Principal, op: str, body: dict | None = None) -> dict:
        """A gas pipeline or brain request (``admin.gas``: status, unstall, brain_*)."""
        return await self.call(who, "admin.gas", {"op": op, **(body or {})})

    async def nudge(self, who: Principal, agent: str) -> str:
        """Nudge a stalled agent; its name."""
        reply = await self.gas(who, "unstall", {"agent": self.agent(agent)})
        return reply.get("agent", agent)


class ChatService(ServiceActor):
    """The actor side of a chat service: answers the client's asks through the admin actor,
    parks the service on a final failure, and restarts it when its client loop died. Other
    client events go to :meth:`on_client_event`."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.recent: deque[dict] = deque(maxlen=RECENT_COMMANDS)

    def activity(self) -> list[dict]:
        return list(self.recent)

    def on_event(self, event) -> None:
        kind, value = event[0], event[1:]
        if kind == "ask":
            self._ask(*value)
        elif kind == "command":  # one answered (see handling)
            self.recent.append(value[0])
        elif kind == "fatal":
            self.log("error", "connection_failed", value[0])
            self.fail(value[0])
        elif kind == "bridge.error":  # the client loop died: a fresh actor starts a fresh loop
            self.log("error", "client_crashed", f"{type(value[0]).__name__}: {value[0]}",
                     exc=value[0])
            self.send(self.myAddress, ActorExitRequest())
        else:
            self.on_client_event(kind, *value)

    def on_client_event(self, kind: str, *value) -> None:
        pass

    def connection_changed(self, platform: str, state: dict) -> None:
        """Keep the client's connection state (health reads it), logging each change once."""
        if state.get("state") != self.connection.get("state"):
            self.log("info" if state["state"] == "ready" else "warning", "connection",
                     f"{platform} {state['state']}" + (f": {state['reason']}"
                                                       if state.get("reason") else ""))
        self.connection = state

    def _ask(self, rid: int, request: dict) -> None:
        """A client request for the admin actor (its address cached: ServiceActor.request_named);
        the answer goes back through the bridge."""
        mtype = protocol.TYPES.get(request.get("type", ""))
        if mtype is None or not mtype.name.startswith("admin."):
            self.bridge.answer(rid, _error("bad_request", f"not an admin request: {mtype}"))
            return

        def done(reply) -> None:
            if reply is None:
                self.bridge.answer(rid, _error("timeout", "The swarm did not answer in time."))
            elif reply.t == "error":
                self.bridge.answer(rid, _error(reply.b["code"], reply.b["detail"]))
            else:
                self.bridge.answer(rid, {"ok": reply.b})

        self.request_named("admin", mtype, request["body"], done, ADMIN_TIMEOUT_S,
                           lambda _: self.bridge.answer(rid, _error(
                               "not_ready", "The swarm's admin is restarting; try again.")))


def _error(code: str, detail: str) -> dict:
    return {"error": {"code": code, "detail": detail}}
