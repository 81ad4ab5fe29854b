"""The auto gas pipeline: watches the agents' progress and sends the next agent in the relay its
gas at 75 / 90 / 100 %, exactly once per threshold, through the queue (to its inbox file).

A thin actor over :mod:`actors.gas.relay` (the rules), :mod:`actors.gas.ledger` (what was sent,
in SQLite) and :mod:`actors.gas.agentfiles` (the status files). Every ``poll_interval_s`` it
reads the status files that changed; ``gas.progress`` pushes progress directly. Gas due is recorded as
pending before it is enqueued (with a deterministic id) and marked sent once the queue has it,
so a SIGKILL at any point neither skips nor repeats a threshold. Each gas sent is announced on
the notification path (kind ``gas``); a stall raises an alert and nudges the agent.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import msgpack

from actors.gas import relay
from actors.gas.agentfiles import StatusFiles, check_agent
from actors.gas.brain import Brain
from actors.gas.ledger import Ledger, gas_id
from system import protocol
from system.errors import ConfigError, PermanentError
from system.service import ServiceActor, handles

PRIORITIES = {"prepare": "normal", "ready": "high", "go": "urgent", "nudge": "high"}
ENQUEUE_TIMEOUT_S = 10.0


def template_values(row: dict, learnings: list[dict], max_chars: int = 1500) -> dict[str, str]:
    """What a template's placeholders are filled with: the names the schema allows in
    ``services.gas.templates`` (``x-placeholders``), which the config load checks. The
    learnings are cut to ``max_chars`` in all, at an entry's end where one fits."""
    text = ""
    for e in learnings:
        line = f"- {e['title']}: {' '.join(e['content'].split())[:300]}"
        if len(text) + len(line) + 1 > max_chars:
            text = text or line[:max_chars - 1] + "…"
            break
        text += ("\n" if text else "") + line
    return {"agent": row["agent"], "next_agent": row["next_agent"],
            "task": row["task"] or "(no task)", "progress": f"{row['progress']:g}",
            "learnings": text or "(the swarm brain has no learnings yet)"}


class GasService(ServiceActor):
    tick_s = 0.5
    ledger: Ledger | None = None
    brain: Brain | None = None

    def on_start(self) -> None:
        cfg = self.service_config()
        self.templates = dict(cfg.get("templates") or {})
        self.poll_s = float(cfg.get("poll_interval_s", 1.0))
        self.tick_s = min(type(self).tick_s, self.poll_s)  # on_tick aims it at the next poll
        self.stall_after_s = float(cfg.get("stall_after_s", 600.0))
        try:
            self.thresholds = relay.thresholds_from(cfg.get("thresholds"))
        except ValueError as exc:
            raise ConfigError(f"services.gas.thresholds: {exc}") from None
        self.priorities = PRIORITIES | dict(cfg.get("priorities") or {})
        learnings = cfg.get("learnings") or {}
        self.learnings = (int(learnings.get("count", 3)), int(learnings.get("max_chars", 1500)))
        self.names = list(self.config.get("agents", {}).get("names", []))
        data = Path(self.config["system"]["data_dir"])
        data.mkdir(parents=True, exist_ok=True)
        self.ledger = _open(Ledger, data / (cfg.get("db_path") or "gas.db"),
                            "services.gas.db_path")
        self.brain = _open(Brain, data / ((cfg.get("brain") or {}).get("db_path") or "brain.db"),
                           "services.gas.brain.db_path")
        self.states = self.ledger.load()
        self.files = StatusFiles(self.config["agents"]["workspace_root"])
        self.problems: dict[str, str] = {}
        self.next_poll = 0.0
        self.in_flight: set[str] = set()
        self.outbox: dict[str, dict] = {r["msg_id"]: r for r in self.ledger.pending()}
        if self.outbox:
            self.log("info", "resend", f"{len(self.outbox)} gas recorded but not confirmed by "
                     "the queue: sending again (the queue drops duplicates)")

    def on_stop(self) -> None:
        for store in (self.ledger, self.brain):
            if store is not None:  # None: on_start failed before opening it
                store.close()

    # -- observing ------------------------------------------------------------------------
    def on_tick(self) -> None:
        now = time.time()
        if now >= self.next_poll:
            # a fixed cadence: the polls' own duration (and the tick's) must not stretch it
            on_time = now - self.next_poll < self.poll_s  # not the first poll, nor far behind
            self.next_poll = self.next_poll + self.poll_s if on_time else now + self.poll_s
            for agent in self.files.agents(self.names):
                reading = self.files.changed(agent)
                if reading is None:
                    continue
                if reading.problem:
                    self.problems[agent] = reading.problem
                    self.log("warning", "status_file", f"{agent}: {reading.problem}; keeping "
                             "the last good state", agent=agent)
                    continue
                self.problems.pop(agent, None)
                self.apply(agent, reading.task, reading.progress, now)
            self._check_stalls(now)
        self._flush()
        self.tick_s = max(0.01, min(type(self).tick_s, self.next_poll - time.time()))

    def apply(self, agent: str, task: str | None, progress: float | None, now: float) -> None:
        before = self.states.get(agent) or relay.AgentState(agent)
        state, due = relay.observe(before, task, progress, now, self.thresholds)
        nxt = relay.next_agent(self.names, agent)
        if state == before:
            return
        rows = self.ledger.save(state, [(kind, nxt, now) for kind in due] if nxt else [])
        self.states[agent] = state
        for row in rows:
            self.outbox[row["msg_id"]] = row
        if "go" in due:  # the cycle's last threshold: once per task, as the gas itself
            self.notify("gas", f"{agent} completed {task}", key=f"gas:complete:{agent}:"
                        f"{state.cycle}", agent=agent, task=task)

    def _check_stalls(self, now: float) -> None:
        for agent, state in list(self.states.items()):
            state, became = relay.check_stall(state, now, self.stall_after_s, self.thresholds)
            if became:
                self.states[agent] = state
                self.ledger.save(state, [])
                self.alert("warning", f"{agent} stalled", f"no progress on {state.task} for "
                           f"{self.stall_after_s:g}s (at {state.progress:g}%)",
                           key=f"gas:stall:{agent}")
                self._nudge(state)

    def _nudge(self, state: relay.AgentState) -> None:
        kind = f"nudge-{int(state.changed_at)}"
        self.outbox[gas_id(state.agent, state.cycle, state.task, kind)] = {
            "agent": state.agent, "cycle": state.cycle, "kind": "nudge", "task": state.task,
            "next_agent": state.agent, "progress": state.progress,
            "msg_id": gas_id(state.agent, state.cycle, state.task, kind), "ledger": False}

    # -- sending ------------------------------------------------------------------------------
    def _text(self, row: dict) -> str:
        count, max_chars = self.learnings
        learnings = self.brain.learnings_for(row["task"], count) \
            if "{learnings}" in self.templates[row["kind"]] else []
        return self.templates[row["kind"]].format(**template_values(row, learnings, max_chars))

    def _flush(self) -> None:
        rows = [r for m, r in self.outbox.items() if m not in self.in_flight]
        if not rows or self.in_flight:
            return
        items = [{"recipient": r["next_agent"], "id": r["msg_id"], "sender": "gas",
                  "type": "gas", "priority": self.priorities[r["kind"]],
                  "payload": msgpack.packb({"text": self._text(r)}),
                  "headers": {"Gas": r["kind"], "From-Agent": r["agent"],
                              "Task": str(r["task"])[:200]}} for r in rows]
        self.in_flight = {r["msg_id"] for r in rows}

        def enqueued(reply) -> None:
            self.in_flight = set()
            if reply is None or reply.t == "error":
                self.log("warning", "enqueue_failed", "the queue did not take the gas; "
                         "retrying", detail=reply.b.get("detail") if reply else "timeout")
                return
            rejected = {rows[i]["msg_id"]: why for i, why in reply.b["rejected"]}
            done = [r for r in rows if r["msg_id"] not in rejected]
            self.ledger.mark_sent([r["msg_id"] for r in done if r.get("ledger", True)])
            for msg_id, why in rejected.items():
                self.log("error", "gas_rejected", f"the queue rejected gas {msg_id}: {why}")
            for r in rows:
                self.outbox.pop(r["msg_id"], None)
            for r in done:
                if r["kind"] != "nudge":
                    self.notify("gas", f"{r['kind']} → {r['next_agent']}: {r['agent']} at "
                                f"{r['progress']:g}% on {r['task']}", key=r["msg_id"],
                                agent=r["agent"], next_agent=r["next_agent"], gas=r["kind"])

        def no_queue(_lookup) -> None:
            self.in_flight = set()  # the next tick tries again

        self.request_named("queue", protocol.QUEUE_ENQUEUE, {"items": items}, enqueued,
                           ENQUEUE_TIMEOUT_S, no_queue)

    # -- commands -----------------------------------------------------------------------------
    def _agent(self, name) -> str:
        if problem := check_agent(name):
            raise PermanentError(problem)
        return name

    @handles(protocol.GAS_PROGRESS)
    def _progress(self, env, sender) -> None:
        agent = self._agent(env.b["agent"])
        progress = env.b.get("progress")
        if isinstance(progress, bool) or not isinstance(progress, (int, float)) \
                or not 0 <= progress <= 100:
            raise PermanentError("progress must be a number from 0 to 100")
        state = self.states.get(agent) or relay.AgentState(agent)
        task = env.b.get("task") or state.task or state.cycle_task  # IDLE: resume the last
        if not task:
            raise PermanentError(f"{agent} has no current task: give one (--task)")
        self.apply(agent, str(task)[:500], float(progress), time.time())
        self._flush()
        self.reply(sender, env, protocol.OK, self._view(agent))

    @handles(protocol.GAS_UNSTALL)
    def _unstall(self, env, sender) -> None:
        agent = self._agent(env.b["agent"])
        state = self.states.get(agent)
        if state is None or not state.task:
            raise PermanentError(f"{agent} has no task the pipeline knows of")
        state = self.states[agent] = relay.unstall(state, time.time())
        self.ledger.save(state, [])
        self._nudge(state)
        self.notify("gas", f"{agent} unstalled (nudged again)", agent=agent, task=state.task)
        self._flush()
        self.reply(sender, env, protocol.OK, self._view(agent))

    @handles(protocol.GAS_STATUS)
    def _status(self, env, sender) -> None:
        agents = self.files.agents(self.names)
        agents += [a for a in self.states if a not in agents]
        self.reply(sender, env, protocol.OK, {"agents": [self._view(a) for a in agents],
                                              "relay": self.names})

    @handles(protocol.GAS_HISTORY)
    def _history(self, env, sender) -> None:
        self.reply(sender, env, protocol.OK, {"gas": self.ledger.history(
            _opt_text(env.b, "agent"), _limit(env.b.get("limit", 50)))})

    # -- the swarm brain ------------------------------------------------------------------------
    @handles(protocol.BRAIN_ADD)
    def _brain_add(self, env, sender) -> None:
        b = env.b
        tags = b.get("tags") or []
        if isinstance(tags, str):
            tags = tags.split(",")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise PermanentError("tags must be a list of strings")
        entry_id = self.brain.add(b["title"], b["content"], category=_opt_text(b, "category")
                                  or "learning", tags=tags, author=b.get("author") or "unknown")
        self.reply(sender, env, protocol.OK, {"id": entry_id})

    @handles(protocol.BRAIN_SEARCH)
    def _brain_search(self, env, sender) -> None:
        self.reply(sender, env, protocol.OK, {"results": self.brain.search(
            env.b["query"], _opt_text(env.b, "category"), _limit(env.b.get("limit", 10)))})

    @handles(protocol.BRAIN_SHOW)
    def _brain_show(self, env, sender) -> None:
        entry = self.brain.get(env.b["id"])
        if entry is None:
            raise PermanentError(f"no brain entry #{env.b['id']}")
        self.reply(sender, env, protocol.OK, entry)

    @handles(protocol.BRAIN_LIST)
    def _brain_list(self, env, sender) -> None:
        offset = env.b.get("offset", 0)
        if not isinstance(offset, int) or not 0 <= offset <= 2**62:
            raise PermanentError("offset must be a non-negative integer")
        self.reply(sender, env, protocol.OK, {"entries": self.brain.list(
            _opt_text(env.b, "category"), _limit(env.b.get("limit", 20)), offset)})

    def _view(self, agent: str) -> dict:
        state = self.states.get(agent) or relay.AgentState(agent)
        return {"agent": agent, "stage": relay.stage(state, self.thresholds), "progress": state.progress,
                "task": state.task, "updated": state.changed_at, "cycle": state.cycle,
                "next": relay.next_agent(self.names, agent), "problem": self.problems.get(agent),
                "sent": self.ledger.sent_in_cycle(agent, state.cycle) if state.cycle else {}}

    def health(self) -> tuple[str, str]:
        stalled = sorted(a for a, s in self.states.items() if s.stalled)
        waiting = len(self.outbox)
        working = sum(1 for s in self.states.values() if relay.stage(s, self.thresholds)
                      in ("ACTIVE", "PRIMED", "HANDOFF"))
        detail = f"{len(self.states)} agents seen, {working} working" + (
            f"; {waiting} gas waiting for the queue" if waiting else "")
        if stalled:
            detail += f"; stalled: {', '.join(stalled)}"
        if self.problems:
            detail += f"; unreadable status: {', '.join(sorted(self.problems))}"
        return "ok", detail


def _open(store, path: Path, key: str):
    """A store's SQLite file (its directory made): a file that cannot be opened is a config
    error naming the key, not a restart loop."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return store(str(path))
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"{key}: cannot open {path}: {exc}") from None


def _opt_text(body: dict, field: str) -> str | None:
    """An optional text field (None when absent or empty): anything but a string is refused
    here, not by SQLite (a map bound as a parameter is a ProgrammingError: a crash)."""
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise PermanentError(f"{field} must be a string")
    return value or None


def _limit(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise PermanentError("limit must be an integer from 1 to 10000")
    return value
