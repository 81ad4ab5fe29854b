"""Human rendering of the status snapshot (``swarm status`` without ``--json``)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

_STATE_STYLE = {"running": "green", "failed": "red", "restarting": "yellow",
                "starting": "yellow", "disabled": "dim", "stopped": "dim"}


def tree_order(services: dict) -> list[tuple[int, str]]:
    """(depth, name) in supervision-tree order: each supervisor followed by its children."""
    children: dict[str, list[str]] = {}
    for name, view in services.items():
        children.setdefault(view.get("parent") or "swarm", []).append(name)
    out: list[tuple[int, str]] = []

    def walk(parent: str, depth: int) -> None:
        for name in children.get(parent, []):
            out.append((depth, name))
            walk(name, depth + 1)

    walk("swarm", 0)
    seen = {n for _, n in out}
    out.extend((0, n) for n in services if n not in seen)
    return out


def _tty() -> bool:
    import sys
    return sys.stdout.isatty()


def _size(n: int) -> str:
    return f"{n / 1048576:.1f} MiB" if n else "-"


def _uptime(seconds: float) -> str:
    if not seconds:
        return "-"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{seconds:.1f}s")


def make_console() -> Console:
    """A console that keeps rows readable when the output is a pipe or a file."""
    return Console(highlight=False, width=None if _tty() else 160)


def print_status(status: dict, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(status_table(status))
    total = status.get("total_uss_bytes")
    if total:
        console.print(f"total USS of actor processes: {_size(total)}")


def status_table(status: dict) -> Table:
    """The status snapshot as a table, one row per actor in tree order."""
    services = status.get("services", {})
    table = Table(title="swarm: " + ("healthy" if status.get("healthy") else "NOT healthy"),
                  title_justify="left")
    for col in ("NAME", "STATE", "HEALTH", "PID", "RESTARTS", "UPTIME", "RSS", "USS", "CPU%",
                "ERR/MIN", "DETAIL"):
        table.add_column(col, no_wrap=col != "DETAIL")
    for depth, name in tree_order(services):
        v = services[name]
        style = _STATE_STYLE.get(v["state"], "")
        table.add_row("  " * depth + name, f"[{style}]{v['state']}[/]" if style else v["state"],
                      v.get("health", ""), str(v["pid"] or "-"), str(v["restarts"]),
                      _uptime(v["uptime_s"]), _size(v["rss_bytes"]), _size(v.get("uss_bytes", 0)),
                      f"{v.get('cpu_percent', 0.0):.1f}",
                      str((v.get("errors") or {}).get("per_minute", 0)),
                      Text(v["detail"] or v.get("last_error") or ""))  # literal, no markup
    alerts = status.get("alerts") or []
    if alerts:
        last = alerts[-1]
        table.caption = (f"last alert: [{last['severity']}] {last['service']}: {last['summary']}"
                         + (f" (x{last['count']})" if last.get("count", 1) > 1 else ""))
    return table
