"""``swarm send`` and ``swarm queue ...``: the queue's commands, registered through the
``swarm.commands`` entry point (see ``system/cli.py``)."""
from __future__ import annotations

import sys

from actors.queue import commands as qc
from system import protocol
from system.admin import AdminClient
from system.cli import config_of, emit, fail, int_in


def register(add, common) -> None:
    p = add("send", cmd_send, "enqueue a message (prints its id), or many with --file")
    p.add_argument("recipient", nargs="?", metavar="RECIPIENT", help="an agent or service name")
    p.add_argument("text", nargs="?", metavar="TEXT", help="the message text")
    p.add_argument("--priority", choices=["urgent", "high", "normal", "low"], default=None)
    p.add_argument("--type", default=None, metavar="T", help="message type (default text)")
    p.add_argument("--id", default=None, metavar="ID", help="message id (a re-send is a duplicate)")
    p.add_argument("--sender", default=None, metavar="S", help="sender name (default cli)")
    p.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                   help="a message header, shown in an inbox file as 'KEY: VALUE' (repeatable)")
    p.add_argument("--file", default=None, metavar="F.jsonl",
                   help="one JSON object per line: recipient, text|payload, priority, type, id, "
                        "sender, headers, delay_s (exit 1 if any line is rejected)")
    q = add("queue", None, "queue statistics, dead letters, requeue, purge")
    q_sub = q.add_subparsers(dest="queue_command", required=True, metavar="ACTION")

    def queue_action(name, text):
        action = q_sub.add_parser(name, parents=[common], help=text, description=text)
        action.set_defaults(func=cmd_queue)
        return action

    queue_action("stats", "depth, rates, latency, in-flight per consumer, health")
    p = queue_action("dlq", "list dead letters, oldest first")
    p.add_argument("--limit", type=int_in(1, 10_000), default=100, metavar="N",
                   help="at most N (default 100)")
    p.add_argument("--offset", type=int_in(0, 2**63 - 1), default=0, metavar="N",
                   help="skip the first N")
    p = queue_action("requeue", "make dead letters ready again (attempts reset)")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="every dead letter")
    p = queue_action("purge", "delete messages (default: the dead letters)")
    p.add_argument("--state", choices=["dead", "ready", "leased", "all"], default="dead")
    p.add_argument("--recipient", default=None, metavar="R", help="only messages for R")
    p.add_argument("--yes", action="store_true",
                   help="confirm purging ready, leased or all messages (not needed for dead)")


def cmd_send(args) -> int:
    cfg = config_of(args)
    agents = cfg.get("agents.names", None) or []
    if args.file:
        if args.recipient or args.text is not None:
            return fail("give RECIPIENT TEXT or --file, not both")
        if args.header or any(v is not None for v in (args.priority, args.type, args.id,
                                                      args.sender)):
            return fail("--priority, --type, --id, --sender and --header are for one message; "
                        "in a --file give them on each line")
        try:
            with open(args.file, "rb") as handle:
                items, rejected = qc.parse_jsonl(qc.read_lines(handle))
        except OSError as exc:
            return fail(f"cannot read {args.file}: {exc.strerror}")
        client = AdminClient(cfg.data)
        report = qc.send_batches(lambda batch: client.call(protocol.ADMIN_SEND, {"items": batch}),
                                 items, rejected, int(cfg.get("services.queue.batch_max", 500)))
        emit(args, report, qc.print_send_report)
        queued = set(report["ids"])
        for rcpt in sorted({r for _, i in items if isinstance(i["id"], str) and i["id"] in queued
                            and isinstance(r := i.get("recipient"), str)}):
            if note := qc.recipient_note(rcpt, agents):
                print(f"swarm: {note}", file=sys.stderr)
        return 1 if report["rejected"] or report["unsent"] else 0
    if not args.recipient or args.text is None:
        return fail("send needs RECIPIENT and TEXT, or --file F.jsonl")
    try:
        item = qc.text_item(args.recipient, args.text, priority=args.priority, type=args.type,
                            id=args.id, sender=args.sender, headers=args.header)
    except ValueError as exc:
        return fail(str(exc))
    reply = AdminClient(cfg.data).call(protocol.ADMIN_SEND, {"items": [item]})
    if reply["rejected"]:
        return fail(f"rejected: {reply['rejected'][0][1]}")
    if note := qc.recipient_note(args.recipient, agents):
        print(f"swarm: {note}", file=sys.stderr)
    out = {"id": reply["ids"][0], "duplicate": bool(reply["duplicates"])}
    emit(args, out, lambda r: print(r["id"] + (" (duplicate: already accepted, not queued "
                                                "again)" if r["duplicate"] else "")))
    return 0


def cmd_queue(args) -> int:
    cfg = config_of(args)
    op, body = args.queue_command, {}
    if op == "dlq":
        body = {"limit": args.limit, "offset": args.offset}
    elif op == "requeue":
        if bool(args.ids) == bool(args.all):
            return fail("requeue needs message ids or --all (not both)")
        body = {"all": True} if args.all else {"ids": args.ids}
    elif op == "purge":
        if args.recipient is not None and not args.recipient.strip():
            return fail("--recipient must not be empty (leave it out to purge every recipient)")
        if args.state != "dead" and not args.yes:
            return fail(f"purging {args.state} messages deletes undelivered messages for good; "
                         "add --yes")
        body = {"state": args.state, **({"recipient": args.recipient}
                                        if args.recipient is not None else {})}
    reply = AdminClient(cfg.data).call(protocol.ADMIN_QUEUE, {"op": op, **body})
    if op == "stats":
        emit(args, reply, qc.print_stats)
    elif op == "dlq":
        reply["messages"], reply["offset"] = qc.decode_payloads(reply["messages"]), args.offset
        emit(args, reply, qc.print_dlq)
    elif op == "requeue":
        emit(args, reply, lambda r: print(f"requeued {r['requeued']}"))
        if reply["missing"]:
            return fail("not dead letters: " + ", ".join(reply["missing"]))
    else:
        what = "" if args.state == "all" else f" {args.state}"
        where = f" of {args.recipient}" if args.recipient is not None else ""
        emit(args, reply, lambda r: print(f"purged {r['purged']}{what} messages{where}"))
    return 0
