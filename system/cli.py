"""The ``swarm`` command: launcher and admin client.

Every command takes ``-c/--config PATH`` before or after the subcommand and, where it prints
data, ``--json``. Exit status 0 on success; otherwise one clear line on stderr and non-zero.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
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
from system.logs import LOG_FILE, format_line
from system.tables import print_status


def _config(args) -> Config:
    return load_config(getattr(args, "config", None))


def _runtime(cfg: Config) -> dict:
    """The config handed to the actor system: data plus the secrets the log filter redacts."""
    return {**cfg.data, "_secret_values": sorted(cfg.secret_values)}


def _emit(args, data, human) -> None:
    if getattr(args, "json", False):
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
        except (AdminError, NotRunning):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            bad = [f"{n}: {v['state']}/{v['health']}" + (f" ({v['detail']})" if v["detail"] else "")
                   for n, v in status.get("services", {}).items() if not v["healthy"]]
            raise AdminError("unhealthy", f"not healthy within {wait_s:g}s: " + "; ".join(bad))
        time.sleep(0.1)


def cmd_start(args) -> int:
    cfg = _config(args)
    host, port = admin_endpoint(cfg.data)
    if port_open(host, port):
        return _fail(f"a swarm is already running on {host}:{port}")
    console = data_dir(cfg.data) / "logs" / "console.log"
    proc = spawn_boot(cfg.file, cfg.data)
    try:
        code = proc.wait(timeout=args.wait + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return _fail(f"the swarm did not start within {args.wait:g}s; see {console}")
    if code != 0:
        return _fail(_last_line(console) or f"the swarm did not start; see {console}")
    if args.detach:
        try:
            status = wait_healthy(cfg.data, args.wait)
        except (AdminError, NotRunning) as exc:
            return _fail(str(exc))
        _emit(args, status, print_status)
        return 0
    return _foreground(cfg, args.wait)


def _foreground(cfg: Config, wait_s: float) -> int:
    """Show health, then the log, until Ctrl-C or SIGTERM; then stop everything."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    code = 0
    try:
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
        pass
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
        boot(_runtime(cfg))
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


def cmd_restart(args) -> int:
    cfg = _config(args)
    reply = AdminClient(cfg.data).call(protocol.ADMIN_RESTART, {"name": args.name})
    _emit(args, reply, lambda r: print(f"{args.name} restarted (pid {r.get('pid')})"))
    return 0


# -- logs -------------------------------------------------------------------------------------------
def follow_log(path: Path, alive=lambda: True, poll_s: float = 0.2):
    """Yield lines appended to ``path``, following it across rotation, while ``alive()``."""
    handle, inode = None, None
    while True:
        if handle is None and path.exists():
            handle, inode = open(path, encoding="utf-8", errors="replace"), path.stat().st_ino  # noqa: SIM115 - kept open across yields
            handle.seek(0, os.SEEK_END)
        line = handle.readline() if handle else ""
        if line:
            yield line.rstrip("\n")
            continue
        try:
            rotated = path.stat().st_ino != inode
        except FileNotFoundError:
            rotated = True
        if handle and rotated:
            for rest in handle:
                yield rest.rstrip("\n")
            handle.close()
            handle = None
            continue
        if not alive():
            return
        time.sleep(poll_s)


def _log_files(directory: Path) -> list[Path]:
    rotated = sorted(directory.glob(LOG_FILE + ".*"), key=lambda p: -int(p.suffix[1:])
                     if p.suffix[1:].isdigit() else 0)
    return [*rotated, directory / LOG_FILE]


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
        text = line if args.json else format_line(line, sys.stdout.isatty())
        if text:
            print(text, flush=True)

    files = [p for p in _log_files(directory) if p.exists()]
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
    if args.json:
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
    p = add("restart", cmd_restart, "restart one service")
    p.add_argument("name", metavar="NAME")
    p = add("logs", cmd_logs, "show the structured log")
    p.add_argument("name", nargs="?", metavar="NAME", help="only this service")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--level", choices=["debug", "info", "warning", "error"], default="debug")
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


if __name__ == "__main__":
    sys.exit(main())
