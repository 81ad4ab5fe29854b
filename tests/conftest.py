"""Fixtures that run real swarms: multiprocTCPBase on a free port, a temp data_dir, the real CLI."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from system import protocol
from system.admin import AdminClient
from system.config import load_config
from system.launcher import NotRunning, connect, shutdown, swarm_processes

ROOT = Path(__file__).resolve().parent.parent
FAST_HEALTH = {"poll_interval_s": 0.2, "timeout_s": 1.0, "sample_interval_s": 0.5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


class Swarm:
    """A swarm under test: its config file, CLI runner and admin helpers."""

    def __init__(self, tmp: Path, overrides: dict | None = None):
        self.port = free_port()
        self.dir = tmp
        base = {
            "system": {"admin_port": self.port, "data_dir": str(tmp / "data")},
            "health": FAST_HEALTH,
            "agents": {"workspace_root": str(tmp / "agents")},
            "services": {"queue": {"enabled": False}, "gas": {"enabled": False},
                         "probe": {"actor": "actors.probe:Probe"}},
        }
        self.base = base
        self.config_path = tmp / "swarm.yaml"
        self.rewrite(overrides)

    def rewrite(self, overrides: dict | None) -> None:
        """Write the config file: the test base plus ``overrides``."""
        self.config_path.write_text(yaml.safe_dump(deep_merge(self.base, overrides or {})))
        self.config = load_config(str(self.config_path)).data

    def cli(self, *args: str, check: bool = True, timeout: float = 60, env=None):
        proc = subprocess.run([sys.executable, "-m", "system.cli", *args, "-c",
                               str(self.config_path)], check=False, cwd=ROOT, capture_output=True,
                              text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"swarm {' '.join(args)} exited {proc.returncode}: "
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def start(self, *extra: str):
        return self.cli("start", "-d", "--wait", "20", *extra)

    def status(self) -> dict:
        return AdminClient(self.config).call(protocol.ADMIN_STATUS)

    def service(self, name: str) -> dict:
        return self.status()["services"][name]

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

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                last = self.status()
                if predicate(last):
                    return last
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last status: "
                             f"{json.dumps(last, default=str)[:2000]}")

    def processes(self) -> list:
        return swarm_processes(self.port)

    def cleanup(self) -> None:
        with contextlib.suppress(NotRunning):
            shutdown(self.config, timeout=2.0)
        assert not self.processes(), "swarm processes left behind"


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
