"""``swarm gas status|progress|unstall|history``: the pipeline's commands, registered through
the ``swarm.commands`` entry point (see ``system/cli.py``)."""
from __future__ import annotations

import time

from system import protocol
from system.admin import AdminClient
from system.cli import config_of, emit, int_in


def register(add, common) -> None:
    g = add("gas", None, "the auto gas pipeline: status, progress, unstall, history")
    sub = g.add_subparsers(dest="gas_command", required=True, metavar="ACTION")

    def action(name, text, func):
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        p.set_defaults(func=func)
        return p

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


def _call(args, op: str, body: dict | None = None) -> dict:
    return AdminClient(config_of(args).data).call(protocol.ADMIN_GAS, {"op": op, **(body or {})})


def _bar(progress: float, width: int = 20) -> str:
    full = round(progress / 100 * width)
    return "█" * full + "░" * (width - full)


def _when(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def print_status(reply: dict) -> None:
    print(f"{'AGENT':<10} {'PROGRESS':<27} {'STAGE':<9} {'NEXT':<10} {'UPDATED':<9} "
          f"{'GAS SENT':<30} TASK")
    for a in reply["agents"]:
        sent = ", ".join(f"{k} {_when(t)}" for k, t in a["sent"].items()) or "-"
        print(f"{a['agent']:<10} {_bar(a['progress'])} {a['progress']:>5.1f}% {a['stage']:<9} "
              f"{a['next'] or '-':<10} {_when(a['updated']):<9} {sent:<30} {a['task'] or '-'}"
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
            print(f"{_when(g['created_at'])}  {g['kind']:<8} {g['agent']} -> {g['next_agent']} "
                  f"at {g['progress']:g}% on {g['task']}  [{g['state']}] {g['msg_id']}")
        if not r["gas"]:
            print("no gas sent yet")
    emit(args, reply, show)
    return 0
