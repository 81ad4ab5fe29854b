"""The ``swarm`` command: launcher and admin client.

Every command takes ``-c/--config PATH`` before or after the subcommand and, where it prints
data, ``--json``. Exit status 0 on success; otherwise one clear line on stderr and non-zero.

A service package adds its own commands (``swarm queue``, ``swarm gas``, ...) through the
``swarm.commands`` entry-point group: each entry is ``register(add, common)``, where
``add(name, func, help)`` returns a new subcommand's parser and ``common`` is the parent parser
of ``-c``/``--json``; handlers use :func:`config_of`, :func:`emit`, :func:`fail` and
:func:`int_in`. So this module imports nothing from ``actors/``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points
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
from system.tables import print_status


def config_of(args) -> Config:
    return load_config(getattr(args, "config", None))


def wants_json(args) -> bool:
    # -c and --json are on every (sub)parser with default SUPPRESS, so whichever parser saw
    # them sets them and none writes a default over them: absent means not given.
    return getattr(args, "json", False)


def emit(args, data, human) -> None:
    if wants_json(args):
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
    cfg = config_of(args)
    host, port = admin_endpoint(cfg.data)
    if port_open(host, port):
        return fail(f"a swarm is already running on {host}:{port}")
    proc = spawn_boot(cfg.file, cfg.data)
    if not args.detach:
        return _foreground(cfg, args.wait, proc)
    error = _booted(proc, cfg, args.wait)
    if error:
        return fail(error)
    try:
        status = wait_healthy(cfg.data, args.wait)
    except (AdminError, NotRunning) as exc:
        return fail(str(exc))
    emit(args, status, print_status)
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
            return fail(error)
        print_status(wait_healthy(cfg.data, wait_s))
        print("swarm running in the foreground; Ctrl-C stops it", flush=True)
        color = sys.stdout.isatty()
        alive = lambda: port_open(*admin_endpoint(cfg.data))
        for line in follow_log(data_dir(cfg.data) / "logs" / LOG_FILE, alive=alive):
            text = format_line(line, color)
            if text:
                print(text, flush=True)
        code = fail("the swarm went away")
    except KeyboardInterrupt:
        with contextlib.suppress(subprocess.TimeoutExpired):
            boot_proc.wait(timeout=wait_s + 60)  # let a boot in progress finish, then stop it
    except (AdminError, NotRunning) as exc:
        code = fail(str(exc))
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with contextlib.suppress(NotRunning):
            report = shutdown(cfg.data, timeout=cfg.get("supervision.shutdown_timeout_s", 5.0))
            print(f"swarm stopped{_killed(report)}", flush=True)
    return code


def cmd_boot(args) -> int:
    """Hidden: the detached launcher process. Boots the tree, then exits; the swarm lives on."""
    cfg = config_of(args)
    try:
        boot(cfg.runtime())
    except (AlreadyRunning, RuntimeError) as exc:
        print(f"swarm: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def cmd_stop(args) -> int:
    cfg = config_of(args)
    timeout = args.timeout if args.timeout is not None else cfg.get(
        "supervision.shutdown_timeout_s", 5.0)
    report = shutdown(cfg.data, timeout=timeout)
    emit(args, report, lambda r: print(f"swarm stopped{_killed(r)}"))
    return 0


def _killed(report: dict) -> str:
    return f" (killed: {', '.join(map(str, report['killed']))})" if report["killed"] else ""


# -- admin commands -------------------------------------------------------------------------------
def cmd_status(args) -> int:
    cfg = config_of(args)
    status = AdminClient(cfg.data).call(protocol.ADMIN_STATUS)
    status["pid_file"] = read_pid_file(cfg.data)
    emit(args, status, print_status)
    return 0 if status.get("healthy") else 3


def cmd_restart(args) -> int:
    cfg = config_of(args)
    reply = AdminClient(cfg.data).call(protocol.ADMIN_RESTART, {"name": args.name})
    emit(args, reply, lambda r: print(f"{args.name} restarted (pid {r['pid']})" if r.get("pid")
                                       else f"{args.name} restarting (the admin goes with it)"))
    return 0


def _changes(summary: dict) -> str:
    parts = [f"{what}: {', '.join(summary[what])}" for what in ("added", "removed")
             if summary[what]]
    parts += [f"changed {name} ({', '.join(keys)})" for name, keys in summary["changed"].items()]
    parts += [what for what in ("supervision", "health", "alerts", "agents") if summary[what]]
    return "; ".join(parts) or "system settings"


def cmd_reload(args) -> int:
    cfg = config_of(args)  # validated here too: a bad file fails fast with every error
    reply = AdminClient(cfg.data).call(protocol.ADMIN_RELOAD)
    emit(args, reply, _print_reload)
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
    cfg = config_of(args)
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
        text = line if wants_json(args) else format_line(line, sys.stdout.isatty())
        if text:
            print(text, flush=True)

    files = [p for p in log_files(directory) if p.exists()]
    if not files and not args.follow:
        return fail(f"no logs yet under {directory}")
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
    cfg = config_of(args)
    print(f"config ok: {cfg.file or 'packaged defaults'}")
    return 0


def cmd_config_show(args) -> int:
    cfg = config_of(args)
    if wants_json(args):
        print(json.dumps({"config": cfg.redacted(), "sources": cfg.sources}, indent=2,
                         sort_keys=True, default=str))
        return 0
    for key, value, source in cfg.describe():
        print(f"{key} = {json.dumps(value, default=str)}    # {source}")
    return 0


# -- plumbing --------------------------------------------------------------------------------------
def fail(message: str, code: int = 1) -> int:
    print(f"swarm: {message}", file=sys.stderr)
    return code


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return ""
    return lines[-1].removeprefix("swarm: ") if lines else ""


def int_in(low: int, high: int):
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
    add("reload", cmd_reload, "re-read the config file and apply what changed")
    p = add("restart", cmd_restart, "restart one service")
    p.add_argument("name", metavar="NAME")
    p = add("logs", cmd_logs, "show the structured log")
    p.add_argument("name", nargs="?", metavar="NAME", help="only this service")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--level", choices=["debug", "info", "warning", "error"], default="debug")
    for extension in sorted(entry_points(group="swarm.commands"), key=lambda e: e.name):
        extension.load()(add, common)  # a service package's commands (setup.cfg entry points)
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
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - never a traceback to the user
        return fail(f"internal error: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
