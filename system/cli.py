"""The ``swarm`` command: launcher and admin client.

Every command takes ``-c/--config PATH`` before or after the subcommand and, where it prints
data, ``--json``. Exit status 0 on success; otherwise one clear line on stderr and non-zero.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from system import protocol
from system.admin import AdminClient, AdminError
from system.config import Config, load_config
from system.errors import ConfigError
from system.launcher import (
    AlreadyRunning,
    NotRunning,
    admin_endpoint,
    boot,
    data_dir,
    port_open,
    read_pid_file,
    shutdown,
    spawn_boot,
)
from system.logs import LOG_FILE, follow_log, format_line, log_files
from system.tables import make_console, print_status, status_table


def _config(args) -> Config:
    return load_config(getattr(args, "config", None))


def _json(args) -> bool:
    # -c and --json are on every (sub)parser with default SUPPRESS, so whichever parser saw
    # them sets them and none writes a default over them: absent means not given.
    return getattr(args, "json", False)


def _emit(args, data, human) -> None:
    if _json(args):
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        human(data)


# -- start / stop -----------------------------------------------------------------------------
def wait_healthy(config: dict, wait_s: float) -> dict:
    """Poll the status until every enabled actor is healthy; AdminError with the reason if not."""
    deadline = time.monotonic() + wait_s
    status: dict = {}
    while True:
        try:
            status = AdminClient(config, timeout=max(1.0, deadline - time.monotonic())).call(
                protocol.ADMIN_STATUS)
            if status.get("healthy"):
                return status
            if any(v["state"] == "failed" for v in status.get("services", {}).values()):
                deadline = 0.0  # parked until the config changes: waiting will not help
        except (AdminError, NotRunning):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            bad = [f"{n}: {v['state']}/{v['health']}" + (f" ({v['detail']})" if v["detail"] else "")
                   for n, v in status.get("services", {}).items() if not v["healthy"]]
            raise AdminError("unhealthy", "not healthy: " + "; ".join(bad))
        time.sleep(0.1)


def cmd_start(args) -> int:
    cfg = _config(args)
    host, port = admin_endpoint(cfg.data)
    if port_open(host, port):
        return _fail(f"a swarm is already running on {host}:{port}")
    proc = spawn_boot(cfg.file, cfg.data)
    if not args.detach:
        return _foreground(cfg, args.wait, proc)
    error = _booted(proc, cfg, args.wait)
    if error:
        return _fail(error)
    try:
        status = wait_healthy(cfg.data, args.wait)
    except (AdminError, NotRunning) as exc:
        return _fail(str(exc))
    _emit(args, status, print_status)
    return 0


def _booted(proc: subprocess.Popen, cfg: Config, wait_s: float) -> str | None:
    """Wait for the boot process; the reason it failed, or None."""
    console = data_dir(cfg.data) / "logs" / "console.log"
    try:
        code = proc.wait(timeout=wait_s + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return f"the swarm did not start within {wait_s:g}s; see {console}"
    if code != 0:
        return _last_line(console) or f"the swarm did not start; see {console}"
    return None


def _foreground(cfg: Config, wait_s: float, boot_proc: subprocess.Popen) -> int:
    """Show health, then the log, until Ctrl-C or SIGTERM (also during startup); then stop."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    code = 0
    try:
        error = _booted(boot_proc, cfg, wait_s)
        if error:
            return _fail(error)
        print_status(wait_healthy(cfg.data, wait_s))
        print("swarm running in the foreground; Ctrl-C stops it", flush=True)
        color = sys.stdout.isatty()
        alive = lambda: port_open(*admin_endpoint(cfg.data))
        for line in follow_log(data_dir(cfg.data) / "logs" / LOG_FILE, alive=alive):
            text = format_line(line, color)
            if text:
                print(text, flush=True)
        code = _fail("the swarm went away")
    except KeyboardInterrupt:
        with contextlib.suppress(subprocess.TimeoutExpired):
            boot_proc.wait(timeout=wait_s + 60)  # let a boot in progress finish, then stop it
    except (AdminError, NotRunning) as exc:
        code = _fail(str(exc))
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with contextlib.suppress(NotRunning):
            report = shutdown(cfg.data, timeout=cfg.get("supervision.shutdown_timeout_s", 5.0))
            print(f"swarm stopped{_killed(report)}", flush=True)
    return code


def cmd_boot(args) -> int:
    """Hidden: the detached launcher process. Boots the tree, then exits; the swarm lives on."""
    cfg = _config(args)
    try:
        boot(cfg.runtime())
    except (AlreadyRunning, RuntimeError) as exc:
        print(f"swarm: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def cmd_stop(args) -> int:
    cfg = _config(args)
    timeout = args.timeout if args.timeout is not None else cfg.get(
        "supervision.shutdown_timeout_s", 5.0)
    report = shutdown(cfg.data, timeout=timeout)
    _emit(args, report, lambda r: print(f"swarm stopped{_killed(r)}"))
    return 0


def _killed(report: dict) -> str:
    return f" (killed: {', '.join(map(str, report['killed']))})" if report["killed"] else ""


# -- admin commands -------------------------------------------------------------------------------
def cmd_status(args) -> int:
    cfg = _config(args)
    status = AdminClient(cfg.data).call(protocol.ADMIN_STATUS)
    status["pid_file"] = read_pid_file(cfg.data)
    _emit(args, status, print_status)
    return 0 if status.get("healthy") else 3


def cmd_top(args) -> int:
    """A live status table, refreshed every --interval seconds until Ctrl-C."""
    from rich.live import Live

    cfg = _config(args)
    client = AdminClient(cfg.data)
    try:
        with Live(status_table(client.call(protocol.ADMIN_STATUS)), auto_refresh=False,
                  console=make_console()) as live:
            while True:
                time.sleep(args.interval)
                live.update(status_table(client.call(protocol.ADMIN_STATUS)), refresh=True)
    except KeyboardInterrupt:
        return 0


def cmd_restart(args) -> int:
    cfg = _config(args)
    reply = AdminClient(cfg.data).call(protocol.ADMIN_RESTART, {"name": args.name})
    _emit(args, reply, lambda r: print(f"{args.name} restarted (pid {r['pid']})" if r.get("pid")
                                       else f"{args.name} restarting (the admin goes with it)"))
    return 0


# -- queue ----------------------------------------------------------------------------------------
def cmd_send(args) -> int:
    from actors.queue import commands as qc

    cfg = _config(args)
    agents = cfg.get("agents.names", None) or []
    if args.file:
        if args.recipient or args.text is not None:
            return _fail("give RECIPIENT TEXT or --file, not both")
        if args.header or any(v is not None for v in (args.priority, args.type, args.id,
                                                      args.sender)):
            return _fail("--priority, --type, --id, --sender and --header are for one message; "
                         "in a --file give them on each line")
        try:
            with open(args.file, "rb") as handle:
                items, rejected = qc.parse_jsonl(qc.read_lines(handle))
        except OSError as exc:
            return _fail(f"cannot read {args.file}: {exc.strerror}")
        client = AdminClient(cfg.data)
        report = qc.send_batches(lambda batch: client.call(protocol.ADMIN_SEND, {"items": batch}),
                                 items, rejected, int(cfg.get("services.queue.batch_max", 500)))
        _emit(args, report, qc.print_send_report)
        queued = set(report["ids"])
        for rcpt in sorted({r for _, i in items if isinstance(i["id"], str) and i["id"] in queued
                            and isinstance(r := i.get("recipient"), str)}):
            if note := qc.recipient_note(rcpt, agents):
                print(f"swarm: {note}", file=sys.stderr)
        return 1 if report["rejected"] or report["unsent"] else 0
    if not args.recipient or args.text is None:
        return _fail("send needs RECIPIENT and TEXT, or --file F.jsonl")
    try:
        item = qc.text_item(args.recipient, args.text, priority=args.priority, type=args.type,
                            id=args.id, sender=args.sender, headers=args.header)
    except ValueError as exc:
        return _fail(str(exc))
    reply = AdminClient(cfg.data).call(protocol.ADMIN_SEND, {"items": [item]})
    if reply["rejected"]:
        return _fail(f"rejected: {reply['rejected'][0][1]}")
    if note := qc.recipient_note(args.recipient, agents):
        print(f"swarm: {note}", file=sys.stderr)
    out = {"id": reply["ids"][0], "duplicate": bool(reply["duplicates"])}
    _emit(args, out, lambda r: print(r["id"] + (" (duplicate: already accepted, not queued "
                                                "again)" if r["duplicate"] else "")))
    return 0


def cmd_queue(args) -> int:
    from actors.queue import commands as qc

    cfg = _config(args)
    op, body = args.queue_command, {}
    if op == "dlq":
        body = {"limit": args.limit, "offset": args.offset}
    elif op == "requeue":
        if bool(args.ids) == bool(args.all):
            return _fail("requeue needs message ids or --all (not both)")
        body = {"all": True} if args.all else {"ids": args.ids}
    elif op == "purge":
        if args.recipient is not None and not args.recipient.strip():
            return _fail("--recipient must not be empty (leave it out to purge every recipient)")
        if args.state != "dead" and not args.yes:
            return _fail(f"purging {args.state} messages deletes undelivered messages for good; "
                         "add --yes")
        body = {"state": args.state, **({"recipient": args.recipient}
                                        if args.recipient is not None else {})}
    reply = AdminClient(cfg.data).call(protocol.ADMIN_QUEUE, {"op": op, **body})
    if op == "stats":
        _emit(args, reply, qc.print_stats)
    elif op == "dlq":
        reply["messages"], reply["offset"] = qc.decode_payloads(reply["messages"]), args.offset
        _emit(args, reply, qc.print_dlq)
    elif op == "requeue":
        _emit(args, reply, lambda r: print(f"requeued {r['requeued']}"))
        if reply["missing"]:
            return _fail("not dead letters: " + ", ".join(reply["missing"]))
    else:
        what = "" if args.state == "all" else f" {args.state}"
        where = f" of {args.recipient}" if args.recipient is not None else ""
        _emit(args, reply, lambda r: print(f"purged {r['purged']}{what} messages{where}"))
    return 0


def _changes(summary: dict) -> str:
    parts = [f"{what}: {', '.join(summary[what])}" for what in ("added", "removed")
             if summary[what]]
    parts += [f"changed {name} ({', '.join(keys)})" for name, keys in summary["changed"].items()]
    parts += [what for what in ("supervision", "health", "alerts", "agents") if summary[what]]
    return "; ".join(parts) or "system settings"


def cmd_reload(args) -> int:
    cfg = _config(args)  # validated here too: a bad file fails fast with every error
    reply = AdminClient(cfg.data).call(protocol.ADMIN_RELOAD)
    _emit(args, reply, _print_reload)
    return 0


def _print_reload(reply: dict) -> None:
    summary, previous = reply["summary"], reply.get("previous")
    if summary.get("empty"):
        if not previous:
            print("config reloaded: nothing changed")
            return
        # the admin's file watcher applied the edit a moment ago: say what that reload did
        summary = previous["summary"]
        at = time.strftime("%H:%M:%S", time.localtime(previous["at"]))
        print(f"config reloaded: nothing changed since the reload at {at} ({_changes(summary)})")
    else:
        print("config reloaded: " + _changes(summary))
    if summary["needs_full_restart"]:
        print("needs `swarm stop` + `swarm start` to apply: "
              + ", ".join(summary["needs_full_restart"]))


# -- logs -------------------------------------------------------------------------------------------
def cmd_logs(args) -> int:
    cfg = _config(args)
    directory = data_dir(cfg.data) / "logs"
    levels = ["debug", "info", "warning", "error"]
    floor = levels.index(args.level)

    def show(line: str) -> None:
        try:
            rec = json.loads(line)
        except ValueError:
            return
        if args.name and rec.get("service") != args.name:
            return
        if levels.index(rec.get("level", "info")) < floor if rec.get("level") in levels else False:
            return
        text = line if _json(args) else format_line(line, sys.stdout.isatty())
        if text:
            print(text, flush=True)

    files = [p for p in log_files(directory) if p.exists()]
    if not files and not args.follow:
        return _fail(f"no logs yet under {directory}")
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                show(line.rstrip("\n"))
    if args.follow:
        try:
            for line in follow_log(directory / LOG_FILE):
                show(line)
        except KeyboardInterrupt:
            pass
    return 0


# -- config ---------------------------------------------------------------------------------------
def cmd_config_check(args) -> int:
    cfg = _config(args)
    print(f"config ok: {cfg.file or 'packaged defaults'}")
    return 0


def cmd_config_show(args) -> int:
    cfg = _config(args)
    if _json(args):
        print(json.dumps({"config": cfg.redacted(), "sources": cfg.sources}, indent=2,
                         sort_keys=True, default=str))
        return 0
    for key, value, source in cfg.describe():
        print(f"{key} = {json.dumps(value, default=str)}    # {source}")
    return 0


# -- plumbing --------------------------------------------------------------------------------------
def _fail(message: str, code: int = 1) -> int:
    print(f"swarm: {message}", file=sys.stderr)
    return code


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return ""
    return lines[-1].removeprefix("swarm: ") if lines else ""


def _int_in(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS,
                        help="config file (default: $SWARM_CONFIG, ./swarm.yaml, packaged)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON instead of a table")
    parser = argparse.ArgumentParser(prog="swarm", parents=[common],
                                     description="Supervised actor runtime for the swarm.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_text, **kw):
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text, **kw)
        p.set_defaults(func=func)
        return p

    p = add("start", cmd_start, "start the swarm (foreground until Ctrl-C, or -d)")
    p.add_argument("-d", "--detach", action="store_true",
                   help="run in the background; return once every enabled service is healthy")
    p.add_argument("--wait", type=float, default=30.0, metavar="S",
                   help="seconds to wait for health (default 30)")
    boot_parser = sub.add_parser("_boot", parents=[common])
    boot_parser.set_defaults(func=cmd_boot)
    p = add("stop", cmd_stop, "stop the swarm in reverse order; kill what hangs")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="per-child stop timeout (default supervision.shutdown_timeout_s)")
    add("status", cmd_status, "show every supervised actor (exit 3 if unhealthy)")
    p = add("top", cmd_top, "live status dashboard until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="refresh period")
    add("reload", cmd_reload, "re-read the config file and apply what changed")
    p = add("restart", cmd_restart, "restart one service")
    p.add_argument("name", metavar="NAME")
    p = add("logs", cmd_logs, "show the structured log")
    p.add_argument("name", nargs="?", metavar="NAME", help="only this service")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--level", choices=["debug", "info", "warning", "error"], default="debug")
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
    p.add_argument("--limit", type=_int_in(1, 10_000), default=100, metavar="N",
                   help="at most N (default 100)")
    p.add_argument("--offset", type=_int_in(0, 2**63 - 1), default=0, metavar="N",
                   help="skip the first N")
    p = queue_action("requeue", "make dead letters ready again (attempts reset)")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="every dead letter")
    p = queue_action("purge", "delete messages (default: the dead letters)")
    p.add_argument("--state", choices=["dead", "ready", "leased", "all"], default="dead")
    p.add_argument("--recipient", default=None, metavar="R", help="only messages for R")
    p.add_argument("--yes", action="store_true",
                   help="confirm purging ready, leased or all messages (not needed for dead)")
    cfg = add("config", None, "check or show the configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    for name, func, text in (("check", cmd_config_check, "validate the configuration"),
                             ("show", cmd_config_show, "print the effective config, redacted")):
        cfg_sub.add_parser(name, parents=[common], help=text).set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"swarm: config: {line}", file=sys.stderr)
        return 2
    except (NotRunning, AdminError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - never a traceback to the user
        return _fail(f"internal error: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
