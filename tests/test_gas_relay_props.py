"""Property test of the relay's pure per-agent state machine (``actors/gas/relay.py``): random
progress (repeats, regressions, jumps), task changes, idle spells, time passing, unstalls and
agents leaving or joining the relay, checked against a model of what must have been sent."""
from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actors.gas import relay

AGENTS = ("A", "B", "C", "D")
TASKS = ("T1", "T2", "T3")  # few, so the same task comes back
STALL_AFTER_S = 10.0
LIMITS = {kind: limit for limit, kind in relay.THRESHOLDS}


class RelayMachine(RuleBasedStateMachine):
    """Drives ``relay`` the way the gas service does (observe -> due gas -> the next agent)."""

    def __init__(self):
        super().__init__()
        self.now = 0.0
        self.names = list(AGENTS[:3])  # D starts outside the relay
        self.states = {a: relay.AgentState(a) for a in AGENTS}
        # the model: the task a cycle belongs to, its number, the highest progress seen in it,
        # when progress/task last changed, and every gas emitted per (agent, model cycle)
        self.task = dict.fromkeys(AGENTS)
        self.cycle_task = dict.fromkeys(AGENTS)
        self.cycle = dict.fromkeys(AGENTS, 0)
        self.progress = dict.fromkeys(AGENTS, 0.0)
        self.top = dict.fromkeys(AGENTS, 0.0)
        self.changed_at = dict.fromkeys(AGENTS, 0.0)
        self.emitted: dict[tuple[str, int], list[str]] = {}
        self.inbox: dict[str, list[tuple[str, str]]] = {a: [] for a in AGENTS}
        self.stall_reports: dict[tuple[str, float], int] = {}

    # -- the model's expectations --------------------------------------------------------------
    def _expect(self, agent: str, task: str | None, progress: float | None) -> None:
        if not task:
            self.task[agent] = None
            return
        if task != self.cycle_task[agent]:
            self.cycle[agent] += 1
            self.cycle_task[agent] = task
            self.progress[agent] = self.top[agent] = 0.0
            self.changed_at[agent] = self.now
        elif self.task[agent] is None:
            self.changed_at[agent] = self.now  # the same task back after an idle spell
        self.task[agent] = task
        if progress is not None and progress != self.progress[agent]:
            self.progress[agent] = progress
            self.changed_at[agent] = self.now
        self.top[agent] = max(self.top[agent], self.progress[agent])

    def _observe(self, agent: str, task: str | None, progress: float | None) -> None:
        self._expect(agent, task, progress)
        state, due = relay.observe(self.states[agent], task, progress, self.now)
        self.states[agent] = state
        assert due == sorted(due, key=LIMITS.get), f"out of order: {due}"
        self.emitted.setdefault((agent, self.cycle[agent]), []).extend(due)
        nxt = relay.next_agent(self.names, agent)
        expected_next = dict(zip(self.names, self.names[1:] + self.names[:1])).get(agent) \
            if len(self.names) > 1 else None
        assert nxt == expected_next
        if nxt:
            self.inbox[nxt] += [(agent, kind) for kind in due]

    # -- rules -----------------------------------------------------------------------------------
    @rule(agent=st.sampled_from(AGENTS), progress=st.integers(0, 100))
    def report_progress(self, agent, progress):
        """Any value: a repeat, a regression, a small step or a jump."""
        self._observe(agent, self.task[agent] or self.cycle_task[agent] or TASKS[0],
                      float(progress))

    @rule(agent=st.sampled_from(AGENTS), task=st.sampled_from(TASKS),
          progress=st.none() | st.integers(0, 100))
    def report_task(self, agent, task, progress):
        self._observe(agent, task, None if progress is None else float(progress))

    @rule(agent=st.sampled_from(AGENTS), progress=st.none() | st.integers(0, 100))
    def report_no_task(self, agent, progress):
        self._observe(agent, None, None if progress is None else float(progress))

    @rule(agent=st.sampled_from(AGENTS))
    def report_without_progress(self, agent):
        if self.task[agent]:
            self._observe(agent, self.task[agent], None)

    @rule(dt=st.sampled_from((0.5, 3.0, STALL_AFTER_S, 25.0)))
    def time_passes(self, dt):
        """A poll later: stalls are checked (a missing status file is just no observation)."""
        self.now += dt
        for agent, state in list(self.states.items()):
            state, became = relay.check_stall(state, self.now, STALL_AFTER_S)
            self.states[agent] = state
            if became:
                key = (agent, self.changed_at[agent])
                self.stall_reports[key] = self.stall_reports.get(key, 0) + 1
            working = bool(self.task[agent]) and self.progress[agent] < 100
            if working and self.now - self.changed_at[agent] >= STALL_AFTER_S:
                assert state.stalled, f"{agent} should be stalled"

    @rule(agent=st.sampled_from(AGENTS))
    def unstall(self, agent):
        if self.states[agent].task:
            self.states[agent] = relay.unstall(self.states[agent], self.now)
            self.changed_at[agent] = self.now

    @precondition(lambda self: len(self.names) > 1)
    @rule(data=st.data())
    def agent_leaves_the_relay(self, data):
        self.names.remove(data.draw(st.sampled_from(self.names)))

    @rule(data=st.data())
    def agent_joins_the_relay(self, data):
        outside = [a for a in AGENTS if a not in self.names]
        if outside:
            self.names.insert(data.draw(st.integers(0, len(self.names))),
                              data.draw(st.sampled_from(outside)))

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def each_threshold_once_in_order_and_none_missed(self):
        for (agent, cycle), kinds in self.emitted.items():
            assert kinds == list(relay.KINDS[:len(kinds)]), (agent, cycle, kinds)
            if cycle == self.cycle[agent]:
                top = self.top[agent]
                assert kinds == [k for k in relay.KINDS if LIMITS[k] <= top], (agent, top, kinds)

    @invariant()
    def state_matches_the_model(self):
        for agent, state in self.states.items():
            assert state.task == self.task[agent]
            assert state.progress == self.progress[agent]
            stage = relay.stage(state)
            if not self.task[agent]:
                assert stage == "IDLE"
            elif stage == "STALLED":
                assert self.progress[agent] < 100
                assert self.now - self.changed_at[agent] >= STALL_AFTER_S
            else:
                p = self.progress[agent]
                assert stage == ("COMPLETE" if p >= 100 else "HANDOFF" if p >= 90
                                 else "PRIMED" if p >= 75 else "ACTIVE")

    @invariant()
    def a_stall_is_reported_once(self):
        assert all(n == 1 for n in self.stall_reports.values()), self.stall_reports

    @invariant()
    def agents_outside_the_relay_fuel_nobody_and_nobody_fuels_itself(self):
        for recipient, gas in self.inbox.items():
            assert all(sender != recipient for sender, _ in gas)
        for agent in AGENTS:
            if agent not in self.names:
                assert relay.next_agent(self.names, agent) is None


RelayMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40,
                                          deadline=None)
test_relay_state_machine = RelayMachine.TestCase
