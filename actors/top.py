"""``swarm top``: the live dashboard.

One screen of the whole swarm, refreshed in place: the supervision tree (state, health,
restarts, CPU, memory), the queue's depth and rates, each agent's gas progress, the chat
services' connections and their last commands, the last alerts. It only reads, through the
admin actor (``admin.status``, ``admin.queue`` stats, ``admin.gas`` status), so any number can
run beside the swarm.

The parts are pure and tested without a terminal: :class:`Source` fetches a
:class:`Snapshot` (keeping the last good one, marked stale, while the swarm is away: a
restart under the dashboard is shown, not fatal), :func:`render` turns a snapshot into rich
renderables. :func:`run` is the thin loop: a rich ``Live`` on a terminal (``q`` or Ctrl-C
quits), plain text snapshots one after the other when the output is not a terminal.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from actors.gas.cli import bar, when
from actors.queue.commands import printable
from system import protocol
from system.admin import AdminClient
from system.cli import config_of
from system.tables import status_table

CALL_TIMEOUT_S = 2.0  # a slower admin shows as not reachable, for that refresh
ALERTS_SHOWN = 5
COMMANDS_SHOWN = 5
FEED_SHOWN = 8
CHAT_SERVICES = ("discord", "twitch")


def register(add, common) -> None:
    p = add("top", cmd_top, "live dashboard: tree, queue, gas, chat, alerts (q quits)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="refresh period")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    # the last lines of a file as a panel: swarm demo's timeline
    p.add_argument("--feed", metavar="FILE", help=argparse.SUPPRESS)


def cmd_top(args) -> int:
    config = config_of(args).data
    return run(config, interval=max(args.interval, 0.1), once=args.once,
               feed=Path(args.feed) if args.feed else None)


# -- data --------------------------------------------------------------------------------------
@dataclass
class Snapshot:
    at: float
    status: dict | None = None
    queue: dict | None = None
    gas: dict | None = None
    problems: dict[str, str] = field(default_factory=dict)
    """Why a part is missing or stale: "swarm" (the admin did not answer), "queue", "gas"."""
    fresh_at: float | None = None
    """When ``status`` was last fetched (older than ``at``: the swarm is away)."""


class Source:
    """Snapshots of a running swarm, through the admin actor; survives the swarm going away
    and coming back (a new client after a failure)."""

    def __init__(self, config: dict, timeout: float = CALL_TIMEOUT_S):
        self.config, self.timeout = config, timeout
        self.client: AdminClient | None = None
        self.last: Snapshot | None = None

    def fetch(self) -> Snapshot:
        snap = Snapshot(time.time())
        try:
            if self.client is None:
                self.client = AdminClient(self.config, timeout=self.timeout)
            snap.status = self.client.call(protocol.ADMIN_STATUS)
        except Exception as exc:  # noqa: BLE001 - shown on the dashboard, which goes on
            self.client = None
            snap.problems["swarm"] = _why(exc)
            if self.last is not None:  # the last good view, marked stale
                snap.status, snap.queue, snap.gas = (self.last.status, self.last.queue,
                                                     self.last.gas)
                snap.fresh_at = self.last.fresh_at
            self.last = snap
            return snap
        snap.fresh_at = snap.at
        services = snap.status.get("services", {})
        for part, mtype, op in (("queue", protocol.ADMIN_QUEUE, "stats"),
                                ("gas", protocol.ADMIN_GAS, "status")):
            if services.get(part, {}).get("state") != "running":
                continue
            try:
                setattr(snap, part, self.client.call(mtype, {"op": op}))
            except Exception as exc:  # noqa: BLE001 - that part says why
                snap.problems[part] = _why(exc)
        self.last = snap
        return snap


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def read_feed(path: Path | None, lines: int = FEED_SHOWN) -> list[str]:
    """The last ``lines`` lines of ``path`` (missing: none)."""
    if path is None:
        return []
    try:
        with path.open("rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - 16384, 0))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    return tail[-lines:]


# -- rendering -------------------------------------------------------------------------------
def clean(text: object, limit: int = 120) -> Text:
    """User or service text as plain text: no markup, no control characters (a chat line
    cannot forge colours or move the cursor)."""
    s = printable(str(text))
    return Text(s if len(s) <= limit else s[:limit - 1] + "…")


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1),
                  show_edge=False)
    for col in columns:
        table.add_column(col, no_wrap=True)
    return table


def header(snap: Snapshot) -> Text:
    line = Text(f"swarm top  {when(snap.at)}  ")
    status = snap.status
    if "swarm" in snap.problems:
        line.append("NOT REACHABLE", style="bold red")
        line.append(f" ({snap.problems['swarm'][:100]}); "
                    + (f"showing {when(snap.fresh_at)}" if snap.fresh_at else "waiting"))
    elif status is not None:
        healthy = status.get("healthy")
        line.append("healthy" if healthy else "NOT healthy",
                    style="bold green" if healthy else "bold red")
        if status.get("total_uss_bytes"):
            line.append(f"  USS {status['total_uss_bytes'] / 1048576:.0f} MiB")
    return line


def queue_panel(snap: Snapshot) -> RenderableType:
    if snap.queue is None:
        why = snap.problems.get("queue") or _not_running(snap, "queue")
        return Text(f"queue: {why}", style="dim")
    q = snap.queue
    d, rates, lat = q["depth"], q.get("rates", {}), q.get("latency_ms", {})
    table = _table("queue", "READY", "LEASED", "DEAD", "IN/s", "OUT/s", "ACK/s", "P95",
                   "HEALTH")
    p95 = lat.get("p95")
    table.add_row(str(d["ready"]), str(d["leased"]), str(d["dead"]),
                  f"{rates.get('enqueue', 0):g}", f"{rates.get('deliver', 0):g}",
                  f"{rates.get('ack', 0):g}", "-" if p95 is None else f"{p95:.0f} ms",
                  q.get("health", {}).get("status", "?"))
    return table


def gas_panel(snap: Snapshot) -> RenderableType:
    if snap.gas is None:
        why = snap.problems.get("gas") or _not_running(snap, "gas")
        return Text(f"gas: {why}", style="dim")
    table = _table("gas", "AGENT", "PROGRESS", "STAGE", "TASK", "NEXT", "LAST GAS")
    for a in snap.gas.get("agents", []):
        sent = a.get("sent") or {}
        last = max(sent.items(), key=lambda kv: kv[1] or 0, default=None)
        stage = a.get("stage", "?")
        table.add_row(clean(a.get("agent", "?"), 16),
                      f"{bar(a.get('progress', 0))} {a.get('progress', 0):5.1f}%",
                      Text(stage, style="bold red" if stage == "STALLED" else ""),
                      clean(a.get("task") or "-", 24), clean(a.get("next") or "-", 16),
                      f"{last[0]} {when(last[1])}" if last else "-")
    if not table.rows:
        return Text("gas: no agents seen yet", style="dim")
    return table


def chat_panel(snap: Snapshot) -> RenderableType:
    services = (snap.status or {}).get("services", {})
    table = _table("chat", "SERVICE", "STATE", "CONNECTION")
    commands = _table("recent commands", "AT", "WHERE", "USER", "COMMAND", "MS")
    recent = []
    for name in CHAT_SERVICES:
        view = services.get(name)
        if view is None:
            continue
        table.add_row(name, view.get("state", "?"), clean(view.get("detail") or "", 60))
        recent += [(name, a) for a in view.get("activity") or []]
    recent.sort(key=lambda na: na[1].get("at", 0))
    for name, a in recent[-COMMANDS_SHOWN:]:
        commands.add_row(when(a.get("at")), name, clean(a.get("user", "?"), 20),
                         clean(a.get("text", ""), 40), str(a.get("ms", "")))
    if not table.rows:
        return Text("chat: no chat service configured", style="dim")
    return Group(table, commands) if commands.rows else table


def alerts_panel(snap: Snapshot) -> RenderableType:
    alerts = ((snap.status or {}).get("alerts") or [])[-ALERTS_SHOWN:]
    if not alerts:
        return Text("alerts: none", style="dim")
    table = _table("last alerts", "AT", "SEVERITY", "SERVICE", "SUMMARY")
    for a in alerts:
        count = a.get("count", 1)
        table.add_row(when(a.get("ts")), a.get("severity", "?"), clean(a.get("service"), 16),
                      clean(f"{a.get('summary', '')}" + (f" (x{count})" if count > 1 else ""),
                            70))
    return table


def feed_panel(lines: list[str]) -> RenderableType:
    table = _table("timeline", "")
    table.show_header = False
    for line in lines:
        table.add_row(clean(line, 110))
    return table


def _not_running(snap: Snapshot, name: str) -> str:
    view = (snap.status or {}).get("services", {}).get(name)
    return "not configured" if view is None else view.get("state", "?")


def render(snap: Snapshot, feed: list[str] | None = None, plain: bool = False) -> Group:
    """The whole dashboard for one snapshot; ``plain``: ASCII boxes (not a terminal)."""
    parts: list[RenderableType] = [header(snap)]
    if snap.status is not None:
        tree = status_table(snap.status)
        tree.title = None
        tree.caption = None  # the alerts have a panel of their own
        tree.box, tree.show_edge = box.SIMPLE_HEAD, False
        parts.append(tree)
    parts += [queue_panel(snap), gas_panel(snap), chat_panel(snap), alerts_panel(snap)]
    if feed:
        parts.append(feed_panel(feed))
    if plain:  # ASCII rules, every table (the chat panel nests two)
        for part in parts:
            for table in part.renderables if isinstance(part, Group) else [part]:
                if isinstance(table, Table):
                    table.box = box.ASCII
    return Group(*parts)


# -- the loop ----------------------------------------------------------------------------------
class Keys:
    """Single key presses from a terminal on stdin (cbreak mode while inside); elsewhere a
    plain wait."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stdin
        self.saved = None

    def __enter__(self) -> Self:
        with contextlib.suppress(Exception):
            if self.stream.isatty():
                import termios
                import tty
                fd = self.stream.fileno()
                self.saved = termios.tcgetattr(fd)
                tty.setcbreak(fd)
        return self

    def __exit__(self, *exc) -> None:
        if self.saved is not None:
            import termios
            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self.saved)

    def wait(self, timeout: float) -> str:
        """The key pressed within ``timeout`` seconds, or ``""``."""
        if self.saved is None:
            time.sleep(timeout)
            return ""
        ready, _, _ = select.select([self.stream], [], [], timeout)
        return os.read(self.stream.fileno(), 1).decode(errors="replace") if ready else ""


def run(config: dict, *, interval: float = 1.0, once: bool = False, feed: Path | None = None,
        out=None) -> int:
    out = out if out is not None else sys.stdout
    source = Source(config)
    tty = out.isatty() and not once
    console = Console(file=out, highlight=False, force_terminal=tty or None,
                      no_color=not tty, width=None if tty else 140)
    try:
        if not tty:  # plain text: one snapshot after the other
            while True:
                snap = source.fetch()
                console.print(render(snap, read_feed(feed), plain=True))
                if once:
                    return 0 if "swarm" not in snap.problems else 3
                console.print()
                time.sleep(interval)
        with Keys() as keys, Live(render(source.fetch(), read_feed(feed)), console=console,
                                  screen=True, auto_refresh=False) as live:
            while keys.wait(interval).lower() != "q":
                live.update(render(source.fetch(), read_feed(feed)), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0
