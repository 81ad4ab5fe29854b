"""Whole-swarm SIGKILL during the gas relay: every process of the swarm (Thespian's admin and
logger, every actor) killed after a status write, at a random moment or the moment a threshold
is recorded as pending in gas.db; the swarm started again on the same data_dir: each threshold
of each task reaches the next agent's inbox exactly once.

CI runs a bounded version; ``SWARM_SLOW=1`` runs the long one (``-m slow``).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import time

import psutil
import pytest

from tests.test_gas_service import NAMES, inbox, wait_inbox, write_status


def kill_the_whole_swarm(swarm) -> int:
    """SIGKILL every process of this swarm (tagged with its port at boot) and wait until they
    are gone; returns how many there were."""
    procs = swarm.processes()
    assert procs, "no swarm processes to kill"
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # it exited by itself meanwhile
            proc.kill()  # SIGKILL, by pid; psutil refuses a pid reused since it was listed
    deadline = time.monotonic() + 10
    while swarm.processes():
        assert time.monotonic() < deadline, "swarm processes survived SIGKILL"
        time.sleep(0.02)
    return len(procs)


def wait_pending(swarm, timeout: float = 3.0) -> None:
    """Until the gas ledger holds a threshold recorded but not yet confirmed by the queue."""
    db = swarm.dir / "data" / "gas.db"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.Error), contextlib.closing(
                sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            if conn.execute("SELECT 1 FROM gas WHERE state = 'pending'").fetchone():
                return
        time.sleep(0.001)


def _relay_through_kills(make_swarm, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    swarm = make_swarm({"services": {"queue": {"enabled": True},
                                     "gas": {"enabled": True, "poll_interval_s": 0.2}},
                        "agents": {"names": NAMES}})
    swarm.start()
    tasks = [f"T{i}" for i in range(rounds)]
    for n, task in enumerate(tasks):
        # mid-flow: at a random moment (before the file is read, while gas is delivered, or
        # after), or the moment gas is recorded as pending (before or after its enqueue)
        progress = rng.choice((76, 92, 100))
        write_status(swarm, "Agent-1", json.dumps({"current_task": task, "progress": progress}))
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0.0, 0.6))
        else:
            wait_pending(swarm)
        assert kill_the_whole_swarm(swarm) >= 6
        swarm.start()
        if progress < 100:
            write_status(swarm, "Agent-1", json.dumps({"current_task": task, "progress": 100}))
        wait_inbox(swarm, "Agent-2", 3 * (n + 1), timeout=20)
    time.sleep(1.0)  # anything sent twice would have arrived by now
    files = inbox(swarm, "Agent-2")
    assert len(files) == 3 * rounds, f"{len(files)} inbox files for {rounds} tasks"
    for task in tasks:
        for kind in ("prepare", "ready", "go"):
            assert sum(f"Gas: {kind}\n" in f and f"Task: {task}\n" in f for f in files) == 1, \
                (task, kind)
    assert not list((swarm.dir / "agents" / "Agent-2" / "inbox").glob(".*")), "temp files left"
    history = json.loads(swarm.cli("gas", "history", "Agent-1", "--json").stdout)["gas"]
    assert len(history) == 3 * rounds and all(g["state"] == "sent" for g in history)


def test_sigkill_of_the_whole_swarm_mid_relay_neither_skips_nor_repeats_a_threshold(
        make_swarm):
    _relay_through_kills(make_swarm, rounds=3, seed=13)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SWARM_SLOW") != "1", reason="long chaos run: SWARM_SLOW=1")
def test_sigkill_of_the_whole_swarm_mid_relay_long(make_swarm):
    _relay_through_kills(make_swarm, rounds=15, seed=1313)
