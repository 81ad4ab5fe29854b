"""The relay's rules, pure: one agent's state, what an observation of its progress means, when
it is stalled, and who is next.

    >>> s, due = observe(AgentState("Agent-1"), "T1", 76.0, now=0.0)
    >>> stage(s), due
    ('PRIMED', ['prepare'])
    >>> observe(s, "T1", 80.0, now=1.0)[1]   # 75 was passed already: nothing more
    []
    >>> observe(s, "T1", 100.0, now=2.0)[1]  # a jump sends what it passed, in order
    ['ready', 'go']

Rules: a new ``current_task`` starts a new cycle (nothing of the old one is sent again, every
threshold can fire once more); progress that goes back in the same task changes the stage but
never re-sends a threshold of that cycle; a jump sends every threshold it passes, in order,
once each; a repeat sends nothing and does not restart the stall timer; a missing progress
keeps the last one; no task is ``IDLE``, and the same task coming back after it resumes its
cycle (nothing is sent again; the stall timer restarts). An agent working on a task below
100 % whose progress has not changed for ``stall_after_s`` is ``STALLED`` (reported once)
until its progress or task changes, or it is unstalled.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

THRESHOLDS = ((75.0, "prepare"), (90.0, "ready"), (100.0, "go"))
"""The default (percent, gas kind) pairs in order; ``services.gas.thresholds`` sets others."""
KINDS = tuple(kind for _, kind in THRESHOLDS)
Thresholds = tuple[tuple[float, str], ...]


def thresholds_from(config: dict | None) -> Thresholds:
    """``{prepare: 75, ready: 90, go: 100}`` (any subset; the rest default) as ordered pairs;
    ValueError unless 0 < prepare < ready < go <= 100.

    >>> thresholds_from({"go": 95})
    ((75.0, 'prepare'), (90.0, 'ready'), (95.0, 'go'))
    """
    limits = {kind: float(limit) for limit, kind in THRESHOLDS} | {
        k: float(v) for k, v in (config or {}).items()}
    values = [limits[k] for k in KINDS]
    if not 0 < values[0] < values[1] < values[2] <= 100:
        raise ValueError("thresholds must rise: 0 < prepare < ready < go <= 100, got "
                         + ", ".join(f"{k} {limits[k]:g}" for k in KINDS))
    return tuple(zip(values, KINDS))


@dataclass(frozen=True)
class AgentState:
    agent: str
    cycle: int = 0
    """Number of the current task's cycle; a new task starts the next one."""
    task: str | None = None
    progress: float = 0.0
    changed_at: float = 0.0
    """When progress or task last changed (the stall timer)."""
    stalled: bool = False
    sent: frozenset[str] = field(default_factory=frozenset)
    """Gas kinds already due in this cycle (sent, or being sent)."""
    cycle_task: str | None = None
    """The task the cycle belongs to; unlike ``task`` it is kept while IDLE."""


def observe(state: AgentState, task: str | None, progress: float | None,
            now: float, thresholds: Thresholds = THRESHOLDS) -> tuple[AgentState, list[str]]:
    """The state after seeing (task, progress), and the gas kinds due now, in order."""
    if not task:
        return replace(state, task=None, stalled=False), []
    if task != state.cycle_task:
        state = AgentState(state.agent, state.cycle + 1, task, 0.0, now, cycle_task=task)
    elif task != state.task:
        # Back from IDLE (a status file without a task, e.g. rewritten by another tool) to
        # the same task: a new cycle here re-sent every threshold already sent for it.
        state = replace(state, task=task, changed_at=now)
    if progress is None:
        progress = state.progress
    if progress != state.progress:
        state = replace(state, progress=progress, changed_at=now, stalled=False)
    due = [kind for limit, kind in thresholds if progress >= limit and kind not in state.sent]
    return replace(state, sent=state.sent | set(due)), due


def stage(state: AgentState, thresholds: Thresholds = THRESHOLDS) -> str:
    if not state.task:
        return "IDLE"
    if state.stalled:
        return "STALLED"
    (primed, _), (handoff, _), (complete, _) = thresholds
    p = state.progress
    return "COMPLETE" if p >= complete else "HANDOFF" if p >= handoff \
        else "PRIMED" if p >= primed else "ACTIVE"


def check_stall(state: AgentState, now: float, stall_after_s: float,
                thresholds: Thresholds = THRESHOLDS) -> tuple[AgentState, bool]:
    """(state, True) the moment a working agent (a task, not complete) becomes stalled."""
    working = bool(state.task) and state.progress < thresholds[-1][0]
    if working and not state.stalled and now - state.changed_at >= stall_after_s:
        return replace(state, stalled=True), True
    return state, False


def unstall(state: AgentState, now: float) -> AgentState:
    return replace(state, stalled=False, changed_at=now)


def next_agent(names: list[str] | tuple[str, ...], agent: str) -> str | None:
    """Who ``agent`` fuels: the next in the relay, wrapping around; None when it is not in it
    (watched, fuels nobody) or alone.

    >>> next_agent(["A", "B", "C"], "C"), next_agent(["A"], "A"), next_agent(["A"], "X")
    ('A', None, None)
    """
    if agent not in names or len(names) < 2:
        return None
    return names[(list(names).index(agent) + 1) % len(names)]
