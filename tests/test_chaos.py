"""Chaos: random SIGKILLs across the tree while the queue delivers to agent inboxes.

CI runs a bounded version; ``SWARM_SLOW=1`` runs the long one (``-m slow``).
Whatever dies — a service, a core actor, a supervisor — the tree comes back healthy and every
message ends up in exactly one inbox file.
"""
from __future__ import annotations

import os
import random
import signal
import time

import pytest

from system import protocol
from system.admin import AdminClient

AGENTS = ["Agent-1", "Agent-2", "Agent-3"]
VICTIMS = ["queue", "probe", "health", "admin", "registry", "services", "core"]


def _chaos(make_swarm, kills: int, messages: int, seed: int) -> None:
    rng = random.Random(seed)
    swarm = make_swarm({
        "agents": {"names": AGENTS},
        "services": {"queue": {"enabled": True}},
        "supervision": {**{name: {"max_restarts": 1000, "within_s": 1}
                           for name in ("root", "core", "services")},
                        # kills come every second or two: cap the backoff that would build up
                        "backoff": {"max_s": 0.5}},
    })
    swarm.start()
    ids = [f"chaos-{i}" for i in range(messages)]
    batches = [ids[i:i + 250] for i in range(0, messages, 250)]
    for n in range(kills):
        if batches:
            items = [{"recipient": AGENTS[int(i.rsplit("-", 1)[1]) % 3], "text": i, "id": i}
                     for i in batches.pop(0)]
            swarm.wait_for(lambda s: s["services"]["queue"]["state"] == "running",
                           what="queue up before enqueue")
            _send(swarm, items)
        victim = rng.choice(VICTIMS)
        pid = swarm.status()["services"][victim]["pid"]
        if pid:
            os.kill(pid, signal.SIGKILL)
        swarm.wait_for(lambda s, v=victim, p=pid: s["healthy"]
                       and s["services"][v]["pid"] not in (None, p), timeout=20,
                       what=f"recovery #{n} from killing {victim}")
    for batch in batches:
        _send(swarm, [{"recipient": AGENTS[int(i.rsplit("-", 1)[1]) % 3], "text": i, "id": i} for i in batch])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        files = [p.stem for a in AGENTS for p in (swarm.dir / "agents" / a / "inbox").glob("*.md")]
        if len(files) >= messages:
            break
        time.sleep(0.2)
    assert sorted(files) == sorted(ids), "lost or duplicated inbox files"
    leftovers = [p for a in AGENTS for p in (swarm.dir / "agents" / a / "inbox").glob(".*")]
    assert not leftovers


def _send(swarm, items: list[dict]) -> None:
    """Enqueue, retrying through restarts: the ids make a retry a duplicate, never a copy."""
    deadline = time.monotonic() + 30
    while True:
        try:
            AdminClient(swarm.config).call(protocol.ADMIN_SEND, {"items": items})
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_random_kills_leave_a_healthy_tree_and_exactly_one_file_per_message(make_swarm):
    _chaos(make_swarm, kills=6, messages=1500, seed=7)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SWARM_SLOW") != "1", reason="long chaos run: SWARM_SLOW=1")
def test_long_chaos_run(make_swarm):
    _chaos(make_swarm, kills=60, messages=15000, seed=int(time.time()))
