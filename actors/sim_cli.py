"""``swarm demo`` and ``swarm simulate SCENARIO``: the simulation harness
(``system/harness/``) with the simulated Discord and Twitch, registered through the
``swarm.commands`` entry point (see ``system/cli.py``)."""
from __future__ import annotations

import json
import sys
from importlib.resources import files

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

    def progress(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    try:
        result = Run(scenario, platforms(), base=base, duration_s=args.duration,
                     seed=args.seed, progress=progress).run()
    except ConfigError as exc:
        return fail(str(exc))
    except (RuntimeError, TimeoutError) as exc:  # the swarm did not start: its own words
        return fail(f"the simulation could not run: {exc}")
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, sort_keys=True, default=str))
    else:
        print(render_report(result))
    return 0 if result.ok else 1

