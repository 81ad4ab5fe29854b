"""Simulated agents: what a relay of AI agents does to the files the swarm watches and writes.

Each agent, in ``WORKSPACE/AGENT/``:

* reads its inbox files (``inbox/*.md``, written by the queue) in the order they arrived, and
  marks each one read by appending its message id to ``read.log`` (one id per line; the
  queue's files are never touched). A restarted agent goes on after the last id in it.
* starts a task when it reads a *go* gas (header ``Gas: go``); an agent listed in ``start``
  starts one at once. Working, it raises its progress by ``speed`` percent per second and
  writes ``status.json`` (``current_task``, ``progress``) every ``write_every_s``, sometimes
  non-atomically as real agents do (``torn_writes``: the share written in place, in two
  pieces, with a moment between them, so the watcher can see half a file); at 100 it stops.
* can be told to stall (progress frozen for a while) or crash (nothing read or written for a
  while, then it starts again from ``read.log``).

Everything it does is recorded with its time (:attr:`SimAgents.events`) for the
expectations: ``reached`` (agent, task, progress), ``read`` (agent, message id, headers).
All random choices come from one seeded ``random.Random``.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

TICK_S = 0.05


@dataclass
class Event:
    t: float
    kind: str              # wrote | reached | read | started | stalled | crashed | recovered
    agent: str
    task: str | None = None
    progress: float | None = None
    message_id: str | None = None
    headers: dict = field(default_factory=dict)
    text: str = ""


@dataclass
class _Agent:
    name: str
    speed: float
    task: str | None = None
    progress: float = 0.0
    tasks_done: int = 0
    next_write: float = 0.0
    frozen_until: float = 0.0     # stalled: progress does not move
    down_until: float = 0.0       # crashed: nothing at all
    read: set[str] = field(default_factory=set)


def parse_inbox_file(text: str) -> tuple[dict[str, str], str]:
    """(headers, body) of an inbox file: ``Key: value`` lines up to the first blank line.

    >>> parse_inbox_file("# Message m1\\nFrom: gas\\nGas: go\\n\\nGO now\\n")
    ({'From': 'gas', 'Gas': 'go'}, 'GO now\\n')
    """
    head, _, body = text.partition("\n\n")
    headers = {}
    for line in head.splitlines():
        key, sep, value = line.partition(": ")
        if sep and not line.startswith("#"):
            headers[key] = value
    return headers, body


class SimAgents:
    """The agents of ``names`` working in ``workspace``, driven by one thread."""

    def __init__(self, workspace: Path, names: list[str], *, seed: int = 0,
                 speed: float = 10.0, speeds: dict[str, float] | None = None,
                 start: list[str] | None = None, write_every_s: float = 0.5,
                 torn_writes: float = 0.2, clock=time.monotonic):
        self.root = Path(workspace)
        self.rng = random.Random(seed)
        self.clock = clock
        self.write_every_s = write_every_s
        self.torn_writes = torn_writes
        self.agents = {n: _Agent(n, (speeds or {}).get(n, speed)) for n in names}
        self.start_with = list(names[:1] if start is None else start)
        self.events: list[Event] = []
        self.t0 = clock()
        self.wall0 = time.time()  # the wall clock at t0: event times against file times
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------------
    def start(self) -> None:
        for agent in self.agents.values():
            (self.root / agent.name / "inbox").mkdir(parents=True, exist_ok=True)
            agent.read = self._read_log(agent.name)
        for name in self.start_with:
            self._begin(self.agents[name])
        self._thread = threading.Thread(target=self._run, name="sim-agents", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def stall(self, name: str, for_s: float) -> None:
        with self._lock:
            self.agents[name].frozen_until = self.clock() + for_s
            self._record("stalled", self.agents[name])

    def crash(self, name: str, for_s: float) -> None:
        with self._lock:
            agent = self.agents[name]
            agent.down_until = self.clock() + for_s
            agent.read = set()  # forgotten: read.log tells it again when it comes back
            self._record("crashed", agent)

    def now(self) -> float:
        return self.clock() - self.t0

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            with self._lock:
                now = self.clock()
                for agent in self.agents.values():
                    if now < agent.down_until:
                        continue
                    if agent.down_until and not agent.read:  # back from a crash
                        agent.read = self._read_log(agent.name)
                        agent.down_until = 0.0
                        self._record("recovered", agent)
                    self._read_inbox(agent)
                    self._work(agent, now)

    def _work(self, agent: _Agent, now: float) -> None:
        if agent.task is None or agent.progress >= 100:
            return
        if now >= agent.frozen_until:
            agent.progress = min(100.0, agent.progress + agent.speed * TICK_S)
        if now >= agent.next_write or agent.progress >= 100:
            agent.next_write = now + self.write_every_s
            self._write_status(agent)
            if agent.progress >= 100:
                agent.tasks_done += 1
                self._record("reached", agent)

    def _begin(self, agent: _Agent) -> None:
        agent.task = f"{agent.name}-task-{agent.tasks_done + 1}"
        agent.progress = 0.0
        agent.next_write = 0.0
        self._record("started", agent)
        self._write_status(agent)

    def _write_status(self, agent: _Agent) -> None:
        path = self.root / agent.name / "status.json"
        text = json.dumps({"current_task": agent.task, "progress": round(agent.progress, 1),
                           "updated": time.time()})
        if self.rng.random() < self.torn_writes:  # in place, in two pieces
            half = len(text) // 2
            with open(path, "w") as f:
                f.write(text[:half])
                f.flush()
                time.sleep(0.002)
                f.write(text[half:])
        else:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        self._record("wrote", agent)

    def _read_inbox(self, agent: _Agent) -> None:
        inbox = self.root / agent.name / "inbox"
        try:
            entries = [(p.stat().st_mtime_ns, p.name, p) for p in inbox.glob("*.md")]
        except OSError:
            return
        for _, _, path in sorted(entries):
            mid = path.stem
            if mid in agent.read:
                continue
            try:
                headers, body = parse_inbox_file(path.read_text())
            except OSError:
                continue
            agent.read.add(mid)
            with open(self.root / agent.name / "read.log", "a") as log:
                log.write(mid + "\n")
            self._record("read", agent, message_id=mid, headers=headers, text=body.strip())
            if headers.get("Gas") == "go" and (agent.task is None or agent.progress >= 100):
                self._begin(agent)

    def _read_log(self, name: str) -> set[str]:
        try:
            return set((self.root / name / "read.log").read_text().split())
        except OSError:
            return set()

    def _record(self, kind: str, agent: _Agent, **extra) -> None:
        self.events.append(Event(self.now(), kind, agent.name, agent.task, agent.progress,
                                 **extra))
