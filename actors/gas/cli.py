"""``swarm gas status|progress|unstall|history`` and ``swarm brain add|search|show|list|export``:
the pipeline's commands, registered through the ``swarm.commands`` entry point (see
``system/cli.py``)."""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from actors.gas.brain import CATEGORIES, export_markdown
from system import protocol
from system.admin import AdminClient
from system.cli import config_of, emit, fail, int_in

EXPORT_PAGE = 100  # entries per brain.list request: 100 of the largest stay under 16 MiB


def register(add, common) -> None:
    action = _group(add, common, "gas", "the auto gas pipeline: status, progress, unstall, "
                    "history")
    action("status", "every agent: progress, stage, task, next agent, gas sent", cmd_status)
    p = action("progress", "report an agent's progress (as its status.json would)", cmd_progress)
    p.add_argument("agent", metavar="AGENT")
    p.add_argument("progress", type=float, metavar="PCT")
    p.add_argument("--task", default=None, metavar="T", help="its current task (default: the "
                   "last one seen)")
    p = action("unstall", "nudge an agent again and restart its stall timer", cmd_unstall)
    p.add_argument("agent", metavar="AGENT")
    p = action("history", "gas sent, newest first", cmd_history)
    p.add_argument("agent", nargs="?", metavar="AGENT")
    p.add_argument("--limit", type=int_in(1, 10_000), default=50, metavar="N")

    brain_action = _group(add, common, "brain", "the swarm brain: add, search, show, list, "
                          "export")
    p = brain_action("add", "add an entry", cmd_brain_add)
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--title", required=True)
    p.add_argument("--category", default="learning", choices=CATEGORIES)
    p.add_argument("--tags", default="", metavar="A,B", help="comma-separated tags")
    p.add_argument("--author", default=None, help="default: the CLI user")
    p = brain_action("search", "ranked full-text search", cmd_brain_search)
    p.add_argument("query", metavar="QUERY")
    p.add_argument("--category", default=None, choices=CATEGORIES)
    p.add_argument("--limit", type=int_in(1, 100), default=10, metavar="N")
    p = brain_action("show", "one entry", cmd_brain_show)
    p.add_argument("id", type=int_in(1, 2**62), metavar="ID")
    p = brain_action("list", "entries, newest first", cmd_brain_list)
    p.add_argument("--category", default=None, choices=CATEGORIES)
    p.add_argument("--limit", type=int_in(1, 1000), default=20, metavar="N")
    p.add_argument("--offset", type=int_in(0, 2**62), default=0, metavar="N")
    p = brain_action("export", "write every entry into DIR as Markdown, one file per category "
                     "(learning.md, ...)", cmd_brain_export)
    p.add_argument("dir", metavar="DIR", help="created if missing; must be empty unless --force")
    p.add_argument("--force", action="store_true", help="write into a non-empty DIR, replacing "
                   "the category files there")


def _group(add, common, name: str, text: str):
    """A command with actions: returns ``action(name, help, func) -> parser``."""
    sub = add(name, None, text).add_subparsers(dest=f"{name}_command", required=True,
                                               metavar="ACTION")

    def action(action_name: str, help_text: str, func):
        p = sub.add_parser(action_name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p
    return action


def _call(args, op: str, body: dict | None = None) -> dict:
    return AdminClient(config_of(args).data).call(protocol.ADMIN_GAS, {"op": op, **(body or {})})


def bar(progress: float, width: int = 20) -> str:
    """
    >>> bar(50, 10), bar(250, 4), bar(-5, 4)
    ('█████░░░░░', '████', '░░░░')
    """
    full = round(max(0.0, min(progress, 100.0)) / 100 * width)
    return "█" * full + "░" * (width - full)


def when(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def print_status(reply: dict) -> None:
    print(f"{'AGENT':<10} {'PROGRESS':<27} {'STAGE':<9} {'NEXT':<10} {'UPDATED':<9} "
          f"{'GAS SENT':<30} TASK")
    for a in reply["agents"]:
        sent = ", ".join(f"{k} {when(t)}" for k, t in a["sent"].items()) or "-"
        print(f"{a['agent']:<10} {bar(a['progress'])} {a['progress']:>5.1f}% {a['stage']:<9} "
              f"{a['next'] or '-':<10} {when(a['updated']):<9} {sent:<30} {a['task'] or '-'}"
              + (f"  ({a['problem']})" if a.get("problem") else ""))


def cmd_status(args) -> int:
    emit(args, _call(args, "status"), print_status)
    return 0


def cmd_progress(args) -> int:
    reply = _call(args, "progress", {"agent": args.agent, "progress": args.progress,
                                     **({"task": args.task} if args.task else {})})
    emit(args, reply, lambda r: print(f"{r['agent']}: {r['progress']:g}% on {r['task']} "
                                      f"({r['stage']})"))
    return 0


def cmd_unstall(args) -> int:
    reply = _call(args, "unstall", {"agent": args.agent})
    emit(args, reply, lambda r: print(f"{r['agent']} nudged; stall timer restarted"))
    return 0


def cmd_history(args) -> int:
    reply = _call(args, "history", {"limit": args.limit,
                                    **({"agent": args.agent} if args.agent else {})})

    def show(r: dict) -> None:
        for g in r["gas"]:
            print(f"{when(g['created_at'])}  {g['kind']:<8} {g['agent']} -> {g['next_agent']} "
                  f"at {g['progress']:g}% on {g['task']}  [{g['state']}] {g['msg_id']}")
        if not r["gas"]:
            print("no gas sent yet")
    emit(args, reply, show)
    return 0


def cmd_brain_add(args) -> int:
    client = AdminClient(config_of(args).data)
    reply = client.call(protocol.ADMIN_GAS, {
        "op": "brain_add", "title": args.title, "content": args.text, "category": args.category,
        "tags": [t for t in args.tags.split(",") if t.strip()],
        "author": args.author or client.principal})
    emit(args, reply, lambda r: print(f"added #{r['id']}"))
    return 0


def _print_entries(entries: list[dict], key: str = "snippet") -> None:
    for e in entries:
        tags = f" [{', '.join(e['tags'])}]" if e["tags"] else ""
        print(f"#{e['id']:<6} {e['category']:<9} {e['title']}{tags}")
        if e.get(key):
            print(f"        {e[key][:200]}")
    if not entries:
        print("nothing found")


def cmd_brain_search(args) -> int:
    reply = _call(args, "brain_search", {"query": args.query, "limit": args.limit,
                                         **({"category": args.category} if args.category
                                            else {})})
    emit(args, reply, lambda r: _print_entries(r["results"]))
    return 0


def cmd_brain_show(args) -> int:
    reply = _call(args, "brain_show", {"id": args.id})
    emit(args, reply, lambda e: print(f"#{e['id']} {e['title']} ({e['category']}, by "
                                      f"{e['author']}, {when(e['created_at'])})\n\n"
                                      f"{e['content']}"))
    return 0


def cmd_brain_list(args) -> int:
    reply = _call(args, "brain_list", {"limit": args.limit, "offset": args.offset,
                                       **({"category": args.category} if args.category else {})})
    emit(args, reply, lambda r: _print_entries(r["entries"], key=""))
    return 0


def cmd_brain_export(args) -> int:
    target = Path(args.dir)
    if target.exists() and not target.is_dir():
        return fail(f"{target} is not a directory")
    if target.is_dir() and any(target.iterdir()) and not args.force:
        return fail(f"{target} is not empty: give --force to write into it anyway")
    client = AdminClient(config_of(args).data)
    entries: dict[int, dict] = {}
    offset = 0
    while True:  # newest first; an entry added meanwhile shifts a page: ids deduplicate
        page = client.call(protocol.ADMIN_GAS, {"op": "brain_list", "limit": EXPORT_PAGE,
                                                "offset": offset})["entries"]
        entries.update((e["id"], e) for e in page)
        if len(page) < EXPORT_PAGE:
            break
        offset += EXPORT_PAGE
    files = export_markdown(entries.values())
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            _write_atomically(target / name, text)
    except OSError as exc:
        return fail(f"cannot write {exc.filename or target}: {exc.strerror}")
    counts = Counter(f"{e['category']}.md" for e in entries.values())
    emit(args, {"dir": str(target.resolve()), "entries": len(entries), "files": counts},
         lambda r: print(f"exported {r['entries']} entries to {r['dir']}"
                         + "".join(f"\n  {n}: {c}" for n, c in sorted(r["files"].items()))))
    return 0


def _write_atomically(path: Path, text: str) -> None:
    """Write a temp file beside ``path``, fsync it, rename it over ``path``: a reader (or a
    crash) never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
