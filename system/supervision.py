"""OTP-style restart policy (restart types, strategies, intensity, backoff) as pure Python.

No Thespian, clock or global RNG: callers pass ``now`` and a ``random.Random``."""
from __future__ import annotations

import heapq
import random
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import Enum

from system.errors import ConfigError


class Restart(str, Enum):
    """When an exited child is restarted: always, only after a crash, or never."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class Strategy(str, Enum):
    """Which siblings are restarted along with the child that exited."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


def _check(errors: list[str]) -> None:
    if errors:
        raise ConfigError(errors)


@dataclass(frozen=True)
class ChildSpec:
    """One supervised child. ``restart`` also accepts its string value.

    >>> ChildSpec("queue", restart="transient").restart
    <Restart.TRANSIENT: 'transient'>
    """

    name: str
    restart: Restart = Restart.PERMANENT
    depends_on: tuple[str, ...] = ()
    shutdown_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "restart", Restart(self.restart))
        except ValueError:
            raise ConfigError(f"child {self.name!r}: bad restart {self.restart!r}") from None
        object.__setattr__(self, "depends_on", tuple(self.depends_on))
        _check([f"child {self.name!r}: shutdown_timeout_s must be >= 0"]
               if self.shutdown_timeout_s < 0 else [])


@dataclass(frozen=True)
class Backoff:
    """Delay before the n-th consecutive restart of a child.

    >>> b = Backoff(initial_s=0.1, jitter=0.0)
    >>> [b.delay(n, random.Random(0)) for n in (1, 2, 3, 4)]
    [0.0, 0.1, 0.2, 0.4]
    """

    initial_s: float = 0.05
    multiplier: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.2
    reset_after_s: float = 30.0

    def __post_init__(self) -> None:
        errors = [f"backoff.{key} must be >= 0" for key in ("initial_s", "max_s", "reset_after_s")
                  if getattr(self, key) < 0]
        if self.multiplier < 1:
            errors.append("backoff.multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            errors.append("backoff.jitter must be between 0 and 1")
        _check(errors)

    def delay(self, consecutive: int, rng: random.Random) -> float:
        """Seconds to wait; 0 for the first restart since the child was last stable (as OTP)."""
        if consecutive <= 1:
            return 0.0
        try:
            base = min(self.max_s, self.initial_s * self.multiplier ** (consecutive - 2))
        except OverflowError:
            base = self.max_s
        return max(0.0, base * rng.uniform(1 - self.jitter, 1 + self.jitter))


@dataclass(frozen=True)
class SupervisorSpec:
    """Strategy plus restart intensity: more than ``max_restarts`` within ``within_s`` escalates.

    >>> SupervisorSpec(strategy="rest_for_one", max_restarts=0).strategy
    <Strategy.REST_FOR_ONE: 'rest_for_one'>
    """

    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = 3
    within_s: float = 5.0
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "strategy", Strategy(self.strategy))
        except ValueError:
            raise ConfigError(f"unknown supervisor strategy {self.strategy!r}") from None
        errors = [] if self.max_restarts >= 0 else ["max_restarts must be >= 0"]
        if self.within_s <= 0:
            errors.append("within_s must be > 0")
        _check(errors)


def start_order(
    children: Mapping[str, Sequence[str]], known: AbstractSet[str] | None = None
) -> list[str]:
    """Order services so each starts after its dependencies, else declaration order.

    ``children`` maps name -> names it depends on, in declaration order. Names in ``known``
    (e.g. disabled services) are accepted as dependencies but are not part of the order.
    Raises ConfigError listing every unknown dependency and every cycle at once.

    >>> start_order({"api": ["db"], "cache": [], "db": []})
    ['cache', 'db', 'api']
    >>> start_order({"a": ["b"], "b": ["a"]})
    Traceback (most recent call last):
    system.errors.ConfigError: dependency cycle: a -> b -> a
    """
    names = list(children)
    index = {name: i for i, name in enumerate(names)}
    errors = list(dict.fromkeys(
        f"service {name!r} depends on unknown service {dep!r}"
        for name, wanted in children.items() for dep in wanted
        if dep not in index and dep not in (known or ())))
    deps = {name: [dep for dep in dict.fromkeys(wanted) if dep in index]
            for name, wanted in children.items()}
    waiting = {name: set(d) for name, d in deps.items()}
    users = {name: [user for user in names if name in waiting[user]] for name in names}
    ready = [index[name] for name in names if not waiting[name]]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:  # Kahn's algorithm, always taking the earliest-declared ready service
        name = names[heapq.heappop(ready)]
        order.append(name)
        for user in users[name]:
            waiting[user].discard(name)
            if not waiting[user]:
                heapq.heappush(ready, index[user])
    if len(order) < len(names):
        placed = set(order)
        errors.extend(_cycles([n for n in names if n not in placed], deps))
    _check(errors)
    return order


def _cycles(stuck: list[str], deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Name one cycle per tangle; every stuck service waits on at least one other stuck one."""
    rank = {name: i for i, name in enumerate(stuck)}
    covered: set[str] = set()
    messages = []
    for start in stuck:
        node, path = start, []
        while node not in covered and node not in path:
            path.append(node)
            node = next(dep for dep in deps[node] if dep in rank)
        covered.update(path)
        if node in path:  # a new cycle, not a walk into one already reported
            cycle = path[path.index(node):]
            first = cycle.index(min(cycle, key=rank.__getitem__))
            cycle = cycle[first:] + cycle[:first]
            messages.append("dependency cycle: " + " -> ".join([*cycle, cycle[0]]))
    return messages


@dataclass(frozen=True)
class Decision:
    """What the supervisor must do about one exit.

    ``action`` is "restart", "ignore" or "escalate". Stop ``stop`` (reverse start order, never
    the exited child), wait ``delay_s``, then start ``start`` (start order).
    """

    action: str
    stop: tuple[str, ...]
    start: tuple[str, ...]
    delay_s: float
    reason: str


def _ignore(reason: str) -> Decision:
    return Decision("ignore", (), (), 0.0, reason)


class RestartPolicy:
    """Per-supervisor state machine. Clock and RNG are injected (``now`` in seconds; ``rng``).

    >>> p = RestartPolicy(SupervisorSpec(max_restarts=1), [ChildSpec("db"), ChildSpec("api")])
    >>> p.child_started("db", now=0.0); p.child_started("api", now=0.0)
    >>> p.child_exited("db", abnormal=True, now=1.0).start
    ('db',)
    >>> p.child_started("db", now=1.0)
    >>> p.child_exited("db", abnormal=True, now=2.0).stop
    ('api',)
    """

    def __init__(self, spec: SupervisorSpec, children: Sequence[ChildSpec],
                 rng: random.Random | None = None) -> None:
        names = [child.name for child in children]
        dupes = sorted({n for n in names if names.count(n) > 1})
        _check([f"duplicate child name {n!r}" for n in dupes])
        self._spec = spec
        self._order = names
        self._children = {child.name: child for child in children}
        self._rng = rng if rng is not None else random.Random()
        self._running: set[str] = set()
        self._started_at: dict[str, float] = {}
        self._consecutive = dict.fromkeys(names, 0)
        self._total = dict.fromkeys(names, 0)
        self._restarts: list[float] = []
        self._escalated = False

    @property
    def spec(self) -> SupervisorSpec:
        return self._spec

    @property
    def escalated(self) -> bool:
        """True once intensity was exceeded; every later exit is ignored."""
        return self._escalated

    @property
    def running(self) -> tuple[str, ...]:
        """Children currently considered running, in start order."""
        return tuple(n for n in self._order if n in self._running)

    def _child(self, name: str) -> ChildSpec:
        try:
            return self._children[name]
        except KeyError:
            raise KeyError(f"unknown child {name!r}") from None

    def child_started(self, name: str, now: float) -> None:
        """Mark ``name`` running since ``now`` (used for the stability reset)."""
        self._child(name)
        self._running.add(name)
        self._started_at[name] = now

    def child_stopped(self, name: str) -> None:
        """Mark ``name`` stopped on purpose (shutdown, manual restart): no decision, no count."""
        self._child(name)
        self._running.discard(name)

    def child_exited(self, name: str, *, abnormal: bool, now: float) -> Decision:
        """Decide what to do about ``name`` exiting at ``now``."""
        child = self._child(name)
        how = "abnormally" if abnormal else "normally"
        if self._escalated:
            return _ignore(f"{name} exited {how}; supervisor already escalated")
        if name not in self._running:
            return _ignore(f"{name} exited {how} while not running (already stopped); ignored")
        self._running.discard(name)
        if child.restart is Restart.TEMPORARY or (child.restart is Restart.TRANSIENT
                                                  and not abnormal):
            return _ignore(f"{name} exited {how}; {child.restart.value} child not restarted")
        spec = self._spec
        self._restarts = [t for t in self._restarts if t >= now - spec.within_s] + [now]
        count, window = len(self._restarts), f"{spec.within_s:g}s"
        if count > spec.max_restarts:
            self._escalated = True
            stop = tuple(n for n in reversed(self._order) if n in self._running)
            self._running.clear()
            return Decision("escalate", stop, (), 0.0, f"restart intensity exceeded: {count} "
                            f"restarts within {window} (max {spec.max_restarts})")
        started = self._started_at.get(name)
        if started is not None and now - started >= spec.backoff.reset_after_s:
            self._consecutive[name] = 0
        self._consecutive[name] += 1
        delay = spec.backoff.delay(self._consecutive[name], self._rng)
        affected = set(self._affected(name))
        stop = tuple(n for n in reversed(self._order) if n in affected and n in self._running)
        start = tuple(n for n in self._order if n == name or (
            n in affected and self._children[n].restart is not Restart.TEMPORARY))
        self._running.difference_update(stop)
        for n in start:
            self._total[n] += 1
        reason = f"{name} exited {how}; restart {count} within {window}"
        reason += f", after {delay:.3g}s" if delay else ""
        return Decision("restart", stop, start, delay, reason)

    def _affected(self, name: str) -> list[str]:
        """Siblings the strategy restarts together with ``name``."""
        strategy = self._spec.strategy
        if strategy is Strategy.ONE_FOR_ALL:
            return [n for n in self._order if n != name]
        if strategy is Strategy.REST_FOR_ONE:
            return self._order[self._order.index(name) + 1:]
        return []

    def restart_count(self, name: str) -> int:
        """Restarts of ``name`` over the policy's life, including group restarts."""
        self._child(name)
        return self._total[name]

    def shutdown_order(self) -> list[str]:
        """All children, reverse of start order."""
        return list(reversed(self._order))

    def update_spec(self, spec: SupervisorSpec) -> None:
        """Hot reload: new strategy, intensity and backoff apply to later exits; keeps history."""
        self._spec = spec
