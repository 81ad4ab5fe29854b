"""Fixtures that run real swarms: multiprocTCPBase on a free port, a temp data_dir, the real CLI."""
from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from system import protocol
from system.admin import AdminClient
from system.harness.swarm import ROOT, TempSwarm, deep_merge  # noqa: F401 - tests import them
from system.launcher import connect

FAST_HEALTH = {"poll_interval_s": 0.2, "timeout_s": 1.0, "sample_interval_s": 0.5}


class Swarm(TempSwarm):
    """A swarm under test: the test base (fast health polls, queue and gas off, the probe
    service) plus the test's overrides; ``ask``/``tell`` reach a service directly."""

    def __init__(self, tmp: Path, overrides: dict | None = None):
        super().__init__(tmp, {"health": FAST_HEALTH, "services": {
            "queue": {"enabled": False}, "gas": {"enabled": False},
            "probe": {"actor": "actors.probe:Probe"}}}, overrides)

    def ask(self, name: str, mtype: protocol.MessageType, body: dict | None = None,
            timeout: float = 10.0) -> protocol.Envelope:
        """Ask a service directly (found through the admin's lookup) and return its reply."""
        found = AdminClient(self.config).call(protocol.ADMIN_LOOKUP, {"name": name})
        data = mtype.encode(body)
        with connect(self.config).private() as ctx:
            reply = ctx.ask(protocol.address_from_wire(found["addr"]), data, timeout)
        assert reply is not None, f"{name} did not answer {mtype.name}"
        assert isinstance(reply, bytes), f"{name} answered {mtype.name} with {reply!r}"
        return protocol.decode(reply)

    def tell(self, name: str, data: bytes) -> None:
        found = AdminClient(self.config).call(protocol.ADMIN_LOOKUP, {"name": name})
        with connect(self.config).private() as ctx:
            ctx.tell(protocol.address_from_wire(found["addr"]), data)

    def cleanup(self) -> None:
        assert not self.stop(), "swarm processes left behind"


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Until process ``pid`` has exited (a zombie counts: it runs no more)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} is still running")


def wait_inflight(swarm, platform: str, timeout: float = 10.0) -> None:
    """Until the chat service's journal holds a command being handled."""
    db = swarm.dir / "data" / platform / "inflight.db"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with contextlib.closing(sqlite3.connect(db)) as conn:
                if conn.execute("SELECT count(*) FROM inflight").fetchone()[0]:
                    return
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    raise AssertionError("no command in the journal")


@pytest.fixture
def make_swarm(tmp_path):
    """Factory for swarms that are always stopped (and checked for leftovers) after the test."""
    made: list[Swarm] = []

    def make(overrides: dict | None = None, sub: str = "s") -> Swarm:
        d = tmp_path / f"{sub}{len(made)}"
        d.mkdir()
        swarm = Swarm(d, overrides)
        made.append(swarm)
        return swarm

    yield make
    for swarm in made:
        swarm.cleanup()


@pytest.fixture(scope="module")
def shared_swarm(tmp_path_factory) -> Swarm:
    """One running swarm for a whole module of tests that do not break it."""
    s = Swarm(tmp_path_factory.mktemp("shared"))
    s.start()
    yield s
    s.cleanup()


@pytest.fixture
def swarm(make_swarm) -> Swarm:
    """A running default-shaped tree plus the probe service."""
    s = make_swarm()
    s.start()
    return s
