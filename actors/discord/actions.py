"""What the bot can do, once a path (command, button, select, modal, plain text) has checked
the user's role: each action is a request to the admin actor, the same one the CLI sends,
carrying the principal; the answer is rendered for Discord.

    reply = await actions.run(who, "restart", service="queue")   # -> Reply(content, embed)

The command table (least role per command) lives here too, so that every path asks the same
policy the same question.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import discord

from actors.chat import PRIORITIES, ActionFailed, AdminClient
from actors.discord import render
from system.permissions import Principal

__all__ = ["COMMANDS", "HELP", "PRIORITIES", "ActionFailed", "Actions", "Reply",
           "plain_message", "principal_of"]

# The least role of each command; `help` lists a user's own, the policy refuses the rest.
COMMANDS: dict[str, str] = {
    "help": "viewer", "status": "viewer", "agents": "viewer", "queue": "viewer",
    "gas": "viewer", "brain search": "viewer",
    "dlq": "operator", "requeue": "operator", "message": "operator", "broadcast": "operator",
    "unstall": "operator", "brain add": "operator",
    "restart": "admin", "reload": "admin", "permissions": "admin", "panel": "admin",
}
HELP = {
    "help": "what you may run", "status": "`status [service]`: the tree, or one service",
    "agents": "every agent: gas state, task, inbox", "queue": "queue statistics",
    "gas": "the gas pipeline", "brain search": "`brain search TEXT`: the swarm brain",
    "dlq": "`dlq [offset]`: dead letters", "requeue": "`requeue ID|all`: requeue dead letters",
    "message": "`message AGENT TEXT`: a message to an agent",
    "broadcast": "`broadcast TEXT`: a message to every agent",
    "unstall": "`unstall AGENT`: nudge a stalled agent",
    "brain add": "`brain add TITLE | TEXT`: add to the swarm brain",
    "restart": "`restart SERVICE`", "reload": "re-read the config file",
    "permissions": "`permissions USER [COMMAND]`: who may run what, and why",
    "panel": "post the control panel",
}
_PLAIN = re.compile(r"^\s*@?([A-Za-z0-9][A-Za-z0-9_.-]*)\s*:\s*(\S.*)$", re.DOTALL)


class Reply(NamedTuple):
    content: str | None = None
    embed: discord.Embed | None = None


def principal_of(user: discord.abc.User) -> Principal:
    roles = tuple(str(r.id) for r in getattr(user, "roles", ()))
    return Principal("discord", str(user.id), getattr(user, "display_name", user.name), roles)


def plain_message(text: str, agents: list[str]) -> tuple[str, str] | None:
    """``Agent-3: check the build`` -> (``Agent-3``, ``check the build``) when the name is an
    agent's (case-insensitive); None otherwise.

    >>> plain_message("agent-3: check the build", ["Agent-3"])
    ('Agent-3', 'check the build')
    >>> plain_message("note: nothing", ["Agent-3"]) is None
    True
    """
    match = _PLAIN.match(text)
    if not match:
        return None
    by_fold = {a.casefold(): a for a in agents}
    agent = by_fold.get(match.group(1).casefold())
    return (agent, match.group(2).strip()) if agent else None


class Actions(AdminClient):
    """The admin requests of :class:`~actors.chat.AdminClient`, rendered for Discord."""

    def __init__(self, bridge, agents: list[str]):
        super().__init__(bridge, agents, platform="discord")

    async def status(self, who: Principal, service: str | None = None) -> Reply:
        status = await self.call(who, "admin.status")
        if service is not None and service not in status.get("services", {}):
            known = ", ".join(sorted(status.get("services", {})))
            return Reply(f"No service named `{service}`. Known: {known}.")
        return Reply(embed=render.status_embed(status, service))

    async def queue(self, who: Principal) -> Reply:
        return Reply(embed=render.queue_embed(await self.call(who, "admin.queue",
                                                              {"op": "stats"})))

    async def agents_view(self, who: Principal) -> Reply:
        answer = await self.call(who, "admin.agents")
        return Reply(embed=render.agents_embed(answer["agents"]))

    async def dlq(self, who: Principal, offset: int = 0) -> Reply:
        if offset < 0:
            return Reply("The offset cannot be negative.")
        reply = await self.call(who, "admin.queue", {"op": "dlq", "limit": 10, "offset": offset})
        return Reply(render.dlq_text(reply, offset))

    async def requeue(self, who: Principal, target: str) -> Reply:
        body = {"all": True} if target == "all" else {"ids": [target]}
        reply = await self.call(who, "admin.queue", {"op": "requeue", **body})
        if reply.get("missing"):
            return Reply(f"Not a dead letter: `{target}`.")
        return Reply(f"Requeued {reply['requeued']}.")

    async def message(self, who: Principal, agent: str, text: str,
                      priority: str | None = None) -> Reply:
        agent = self.agent(agent)
        return Reply(f"Queued for {agent}: `{await self.send(who, agent, text, priority)}`")

    async def broadcast(self, who: Principal, text: str, priority: str | None = None) -> Reply:
        accepted, total, rejected = await self.send_to_all(who, text, priority)
        return Reply(f"Queued for {accepted} of {total} agents."
                     + (f" Not queued: {rejected}" if rejected else ""))

    async def restart(self, who: Principal, service: str) -> Reply:
        reply = await self.call(who, "admin.restart", {"name": service})
        return Reply(f"{service} restarted (pid {reply['pid']})." if reply.get("pid")
                     else f"{service} is restarting.")

    async def reload(self, who: Principal) -> Reply:
        reply = await self.call(who, "admin.reload")
        summary = reply.get("summary", {})
        if summary.get("empty"):
            return Reply("Config reloaded: nothing changed.")
        changed = [f"{k}: {', '.join(summary[k])}" for k in ("added", "removed") if summary[k]]
        changed += [f"changed {n}" for n in summary.get("changed", {})]
        changed += [k for k in ("supervision", "health", "alerts", "agents") if summary.get(k)]
        return Reply("Config reloaded: " + ("; ".join(changed) or "system settings") + ".")

    async def unstall(self, who: Principal, agent: str) -> Reply:
        return Reply(f"Nudged {await self.nudge(who, agent)}; its stall timer starts again.")

    async def brain_search(self, who: Principal, query: str) -> Reply:
        reply = await self.gas(who, "brain_search", {"query": query, "limit": 5})
        if not reply["results"]:
            return Reply("Nothing found in the brain.")
        return Reply("\n".join(f"**#{r['id']} {r['title']}** ({r['category']}): {r['snippet']}"
                               for r in reply["results"])[:1900])

    async def brain_add(self, who: Principal, text: str) -> Reply:
        title, _, content = text.partition("|")
        if not title.strip() or not content.strip():
            return Reply("Give a title and the text, separated by `|`.")
        reply = await self.gas(who, "brain_add", {
            "title": title.strip(), "content": content.strip(), "category": "learning",
            "author": who.label})
        return Reply(f"Added to the brain as #{reply['id']}.")
