"""What the Twitch bot says: admin answers as one chat line each (no I/O). The output limiter
splits a line over 500 characters; these keep them short anyway.

    >>> status_line({"healthy": True, "services": {
    ...     "queue": {"state": "running", "health": "ok", "kind": "service"},
    ...     "discord": {"state": "disabled", "health": "ok", "kind": "service"}}})
    'Swarm healthy: 1 running (queue); disabled: discord'
    >>> agent_line({"name": "Agent-2", "inbox": 3, "gas": {"stage": "HANDOFF",
    ...             "progress": 92, "task": "T7"}})
    'Agent-2: HANDOFF 92% on T7, inbox 3'
"""
from __future__ import annotations

from system.tables import _uptime


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def status_line(status: dict) -> str:
    """The tree in one line: healthy or not, what runs, what does not."""
    services = {n: v for n, v in status.get("services", {}).items()
                if v.get("kind") != "supervisor"}
    by_state: dict[str, list[str]] = {}
    for name, view in sorted(services.items()):
        state = view.get("state", "?")
        if state == "running" and view.get("health") not in (None, "ok"):
            state = view["health"]
        by_state.setdefault(state, []).append(name)
    running = by_state.pop("running", [])
    health = "healthy" if status.get("healthy") else "NOT healthy"
    parts = [f"Swarm {health}: {len(running)} running ({', '.join(running)})"]
    parts += [f"{state}: {', '.join(names)}" for state, names in sorted(by_state.items())]
    return _clip("; ".join(parts), 480)


def service_line(name: str, view: dict) -> str:
    parts = [f"{name}: {view.get('state', '?')}"]
    if view.get("health") not in (None, "ok"):
        parts[0] += f" ({view['health']})"
    if view.get("uptime_s"):
        parts.append(f"up {_uptime(view['uptime_s'])}")
    if view.get("restarts"):
        parts.append(f"{view['restarts']} restarts")
    line = ", ".join(parts)
    if view.get("detail"):
        line += f" — {view['detail']}"
    return _clip(line, 480)


def agent_line(agent: dict) -> str:
    gas = agent.get("gas")
    if gas:
        line = f"{agent['name']}: {gas.get('stage', '?')} {gas.get('progress') or 0:g}%"
        if gas.get("task"):
            line += f" on {_clip(gas['task'], 80)}"
    else:
        line = f"{agent['name']}: no gas data"
    return f"{line}, inbox {agent.get('inbox', 0)}"


def agents_line(agents: list[dict]) -> str:
    if not agents:
        return "No agents are configured."
    return _clip(" · ".join(agent_line(a) for a in agents), 480)


def gas_line(gas: dict) -> str:
    """The relay: who works on what, and who is next."""
    working = [a for a in gas.get("agents", []) if a.get("task")]
    if not working:
        return "Gas pipeline: no agent is working on a task."
    parts = [f"{a['agent']} {a.get('stage', '?')} {a.get('progress') or 0:g}% "
             f"(next {a.get('next') or 'nobody'})" for a in working]
    return _clip("Gas: " + " · ".join(parts), 480)


def notice_line(notice: dict) -> str:
    """A notification (gas milestone, alert) announced in chat."""
    kind = notice.get("kind", "alert")
    tag = "gas" if kind == "gas" else notice.get("severity", "info")
    return _clip(f"[{tag}] {notice.get('summary', '')}", 300)
