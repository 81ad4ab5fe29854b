"""``swarm demo`` and ``swarm simulate SCENARIO``: the simulation harness
(``system/harness/``) with the simulated Discord and Twitch, registered through the
``swarm.commands`` entry point (see ``system/cli.py``)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Self

import yaml

from actors.discord.harness import DiscordPlatform
from actors.twitch.harness import TwitchPlatform
from system.cli import fail
from system.errors import ConfigError
from system.harness.scenario import Run, check_scenario, load_scenario, render_report
from system.harness.swarm import operator_config


def platforms() -> dict:
    return {"discord": DiscordPlatform(), "twitch": TwitchPlatform()}


def register(add, common) -> None:
    p = add("demo", cmd_demo, "run the whole swarm offline for a minute: simulated Discord, "
            "Twitch and agents, scripted users and faults, a summary at the end")
    _options(p)
    p = add("simulate", cmd_simulate, "run a scenario file against your config with the "
            "platforms simulated; exit 1 naming each expectation that failed")
    p.add_argument("scenario", metavar="SCENARIO.yaml")
    _options(p)


def _options(p) -> None:
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="seconds of the timeline (default: the scenario's)")
    p.add_argument("--seed", type=int, default=None, help="seed of every random choice "
                   "(default: the scenario's)")
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    p.add_argument("--no-dashboard", action="store_true", help="progress lines instead of the "
                   "live dashboard (which shows only when the output is a terminal)")


def demo_scenario() -> dict:
    text = files("config").joinpath("scenarios/demo.yaml").read_text()
    return check_scenario(yaml.safe_load(text), "config/scenarios/demo.yaml")


def cmd_demo(args) -> int:
    # the demo runs on the packaged default only: it rehearses the product, not a deployment
    return _run(args, demo_scenario(), base={})


def cmd_simulate(args) -> int:
    try:
        scenario = load_scenario(args.scenario)
        base = operator_config(getattr(args, "config", None))
    except ConfigError as exc:
        return fail(str(exc))
    return _run(args, scenario, base)


def _run(args, scenario: dict, base: dict) -> int:
    as_json = getattr(args, "json", False)
    quiet = args.quiet  # progress goes to stderr: --json output stays clean
    live = not (quiet or as_json or args.no_dashboard) and sys.stdout.isatty()
    with tempfile.TemporaryDirectory(prefix="swarm-dash-") as tmp, \
            Dashboard(Path(tmp) / "timeline.log", on=live) as dashboard:

        def progress(line: str) -> None:
            if not quiet:
                dashboard.line(line)

        try:
            result = Run(scenario, platforms(), base=base, duration_s=args.duration,
                         seed=args.seed, progress=progress, started=dashboard.start).run()
        except ConfigError as exc:
            return fail(str(exc))
        except (RuntimeError, TimeoutError) as exc:  # the swarm did not start: its own words
            return fail(f"the simulation could not run: {exc}")
        except KeyboardInterrupt:
            return fail("interrupted: the swarm and the simulated platforms were stopped", 130)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, sort_keys=True, default=str))
    else:
        print(render_report(result))
    return 0 if result.ok else 1


class Dashboard:
    """``swarm top`` on the terminal while the run plays (a child process); the run's
    progress lines become its timeline panel (the file ``feed``). Off (``on`` false), or
    once the user quit it with ``q``, the lines go to stderr."""

    def __init__(self, feed: Path, on: bool):
        self.feed, self.on = feed, on
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, swarm) -> None:
        if self.on:
            self.feed.touch()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "system.cli", "top", "--interval", "0.5", "--feed",
                 str(self.feed), "-c", str(swarm.config_path)],
                env={**os.environ, **swarm.env})

    def line(self, text: str) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with self.feed.open("a") as f:
                f.write(text + "\n")
        else:
            print(text, file=sys.stderr, flush=True)

    def stop(self) -> None:
        """Quit the dashboard as Ctrl-C does: it puts the terminal back."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
