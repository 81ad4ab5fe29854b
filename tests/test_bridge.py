"""AsyncBridge under stress: many concurrent asks from the loop, answered from another thread
(as the actor does) after random delays, with a tiny GIL switch interval so the two threads
interleave at almost every bytecode. Every ask must get exactly its own answer or a clean
TimeoutError, and no wake-up of the actor side may be missed."""
from __future__ import annotations

import asyncio
import heapq
import random
import select
import sys
import threading
import time

import pytest

from system.bridge import AsyncBridge

ASKS = 600  # concurrent, then SEQUENTIAL in small bursts (where a lost wake-up would stall)
SEQUENTIAL, BURST = 1000, 4
TIMEOUT_S = 0.4
LATE = 0.6  # answers of the late asks come after their timeout, well clear of it


@pytest.fixture
def tiny_switch_interval():
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(saved)


class FakeActor(threading.Thread):
    """Drains the bridge when its fd is readable and answers each ask after its delay
    (``request["delay"]``) with ``("answer", request["n"])``. Idle, it waits 2 s for the fd:
    a missed wake-up shows as an ask that waited that long to be drained (``max_lag``)."""

    def __init__(self, bridge: AsyncBridge):
        super().__init__(daemon=True)
        self.bridge = bridge
        self.stop = threading.Event()
        self.asks = 0
        self.max_lag = 0.0
        self.others: list = []

    def run(self) -> None:
        due: list[tuple[float, int, int]] = []  # (when, rid, n)
        while not self.stop.is_set():
            timeout = max(0.0, due[0][0] - time.monotonic()) if due else 2.0
            select.select([self.bridge.fileno()], [], [], min(timeout, 0.5)
                          if self.stop.is_set() else timeout)
            for event in self.bridge.drain():
                if isinstance(event, tuple) and event[0] == "ask":
                    _, rid, request = event
                    self.asks += 1
                    self.max_lag = max(self.max_lag, time.monotonic() - request["at"])
                    heapq.heappush(due, (time.monotonic() + request["delay"], rid, request["n"]))
                else:
                    self.others.append(event)
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, rid, n = heapq.heappop(due)
                self.bridge.answer(rid, ("answer", n))


def test_every_concurrent_ask_gets_its_own_answer_or_a_clean_timeout(tiny_switch_interval):
    rng = random.Random(11)
    late = set(rng.sample(range(ASKS), ASKS // 10))
    delays = {n: LATE + rng.random() * 0.1 if n in late else rng.random() * 0.05
              for n in range(ASKS)} | {n: 0.0 for n in range(ASKS, ASKS + SEQUENTIAL)}
    bridge = AsyncBridge()
    results: dict[int, object] = {}
    loop_errors: list[dict] = []

    async def main(b: AsyncBridge) -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))

        async def one(n: int, spread: float = 0.2) -> None:
            await asyncio.sleep(rng.random() * spread)  # spread the asks over time
            try:
                results[n] = await b.ask({"n": n, "delay": delays[n],
                                          "at": time.monotonic()}, TIMEOUT_S)
            except TimeoutError:
                results[n] = "timeout"

        await asyncio.gather(*(one(n) for n in range(ASKS)))
        for first in range(ASKS, ASKS + SEQUENTIAL, BURST):
            await asyncio.gather(*(one(n, spread=0.0) for n in range(first, first + BURST)))
        await asyncio.sleep(LATE + 0.2)  # the late answers arrive to nobody

    actor = FakeActor(bridge)
    actor.start()
    started = time.monotonic()
    bridge.start(main, name="bridge-stress")
    bridge._thread.join(30)
    actor.stop.set()
    actor.join(5)
    assert not bridge.running, "the asks did not all finish"
    assert bridge.error is None
    assert time.monotonic() - started < 20
    assert actor.asks == ASKS + SEQUENTIAL, "every ask reached the actor side exactly once"
    assert actor.max_lag < 0.25, f"an ask waited {actor.max_lag:.2f}s: a missed wake-up"
    assert set(results) == set(range(ASKS + SEQUENTIAL))
    for n, result in results.items():
        if n in late:
            assert result == "timeout", (n, result)
        else:
            assert result == ("answer", n), (n, result)
    assert not bridge._waiting, "a finished ask left its future behind"
    assert not loop_errors, loop_errors  # no "Future exception was never retrieved" etc.
    assert ("bridge.stopped", None) in actor.others + bridge.drain()
    bridge.stop()


def test_an_answer_after_the_loop_closed_is_dropped_quietly():
    bridge = AsyncBridge()

    async def main(b: AsyncBridge) -> None:
        return None

    bridge.start(main)
    bridge._thread.join(5)
    bridge.answer(1, "too late")  # the loop is closed: nobody waits any more
    bridge.stop()
