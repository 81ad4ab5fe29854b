"""What the bot shows: admin replies rendered as Discord embeds and lines (no I/O).

    >>> e = status_embed({"healthy": True, "services": {"queue": {
    ...     "state": "running", "health": "ok", "healthy": True, "restarts": 0,
    ...     "uptime_s": 75.0, "detail": "ready 0", "parent": "services"}}})
    >>> e.title, e.fields[0].name
    ('Swarm: healthy', '🟢 queue')
"""
from __future__ import annotations

import discord

from system.tables import _uptime, tree_order

_STATE_ICON = {"running": "🟢", "starting": "🟡", "restarting": "🟡", "stopping": "🟡",
               "failed": "🔴", "stopped": "⚫", "disabled": "⚪"}
_HEALTH_NOTE = {"degraded": " (degraded)", "failing": " (failing)", "unknown": ""}
MAX_FIELDS = 25  # Discord's limit per embed


def _clip(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _service_line(view: dict) -> str:
    parts = [view.get("state", "?") + _HEALTH_NOTE.get(view.get("health", ""), "")]
    if view.get("uptime_s"):
        parts.append(f"up {_uptime(view['uptime_s'])}")
    if view.get("restarts"):
        parts.append(f"{view['restarts']} restarts")
    if view.get("rss_bytes"):
        parts.append(f"{view['rss_bytes'] / 1048576:.0f} MiB")
    line = ", ".join(parts)
    if view.get("detail"):
        line += "\n" + _clip(view["detail"], 300)
    return line


def status_embed(status: dict, service: str | None = None) -> discord.Embed:
    """The tree (as ``swarm status``), or one service; KeyError for an unknown service."""
    services = status.get("services", {})
    if service is not None:
        view = services[service]
        embed = discord.Embed(title=f"{_STATE_ICON.get(view['state'], '❔')} {service}",
                              description=_service_line(view))
        if view.get("last_error"):
            embed.add_field(name="last error", value=_clip(view["last_error"], 1000),
                            inline=False)
        return embed
    healthy = status.get("healthy")
    embed = discord.Embed(title="Swarm: " + ("healthy" if healthy else "NOT healthy"),
                          colour=discord.Colour.green() if healthy else discord.Colour.red())
    names = [name for _, name in tree_order(services)
             if services[name].get("kind") != "supervisor"]
    for name in names[:MAX_FIELDS]:
        view = services[name]
        embed.add_field(name=f"{_STATE_ICON.get(view.get('state'), '❔')} {name}",
                        value=_clip(_service_line(view), 1024), inline=True)
    if len(names) > MAX_FIELDS:
        embed.set_footer(text=f"{len(names) - MAX_FIELDS} more: swarm status shows all")
    return embed


def queue_embed(stats: dict) -> discord.Embed:
    d = stats["depth"]
    health = stats.get("health", {})
    embed = discord.Embed(title=f"Queue: {health.get('status', '?')}",
                          description=_clip(health.get("detail") or "", 500) or None)
    embed.add_field(name="ready", value=str(d["ready"]))
    embed.add_field(name="leased", value=str(d["leased"]))
    embed.add_field(name="dead", value=str(d["dead"]))
    embed.add_field(name="oldest ready", value=f"{stats.get('oldest_ready_age_s', 0):.1f}s")
    rates = stats.get("rates", {})
    if rates:
        embed.add_field(name="rates/s (last minute)", inline=False,
                        value=_clip(", ".join(f"{k} {v:g}" for k, v in rates.items()), 1024))
    ready = stats.get("ready_by_recipient", {})
    if ready:
        embed.add_field(name="ready by recipient", inline=False, value=_clip(
            ", ".join(f"{r} {n}" for r, n in ready.items()), 1024))
    return embed


def dlq_text(reply: dict, offset: int) -> str:
    messages, total = reply.get("messages", []), reply.get("total", 0)
    if not messages:
        return f"No dead letters at offset {offset} ({total} in all)." if offset and total \
            else "No dead letters."
    lines = [f"Dead letters {offset + 1}–{offset + len(messages)} of {total}:"]
    for m in messages:
        lines.append(f"`{m['id']}` → {m['recipient']} ({m['attempts']} tries): "
                     f"{_clip(m.get('last_error') or '', 120)}")
    if total > offset + len(messages):
        lines.append(f"More: `dlq {offset + len(messages)}`")
    return _clip("\n".join(lines), 1900)


def agents_embed(agents: list[dict]) -> discord.Embed:
    """One field per agent: its gas state and progress when known, and its inbox depth."""
    embed = discord.Embed(title=f"Agents ({len(agents)})")
    for agent in agents[:MAX_FIELDS]:
        gas = agent.get("gas")
        if gas:
            line = f"{gas.get('stage', '?')} {gas.get('progress', 0):g}%"
            if gas.get("task"):
                line += f" — {_clip(gas['task'], 200)}"
        else:
            line = "no gas data"
        line += f"\ninbox: {agent.get('inbox', 0)} waiting"
        embed.add_field(name=agent["name"], value=_clip(line, 1024), inline=True)
    return embed

