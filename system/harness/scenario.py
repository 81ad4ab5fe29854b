"""Scenarios: a swarm of its own, simulated agents and platforms, a timeline of chat and faults,
expectations checked over what happened, and a report.

A scenario file (``config/scenarios/*.yaml``; README "Simulation harness")::

    name: relay
    duration_s: 40
    seed: 7
    agents: {names: [Agent-1, Agent-2, Agent-3], speed: 10, start: [Agent-1]}
    users:
      otto: {platform: discord, role: operator}
      mallory: {platform: discord}
    timeline:
      - {at: 3, user: otto, say: "!message Agent-2 check the build"}
      - {at: 5, user: mallory, say: "!restart queue"}
      - {at: 8, fault: kill, target: queue}
    expect:
      - {handoff_within_s: 5}
      - {gas_once: true}
      - {refused: mallory}
      - {restarts: {service: queue, max: 1}}

The generic parts live here; each chat platform is a plugin (:class:`Platform`, beside its
service: ``actors/discord/harness.py``, ``actors/twitch/harness.py``) that starts its simulated
platform, says what the config of its service must point at, speaks for users and injects its
faults.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jsonschema
import msgpack
import yaml

from system import protocol
from system.errors import ConfigError
from system.harness.agents import SimAgents, parse_inbox_file
from system.harness.disk import SIZE as DISK_SIZE
from system.harness.disk import Disk, mount_tmpfs, unmount
from system.harness.swarm import TempSwarm, deep_merge

REPLY_TIMEOUT_S = 15.0
SWARM_FAULTS = ("kill", "hang", "reload_invalid", "kill_swarm", "disk_full")
AGENT_FAULTS = ("stall", "crash_agent")

_NUMBER = {"type": "number", "minimum": 0}
_YES = {"const": True}
_NAME = {"type": "string", "minLength": 1}
_COUNT = {"type": "integer", "minimum": 0}
EXPECTATIONS: dict[str, dict] = {  # the value each expectation takes (CHECKS has their code)
    "handoff_within_s": {"type": "number", "exclusiveMinimum": 0},
    "gas_once": _YES, "delivered_once": _YES, "preloaded_delivered": _YES,
    "healthy_at_end": _YES, "disk_full_handled": _YES,
    "delivered": {"type": "object", "required": ["to", "contains"], "additionalProperties": False,
                  "properties": {"to": _NAME, "contains": _NAME}},
    "refused": _NAME, "replied": _NAME, "stalled": _NAME,
    "restarts": {"type": "object", "required": ["service"], "additionalProperties": False,
                 "properties": {"service": _NAME, "min": _COUNT, "max": _COUNT}},
}
SCHEMA: dict = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "duration_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        "seed": {"type": "integer"},
        "config": {"type": "object", "description": "an overlay on the swarm's config"},
        "preload": {"type": "object", "additionalProperties": False, "required": ["messages"],
                    "properties": {"messages": {"type": "integer", "minimum": 1,
                                                "maximum": 1_000_000}}},
        "agents": {"type": "object", "additionalProperties": False, "properties": {
            "names": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "count": {"type": "integer", "minimum": 1, "maximum": 50},
            "speed": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
            "speeds": {"type": "object", "additionalProperties": _NUMBER},
            "start": {"type": "array", "items": {"type": "string"}},
            "write_every_s": {"type": "number", "exclusiveMinimum": 0},
            "torn_writes": {"type": "number", "minimum": 0, "maximum": 1}}},
        "users": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["platform"], "additionalProperties": False,
            "properties": {"platform": {"type": "string"},
                           "role": {"enum": ["viewer", "operator", "admin"]},
                           "id": {"type": ["integer", "string"]},
                           "roles": {"type": "array", "items": {"type": ["integer", "string"]}},
                           "badges": {"type": "array", "items": {"type": "string"}}}}},
        "timeline": {"type": "array", "items": {
            "type": "object", "required": ["at"], "additionalProperties": False,
            "properties": {"at": _NUMBER, "user": {"type": "string"},
                           "say": {"type": "string", "minLength": 1},
                           "click": {"type": "string", "minLength": 1},
                           "repeat": {"type": "integer", "minimum": 1, "maximum": 100000},
                           "every_s": {"type": "number", "exclusiveMinimum": 0},
                           "fault": {"type": "string"}, "target": {"type": "string"},
                           "targets": {"type": "array", "items": {"type": "string"},
                                       "minItems": 1},
                           "platform": {"type": "string"}, "for_s": _NUMBER}}},
        "expect": {"type": "array", "items": {  # unknown kinds: check_scenario names them
            "type": "object", "minProperties": 1, "maxProperties": 1,
            "properties": EXPECTATIONS}},
    },
}


class Platform(Protocol):
    """A simulated chat platform and the service that talks to it."""

    name: str                       # the service's name: "discord", "twitch"
    faults: tuple[str, ...]         # what :meth:`fault` can do

    def start(self, users: dict[str, dict], base: dict) -> None:
        """Start the simulated platform with these users (``base``: the operator's config)."""

    def overlay(self, base: dict) -> dict:
        """The config of its service pointing at the simulated platform (merged over base)."""

    def env(self) -> dict[str, str]:
        """Secrets the swarm's processes need (the simulated tokens)."""

    def wait_connected(self, timeout: float) -> None:
        """Until the swarm's client is connected to the platform."""

    def say(self, user: str, text: str) -> tuple[str | None, float, str]:
        """``user`` types ``text``; (the reply, or None within the timeout; seconds; the
        platform's id of what was sent, for :meth:`reached`)."""

    def click(self, user: str, control: str) -> tuple[str | None, float, str]:
        """``user`` clicks ``control`` (e.g. a button of the control panel); like say."""

    def reached(self, ref: str) -> bool:
        """Whether what ``say``/``click`` sent reached the swarm's client (it may have been
        disconnected then: a restart; the platform never delivers it later)."""

    def refused_label(self, user: str) -> str:
        """How the swarm's log names the user (the start of its audit label)."""

    def fault(self, kind: str, step: dict) -> str:
        """Inject a fault; what was done, in words."""

    def records(self) -> dict:
        """Counters for the report."""

    def stop(self) -> None:
        ...


@dataclass
class Chat:
    t: float
    user: str
    platform: str
    text: str
    reply: str | None
    seconds: float
    ref: str = ""  # the platform's id of what was sent (Platform.reached)


@dataclass
class Result:
    scenario: str
    seed: int
    duration_s: float
    checks: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    timeline: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def as_dict(self) -> dict:
        return {"scenario": self.scenario, "seed": self.seed, "duration_s": self.duration_s,
                "ok": self.ok, "checks": self.checks, "summary": self.summary,
                "timeline": self.timeline}


def load_scenario(path: str | Path) -> dict:
    """A scenario file, checked: ConfigError naming every problem."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read scenario {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return check_scenario(data, str(path))


def check_scenario(data: Any, where: str = "scenario") -> dict:
    errors = [f"{where}: {'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
              for e in jsonschema.Draft202012Validator(SCHEMA).iter_errors(data)]
    if errors:
        raise ConfigError("\n".join(errors))
    users = data.get("users") or {}
    names = agent_names(data)
    for n, step in enumerate(data.get("timeline") or []):
        at = f"{where}: timeline.{n}"
        if sum(k in step for k in ("say", "click", "fault")) != 1:
            errors.append(f"{at}: give one of say or click (with user), or fault")
        if ("say" in step or "click" in step) and step.get("user") not in users:
            errors.append(f"{at}: user {step.get('user')!r} is not in users")
        if step.get("fault") in AGENT_FAULTS and step.get("target") not in names:
            errors.append(f"{at}: {step['fault']} needs target: one of {', '.join(names)}")
        if step.get("fault") in ("kill", "hang") and not (step.get("target")
                                                          or step.get("targets")):
            errors.append(f"{at}: {step['fault']} needs target (a service name) or targets "
                          "(one is picked at random)")
        if step.get("fault") == "disk_full" and (step.get("target", "queue") != "queue"
                                                 or "targets" in step):
            errors.append(f"{at}: disk_full fills the queue's disk: no target but queue")
    known = set(CHECKS)
    for n, exp in enumerate(data.get("expect") or []):
        (kind, value), = exp.items()
        if kind not in known:
            errors.append(f"{where}: expect.{n}: unknown expectation {kind!r}; known: "
                          f"{', '.join(sorted(known))}")
        elif kind in ("refused", "replied") and value != "all" and value not in users:
            errors.append(f"{where}: expect.{n}: user {value!r} is not in users")
        elif kind in ("stalled", "delivered") and (value if kind == "stalled"
                                                   else value["to"]) not in names:
            errors.append(f"{where}: expect.{n}: {kind} names no agent of {', '.join(names)}")
    if errors:
        raise ConfigError("\n".join(errors))
    return data


def agent_names(data: dict) -> list[str]:
    agents = data.get("agents") or {}
    return list(agents.get("names") or [f"Agent-{i + 1}" for i in range(agents.get("count", 3))])


# -- running ------------------------------------------------------------------------------------
class Run:
    """One run of a scenario: build everything, play the timeline, check, tear down."""

    def __init__(self, scenario: dict, platforms: dict[str, Platform], *,
                 base: dict | None = None, duration_s: float | None = None,
                 seed: int | None = None, directory: Path | None = None,
                 progress: Callable[[str], None] | None = None,
                 started: Callable[[TempSwarm], None] | None = None):
        self.scenario = scenario
        self.duration = float(duration_s or scenario.get("duration_s", 60))
        self.seed = int(seed if seed is not None else scenario.get("seed", 1))
        self.rng = random.Random(self.seed)
        self.names = agent_names(scenario)
        self.users = scenario.get("users") or {}
        wanted = {u["platform"] for u in self.users.values()} | {
            s["platform"] for s in scenario.get("timeline") or [] if s.get("platform")}
        unknown = wanted - set(platforms)
        if unknown:
            raise ConfigError(f"no simulated platform named {', '.join(sorted(unknown))}; "
                              f"available: {', '.join(sorted(platforms))}")
        self.platforms = {n: p for n, p in platforms.items() if n in wanted}
        self.base = base or {}
        self.directory = directory
        self.progress = progress or (lambda _line: None)
        self.started = started or (lambda _swarm: None)  # the swarm is up (swarm demo: top)
        self.chats: list[Chat] = []
        self.done: list[dict] = []
        self.swarm: TempSwarm | None = None
        self.agents: SimAgents | None = None
        self.t0 = self.wall0 = 0.0  # when the timeline started: monotonic, wall clock
        self.left_running = 0
        self.talking = True
        # disk_full: the queue's database on a small tmpfs of its own (see _mount_disk)
        self.wants_disk = any(s.get("fault") == "disk_full"
                              for s in scenario.get("timeline") or [])
        self.disk: Disk | None = None
        self.disk_skip = ""                              # why it could not be mounted
        self.disk_gen = 0                                # a pending free of an older fill
        self.outages: list[list] = []                    # [filled at, freed at or None]

    def overlay(self) -> dict:
        agents = self.scenario.get("agents") or {}
        overlay: dict = {"agents": {"names": self.names},
                         "health": {"poll_interval_s": 0.5, "timeout_s": 2.0},
                         "services": {"queue": {"enabled": True},
                                      "gas": {"enabled": True, "poll_interval_s": 0.5}}}
        if agents.get("stall_after_s"):
            overlay["services"]["gas"]["stall_after_s"] = agents["stall_after_s"]
        for name, platform in self.platforms.items():
            overlay["services"][name] = platform.overlay(self.base)
        sinks = list(self.base.get("alerts", {}).get("sinks") or ["log"])
        overlay["alerts"] = {"sinks": sinks + [n for n in self.platforms if n not in sinks]}
        if self.wants_disk:  # an outage is noticed without traffic too
            overlay["services"]["queue"]["write_probe_s"] = 1.0
        if self.disk is not None:
            overlay["services"]["queue"]["db_path"] = str(self.disk.path / "queue.db")
        return deep_merge(overlay, self.scenario.get("config") or {})

    def run(self) -> Result:
        with contextlib.ExitStack() as stack:
            tmp = self.directory or Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="swarm-sim-")))
            for name, platform in self.platforms.items():
                users = {u: spec for u, spec in self.users.items() if spec["platform"] == name}
                platform.start(users, self.base)
                stack.callback(platform.stop)
            env: dict[str, str] = {}
            for platform in self.platforms.values():
                env |= platform.env()
            if self.wants_disk:
                self._mount_disk(tmp, stack)  # unmounted after the swarm stopped
            self.swarm = TempSwarm(tmp, self.base, self.overlay(), env)
            stack.callback(self._stop_swarm)
            self.progress(f"starting the swarm in {tmp} (seed {self.seed})")
            self.swarm.start()
            for platform in self.platforms.values():
                platform.wait_connected(30)
            self.started(self.swarm)
            self._preload()
            agents = self.scenario.get("agents") or {}
            self.agents = SimAgents(self.swarm.workspace, self.names, seed=self.seed,
                                    speed=agents.get("speed", 10.0),
                                    speeds=agents.get("speeds"), start=agents.get("start"),
                                    write_every_s=agents.get("write_every_s", 0.5),
                                    torn_writes=agents.get("torn_writes", 0.2))
            self.agents.start()
            stack.callback(self.agents.stop)
            self.t0, self.wall0 = time.monotonic(), time.time()
            self._play()
            self.progress("checking the expectations")
            result = self._result()
        result.summary["left_running"] = self.left_running
        if self.left_running:
            result.checks.append({"expect": {"nothing_left_running": True}, "ok": False,
                                  "detail": f"{self.left_running} process(es) killed after "
                                  "the stop"})
        return result

    def _preload(self) -> None:
        """``preload.messages`` queued for the agents before the timeline starts (ids
        ``preload-N``), in batches as ``swarm send --file`` does."""
        n = (self.scenario.get("preload") or {}).get("messages", 0)
        admin = self.swarm.admin(timeout=30)
        for start in range(0, n, 500):
            items = [{"recipient": self.names[i % len(self.names)], "id": f"preload-{i}",
                      "sender": "harness",
                      "payload": msgpack.packb({"text": f"preloaded message {i}"})}
                     for i in range(start, min(n, start + 500))]
            admin.call(protocol.ADMIN_SEND, {"items": items})
        if n:
            self.progress(f"{n} messages queued for the agents")

    def _mount_disk(self, tmp: Path, stack: contextlib.ExitStack) -> None:
        """A tmpfs for the queue's database (root only): each disk_full fault fills it. Where
        it cannot be mounted, each such fault is skipped, saying why."""
        self.disk, why = mount_tmpfs(tmp / "queue-disk", DISK_SIZE)
        if self.disk is None:
            self.disk_skip = why
            self.progress(f"disk_full will be skipped: {why}")
            return
        stack.callback(self._unmount_disk)
        self.progress(f"the queue's database on a tmpfs (size {DISK_SIZE}) at {self.disk.path}")

    def _unmount_disk(self) -> None:
        self.disk_gen += 1  # a free still pending does nothing now
        with contextlib.suppress(OSError):
            self.disk.free()
        if not unmount(self.disk.path):
            self.progress(f"could not unmount the tmpfs at {self.disk.path}")

    def _free_disk(self, gen: int) -> None:
        if gen == self.disk_gen and self.disk.free():
            self.outages[-1][1] = self.now()
            self.progress(f"{self.now():5.1f}s fault disk_full: the queue's disk freed")

    def _stop_swarm(self) -> None:
        left = self.swarm.stop()
        self.left_running = len(left)
        for proc in left:  # nothing may outlive the run
            with contextlib.suppress(Exception):
                proc.kill()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _play(self) -> None:
        steps = []
        for step in self.scenario.get("timeline") or []:
            for i in range(step.get("repeat", 1)):
                steps.append((step["at"] + i * step.get("every_s", 1.0), step))
        steps.sort(key=lambda s: s[0])
        talkers: list[threading.Thread] = []
        lanes: dict[str, list] = {}
        for at, step in steps:
            if at >= self.duration:
                break
            self._sleep_until(at)
            if "fault" not in step:
                # one lane per user: a user waits for the reply before typing again
                lane = lanes.setdefault(step["user"], [])
                lane.append(step)
                if len(lane) == 1:
                    t = threading.Thread(target=self._talk, args=(step["user"], lane),
                                         daemon=True)
                    t.start()
                    talkers.append(t)
            else:
                self._fault(step)
        self._sleep_until(self.duration)
        self.talking = False  # what is still waiting in a lane is not sent; the rest answers
        for t in talkers:
            t.join(REPLY_TIMEOUT_S + 1)

    def _sleep_until(self, at: float) -> None:
        while (left := at - self.now()) > 0:
            time.sleep(min(left, 0.2))

    def _talk(self, user: str, lane: list) -> None:
        platform = self.platforms[self.users[user]["platform"]]
        while lane and self.talking:
            step = lane[0]
            t = self.now()
            said = step.get("say") or f"[click {step['click']}]"
            try:
                reply, seconds, ref = platform.say(user, step["say"]) if "say" in step \
                    else platform.click(user, step["click"])
            except Exception as exc:  # noqa: BLE001 - a platform failure is a finding
                reply, seconds, ref = None, REPLY_TIMEOUT_S, ""
                self.progress(f"{user}: {type(exc).__name__}: {exc}")
            self.chats.append(Chat(t, user, platform.name, said, reply, seconds, ref))
            self.progress(f"{t:5.1f}s {user}: {said!r} -> "
                          f"{(reply or 'no reply')[:80]!r} ({seconds * 1000:.0f} ms)")
            lane.pop(0)

    def _fault(self, step: dict) -> None:
        kind, target, t = step["fault"], step.get("target"), self.now()
        if step.get("targets"):
            target = self.rng.choice(step["targets"])
        try:
            what = self._inject(kind, target, step)
        except Exception as exc:  # noqa: BLE001 - reported, the run goes on
            what = f"could not inject: {type(exc).__name__}: {exc}"
        self.done.append({"t": round(t, 2), "fault": kind, "target": target, "done": what}
                         | ({"skipped": True} if what.startswith("skipped: ") else {}))
        self.progress(f"{t:5.1f}s fault {kind} {target or ''}: {what}")

    def _inject(self, kind: str, target: str | None, step: dict) -> str:
        for_s = float(step.get("for_s", 5.0))
        if kind == "kill":
            pid = self.swarm.service(target)["pid"]
            os.kill(pid, signal.SIGKILL)
            return f"SIGKILL {target} (pid {pid})"
        if kind == "hang":
            pid = self.swarm.service(target)["pid"]
            os.kill(pid, signal.SIGSTOP)
            later(for_s, _resume, pid)
            return f"SIGSTOP {target} (pid {pid}) for {for_s:g}s"
        if kind == "reload_invalid":  # a value of the wrong type: the schema refuses it
            good = self.swarm.config_path.read_text()
            bad = yaml.safe_load(good)
            bad.setdefault("health", {})["timeout_s"] = "soon"
            self.swarm.config_path.write_text(yaml.safe_dump(bad))
            try:
                proc = self.swarm.cli("reload", check=False)
            finally:
                self.swarm.config_path.write_text(good)
            return ("rejected: " if proc.returncode else "ACCEPTED: ") + \
                (proc.stderr or proc.stdout).strip()[:200]
        if kind == "kill_swarm":  # every process at once, then `swarm start` on the same data
            procs = self.swarm.processes()
            for proc in procs:
                with contextlib.suppress(Exception):
                    proc.kill()
            for proc in procs:
                with contextlib.suppress(Exception):
                    proc.wait(5)
            self.swarm.start()
            for platform in self.platforms.values():
                platform.wait_connected(30)
            return f"SIGKILL of all {len(procs)} processes, then swarm start: running again"
        if kind == "disk_full":
            if self.disk is None:
                return f"skipped: {self.disk_skip}"
            if self.disk.filled:
                return "the queue's disk is full already"
            try:
                size = self.disk.fill()
            except OSError:
                self.disk.free()
                raise
            self.disk_gen += 1
            self.outages.append([self.now(), None])
            later(for_s, self._free_disk, self.disk_gen)
            return (f"filled the queue's tmpfs (size {DISK_SIZE}) with a {size / 2**20:.1f} "
                    f"MiB file, {self.disk.free_bytes()} bytes left; freed in {for_s:g}s")
        if kind == "stall":
            self.agents.stall(target, for_s)
            return f"{target} stalls for {for_s:g}s"
        if kind == "crash_agent":
            self.agents.crash(target, for_s)
            return f"{target} down for {for_s:g}s"
        owners = [p for p in self.platforms.values() if kind in p.faults
                  and step.get("platform") in (None, p.name)]
        if not owners:
            raise ConfigError(f"unknown fault {kind!r}")
        return owners[0].fault(kind, step)

    # -- after ------------------------------------------------------------------------------------
    def _result(self) -> Result:
        evidence = Evidence.collect(self)
        result = Result(self.scenario["name"], self.seed, round(self.now(), 1))
        for exp in self.scenario.get("expect") or []:
            (kind, value), = exp.items()
            ok, detail = CHECKS[kind](evidence, value)
            result.checks.append({"expect": {kind: value}, "ok": ok, "detail": detail})
        result.summary = evidence.summary()
        result.timeline = self.done
        return result


def later(seconds: float, fn: Callable, *args) -> None:
    """``fn(*args)`` in ``seconds`` (a fault's end), on a daemon timer thread."""
    timer = threading.Timer(seconds, fn, args)
    timer.daemon = True
    timer.start()


def _resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


@dataclass
class Evidence:
    """What the checks look at: collected once, after the timeline."""

    run: Run
    status: dict
    inbox: list[dict]            # every inbox file: agent, id, headers, body
    events: list                 # the simulated agents' events
    log: list[dict]              # the swarm's log lines
    chats: list[Chat]

    @classmethod
    def collect(cls, run: Run) -> Evidence:
        status: dict = {}
        with contextlib.suppress(Exception):  # the healthy check waits; this is a snapshot
            status = run.swarm.wait_for(lambda s: s["healthy"], timeout=20, what="healthy")
        if not status:
            with contextlib.suppress(Exception):
                status = run.swarm.status()
        inbox = []
        for name in run.names:
            for path in sorted((run.swarm.workspace / name / "inbox").glob("*.md")):
                headers, body = parse_inbox_file(path.read_text())
                inbox.append({"agent": name, "id": path.stem, "headers": headers,
                              "body": body, "mtime": path.stat().st_mtime})
        log = []
        for path in sorted((run.swarm.data / "logs").glob("swarm.log*")):
            for line in path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    log.append(json.loads(line))
        return cls(run, status, inbox, run.agents.snapshot(), log, list(run.chats))

    def gas_files(self) -> list[dict]:
        return [f for f in self.inbox if f["headers"].get("Gas") in ("prepare", "ready", "go")]

    def gas_latencies(self) -> list[float]:
        """Per gas file, ms from the relay agent's first status.json write at or past the
        gas's threshold (the effective ``services.gas.thresholds``) to the file in the next
        agent's inbox: the pipeline's poll, its decision, the queue and the inbox writer."""
        config = self.run.swarm.config if self.run.swarm is not None else {}
        limits = config.get("services", {}).get("gas", {}).get("thresholds") or {}
        writes: dict[tuple, list[tuple[float, float]]] = {}
        for e in self.events:
            if e.kind == "wrote":
                writes.setdefault((e.agent, e.task), []).append((e.t, e.progress))
        wall0, out = self.run.agents.wall0, []
        for f in self.gas_files():
            h = f["headers"]
            limit = limits.get(h["Gas"])
            first = next((t for t, p in writes.get((h.get("From-Agent"), h.get("Task")), [])
                          if limit is not None and p >= limit), None)
            if first is not None:
                out.append(max(0.0, f["mtime"] - (wall0 + first)) * 1000)
        return out

    def recoveries(self) -> list[float]:
        """Per SIGKILL of an actor, ms until its supervisor reported it running again."""
        out = []
        for d in self.run.done:
            if d["fault"] != "kill" or not d["done"].startswith("SIGKILL"):
                continue
            at = self.run.wall0 + d["t"]
            back = min((e["ts"] for e in self.log if e.get("event") == "child_started"
                        and e.get("child") == d["target"] and e.get("ts", 0) > at),
                       default=None)
            if back is not None:
                out.append((back - at) * 1000)
        return out

    def restarts(self) -> Counter:
        """Restarts per service during the run, from the supervisors' log lines (a status
        count starts again when a supervisor above the service restarts)."""
        return Counter(e.get("child") for e in self.log if e.get("event") == "child_exited"
                       and e.get("action") == "restart")

    def summary(self) -> dict:
        latencies = [c.seconds * 1000 for c in self.chats if c.reply is not None]
        handoffs = sum(1 for e in self.events if e.kind == "started") - len(
            self.run.agents.start_with)
        return {
            "healthy": bool(self.status.get("healthy")),
            "messages_delivered": len(self.inbox),
            "gas_sent": dict(Counter(f["headers"]["Gas"] for f in self.gas_files())),
            "handoffs": max(0, handoffs),
            "tasks_completed": sum(1 for e in self.events if e.kind == "reached"),
            "restarts": dict(self.restarts()),
            "refused": sum(1 for e in self.log if e.get("event") == "refused"),
            "chat": {"commands": len(self.chats), "answered": len(latencies),
                     "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
                     "p95_ms": round(_p95(latencies), 1) if latencies else None},
            "gas_latency_ms": _spread(self.gas_latencies()),
            "recovery_ms": _spread(self.recoveries()),
            "faults": len(self.run.done),
            "skipped_faults": [f"{d['fault']} at {d['t']:g}s: {d['done'][len('skipped: '):]}"
                               for d in self.run.done if d.get("skipped")],
            "platforms": {n: p.records() for n, p in self.run.platforms.items()},
        }


def _spread(xs: list[float]) -> dict:
    """p50/p95 (ms, one decimal) and how many samples; None values without samples."""
    if not xs:
        return {"p50": None, "p95": None, "samples": 0}
    return {"p50": round(statistics.median(xs), 1), "p95": round(_p95(xs), 1),
            "samples": len(xs)}


def _p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.95 * len(xs)))]


# -- the checks: (evidence, value) -> (ok, detail) -----------------------------------------------
def _handoff_within(ev: Evidence, within: float) -> tuple[bool, str]:
    reads = [e for e in ev.events if e.kind == "read" and e.headers.get("Gas") == "go"]
    judged, late = 0, []
    for reach in (e for e in ev.events if e.kind == "reached"):
        names = ev.run.names
        nxt = names[(names.index(reach.agent) + 1) % len(names)] if len(names) > 1 else None
        if nxt is None or reach.t + within > ev.run.duration:
            continue  # fuels nobody, or too close to the end to judge
        judged += 1
        got = [r.t for r in reads if r.agent == nxt and r.headers.get("From-Agent") == reach.agent
               and r.headers.get("Task") == reach.task and r.t >= reach.t - 1.0]
        if not got or got[0] - reach.t > within:
            late.append(f"{nxt} after {reach.agent} finished {reach.task}: "
                        + (f"{got[0] - reach.t:.1f}s" if got else "never"))
    if not judged:
        return False, "no agent finished a task early enough to judge"
    return not late, f"{judged - len(late)} of {judged} handoffs in time" + (
        "; late: " + "; ".join(late[:5]) if late else "")


def _gas_once(ev: Evidence, _value) -> tuple[bool, str]:
    keys = Counter((f["headers"].get("From-Agent"), f["headers"].get("Task"), f["headers"]["Gas"])
                   for f in ev.gas_files())
    twice = [k for k, n in keys.items() if n > 1]
    return not twice, f"{len(keys)} gas, each once" if not twice else \
        f"sent more than once: {twice[:5]}"


def _delivered_once(ev: Evidence, _value) -> tuple[bool, str]:
    """No chat message lost or doubled: each (agent, text) is in at least as many inbox files
    as the swarm confirmed, and in no more than were attempted (an attempt answered with an
    error or not at all, e.g. the queue killed mid-request, may or may not have gone
    through)."""
    confirmed, attempted = Counter(), Counter()
    for c in ev.chats:
        sent = _message_text(c.text)
        if sent and not (c.reply and (_refusal(c.reply) or _not_committed(c.reply))):
            attempted[sent] += 1
            confirmed[sent] += bool(c.reply and _confirmed(c.reply))
    wrong, uncertain = [], 0
    for (agent, text), tries in attempted.items():
        got = sum(1 for f in ev.inbox if f["headers"].get("Type") != "gas" and text in f["body"]
                  and (agent is None or f["agent"].casefold() == agent.casefold()))
        uncertain += tries - confirmed[agent, text]
        if not confirmed[agent, text] <= got <= tries:
            wrong.append(f"{text!r} to {agent or 'an agent'}: confirmed "
                         f"{confirmed[agent, text]}, attempted {tries}, in {got} inbox file(s)")
    return not wrong, (f"{sum(confirmed.values())} confirmed chat messages delivered, none "
                       f"twice ({uncertain} unconfirmed attempts)" if not wrong
                       else "; ".join(wrong[:5]))


def _not_committed(reply: str) -> bool:
    """The queue refused it without storing it (a storage error: the chat services say "Not
    queued: the queue cannot store messages right now")."""
    return "not queued: the queue" in reply.lower()


def _refusal(reply: str) -> bool:
    low = reply.lower()
    return "needs the" in low or " is for " in low


def _confirmed(reply: str) -> bool:
    """The reply says the swarm did it (queued, restarted, reloaded, requeued, nudged)."""
    low = reply.lower()
    return any(w in low for w in ("queued for", "sent to", "restarted", "config reloaded",
                                  "requeued", "nudged"))


def _message_text(said: str) -> tuple[str | None, str] | None:
    """(agent or None, text) that reaches an inbox for a chat line that sends one message:
    ``!message A TEXT``, ``!agent A TEXT``, ``A: TEXT``, ``!ask TEXT`` (interpretation picks
    the agent); None for anything else."""
    words = said.split(None, 2)
    if words and words[0] in ("!message", "!agent") and len(words) == 3:
        return words[1], words[2].strip()
    if words and words[0] == "!ask" and len(words) > 1:
        return None, said.split(None, 1)[1].strip()
    head, sep, rest = said.partition(":")
    return (head.strip(), rest.strip()) if sep and head.strip() and " " not in head.strip() \
        else None


def _refused(ev: Evidence, user: str) -> tuple[bool, str]:
    """The user was refused (logged with their id) and nothing they asked for was done."""
    label = ev.run.platforms[ev.run.users[user]["platform"]].refused_label(user)
    hits = [e for e in ev.log if e.get("event") == "refused"
            and str(e.get("msg", "")).startswith(label)]
    done = [c.text for c in ev.chats if c.user == user and c.reply and _confirmed(c.reply)]
    ok = bool(hits) and not done
    return ok, (f"{len(hits)} refusal(s) logged for {label}, nothing done" if ok else
                f"refusals logged: {len(hits)}; done anyway: {done[:3]}")


def _replied(ev: Evidence, user: str) -> tuple[bool, str]:
    """Every command that reached the bot got a reply (an error counts). One the platform
    never delivered (sent while the bot was not connected, e.g. its process restarting: a
    platform does not deliver it later) is counted apart, not as silence."""
    mine = [c for c in ev.chats if user == "all" or c.user == user]
    if not mine:
        return False, "no chat commands to judge"
    unanswered = [c for c in mine if c.reply is None]
    offline = [c for c in unanswered
               if c.ref and not ev.run.platforms[c.platform].reached(c.ref)]
    silent = [f"{c.user}: {c.text!r}" for c in unanswered if c not in offline]
    return not silent, f"{len(mine) - len(unanswered)} of {len(mine)} answered" + (
        f", {len(offline)} never reached the bot (it was not connected)" if offline else "") + (
        "; silent: " + "; ".join(silent[:5]) if silent else "")


def _restarts(ev: Evidence, spec: dict) -> tuple[bool, str]:
    name = spec["service"]
    if name not in ev.status.get("services", {}):
        return False, f"no service {name!r} in the status"
    n = ev.restarts()[name]
    ok = spec.get("min", 0) <= n <= spec.get("max", 10**9)
    return ok, f"{name} restarted {n} time(s)"


def _preloaded(ev: Evidence, _value) -> tuple[bool, str]:
    """Every preloaded message in exactly one inbox file (its name is the message id)."""
    n = (ev.run.scenario.get("preload") or {}).get("messages", 0)
    got = Counter(f["id"] for f in ev.inbox if f["id"].startswith("preload-"))
    missing = n - len(got)
    return not missing and len(got) == n, f"{len(got)} of {n} preloaded messages delivered" + (
        f"; {missing} missing" if missing else "")


def _healthy(ev: Evidence, _value) -> tuple[bool, str]:
    bad = [f"{n}: {s.get('state')}/{s.get('health')}" for n, s in
           ev.status.get("services", {}).items() if not s.get("healthy", True)]
    return bool(ev.status.get("healthy")), "every service healthy" if ev.status.get(
        "healthy") else ("not healthy: " + "; ".join(bad[:6]) if bad else "no status")


def _delivered(ev: Evidence, spec: dict) -> tuple[bool, str]:
    n = sum(1 for f in ev.inbox if f["agent"] == spec["to"] and spec["contains"] in f["body"])
    return n >= 1, f"{n} inbox file(s) of {spec['to']} contain {spec['contains']!r}"


def _stalled(ev: Evidence, agent: str) -> tuple[bool, str]:
    nudges = [f for f in ev.inbox if f["agent"] == agent and f["headers"].get("Gas") == "nudge"]
    alerts = [e for e in ev.log if e.get("event") == "alert" and f"{agent} stalled" in str(
        e.get("msg", ""))]
    return bool(nudges and alerts), f"{len(nudges)} nudge(s), {len(alerts)} alert(s)"


def _disk_full_handled(ev: Evidence, _value) -> tuple[bool, str]:
    """The queue's full disk was seen and outlived: the queue logged it not writable (disk
    full) and writable again, every chat command sent while the disk was full got a reply,
    and at least one message sent then was refused with an error line naming the full disk.
    Skipped disk_full faults (no tmpfs here) pass, saying why."""
    run = ev.run
    faults = [d for d in run.done if d["fault"] == "disk_full"]
    if not faults:
        return False, "no disk_full fault was played"
    if run.disk is None:
        return True, f"skipped: {run.disk_skip}"
    if not run.outages:
        return False, "; ".join(d["done"] for d in faults)
    queue = [e for e in ev.log if e.get("service") == "queue"]
    full = [e for e in queue if e.get("event") == "not_writable"
            and e.get("problem") == "disk full"]
    back = [e for e in queue if e.get("event") == "writable" and full
            and e.get("ts", 0) > full[0].get("ts", 0)]
    during = [c for c in ev.chats if any(a <= c.t < (b if b is not None else float("inf"))
                                         for a, b in run.outages)]
    silent = [c for c in during if c.reply is None]
    sends = [c for c in during if _message_text(c.text)]
    refused = [c for c in sends if c.reply and "disk full" in c.reply.lower()]
    problems = []
    if not full:
        problems.append("the queue never logged a full disk")
    elif not back:
        problems.append("the queue never logged it was writable again")
    if silent:
        problems.append(f"no reply to {', '.join(repr(c.text) for c in silent[:3])}")
    if not refused:
        problems.append("no message sent during the outage was refused naming the full disk")
    detail = (f"queue not writable (disk full) {len(full)} time(s), writable again "
              f"{len(back)}; {len(during) - len(silent)} of {len(during)} chat commands during "
              f"the outage answered, {len(refused)} of {len(sends)} messages refused naming "
              "the full disk")
    return not problems, "; ".join(problems + [detail])


CHECKS: dict[str, Callable[[Evidence, Any], tuple[bool, str]]] = {
    "handoff_within_s": _handoff_within, "gas_once": _gas_once,
    "delivered_once": _delivered_once, "refused": _refused, "replied": _replied,
    "restarts": _restarts, "healthy_at_end": _healthy, "delivered": _delivered,
    "stalled": _stalled, "preloaded_delivered": _preloaded,
    "disk_full_handled": _disk_full_handled,
}


def render_report(result: Result) -> str:
    s = result.summary
    chat = s.get("chat", {})
    gas = ", ".join(f"{k} {v}" for k, v in sorted(s.get("gas_sent", {}).items())) or "none"
    restarts = ", ".join(f"{k} {v}" for k, v in s.get("restarts", {}).items()) or "none"
    latency = (f", p50 {chat['p50_ms']} ms, p95 {chat['p95_ms']} ms"
               if chat.get("p50_ms") is not None else "")
    lines = [
        (f"scenario {result.scenario}: {'PASSED' if result.ok else 'FAILED'} "
        f"(seed {result.seed}, {result.duration_s:g}s)"),
        (f"  messages delivered {s.get('messages_delivered', 0)}; gas sent {gas}; handoffs "
        f"{s.get('handoffs', 0)}; tasks completed {s.get('tasks_completed', 0)}"),
        (f"  restarts: {restarts}; refused attempts {s.get('refused', 0)}; faults injected "
        f"{s.get('faults', 0)}"),
        f"  chat: {chat.get('answered', 0)} of {chat.get('commands', 0)} answered{latency}"]
    for key, what in (("gas_latency_ms", "gas, threshold written -> inbox file"),
                      ("recovery_ms", "SIGKILL -> running again")):
        spread = s.get(key) or {}
        if spread.get("samples"):
            lines.append(f"  {what}: p50 {spread['p50']} ms, p95 {spread['p95']} ms "
                         f"({spread['samples']})")
    for skipped in s.get("skipped_faults", []):
        lines.append(f"  [skipped] {skipped}")
    for check in result.checks:
        (kind, value), = check["expect"].items()
        lines.append(f"  [{'ok' if check['ok'] else 'FAIL'}] {kind}: {value}: {check['detail']}")
    return "\n".join(lines)
