"""Shared by the benches: a throw-away swarm (free port, temp dir, real CLI), a raw Thespian system
to compare against, the plain Thespian actors used as the baseline, statistics and output.

Run every bench from the repository root as a module (``python -m bench.restart``): actor
processes import ``bench.common`` by name, so the repository root must be on ``sys.path``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self
from unittest import mock

import psutil
import yaml
from thespian.actors import Actor, ActorSystem, ChildActorExited

from system.config import load_config
from system.launcher import BASE, INSTANCE_ENV, NotRunning, secure_bind, shutdown, swarm_processes

ROOT = Path(__file__).resolve().parent.parent
FAST_HEALTH = {"poll_interval_s": 0.2, "timeout_s": 1.0, "sample_interval_s": 0.5}
PROBE_SERVICES = {"queue": {"enabled": False}, "probe": {"actor": "actors.probe:Probe"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 3)


def p95_ms(xs: list[float]) -> float:
    return round(statistics.quantiles(xs, n=20, method="inclusive")[18] * 1000, 3)


class BenchSwarm:
    """A swarm on a free port with its data under a temp dir; always stopped and checked."""

    def __init__(self, overrides: dict):
        self._tmp = tempfile.TemporaryDirectory(prefix="swarm-bench-")
        tmp = Path(self._tmp.name)
        self.port = free_port()
        base = {"system": {"admin_port": self.port, "data_dir": str(tmp / "data")},
                "agents": {"workspace_root": str(tmp / "agents")}}
        for key, value in overrides.items():
            base[key] = {**base.get(key, {}), **value}
        self.config_path = tmp / "swarm.yaml"
        self.config_path.write_text(yaml.safe_dump(base))
        self.config = load_config(str(self.config_path)).data

    def cli(self, *args: str, timeout: float = 120) -> float:
        """Run ``swarm ARGS -c CONFIG`` as a user would; return its wall time in seconds."""
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "system.cli", *args, "-c",
                               str(self.config_path)], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, check=False)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"swarm {' '.join(args)} exited {proc.returncode}: "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return elapsed

    def start(self) -> float:
        return self.cli("start", "-d", "--wait", "30")

    def close(self) -> None:
        """Stop whatever runs (launcher.shutdown) and fail loudly if a process is left."""
        with contextlib.suppress(NotRunning):
            shutdown(self.config, timeout=2.0)
        left = swarm_processes(self.port)
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        self._tmp.cleanup()
        if left:
            raise RuntimeError(f"swarm processes left behind: {[p.pid for p in left]}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def raw_system():
    """A separate plain Thespian system (multiprocTCPBase, loopback, free admin port; Thespian's
    own transport loop), tagged like a swarm so ``swarm_processes`` can prove it is gone
    afterwards."""
    from thespian.system.transport import TCPTransport

    if TCPTransport.selectors is not selectors:
        raise RuntimeError("system.transport is installed here: a system forked from this "
                           "process would not be stock Thespian")
    port = free_port()
    secure_bind("127.0.0.1")
    with tempfile.TemporaryDirectory(prefix="raw-thespian-") as tmp:
        env = {INSTANCE_ENV: str(port), "THESPLOG_FILE": str(Path(tmp) / "thespian.log")}
        with mock.patch.dict(os.environ, env):
            asys = ActorSystem(BASE, {"Admin Port": port}, transientUnique=True)
        try:
            yield asys
        finally:
            asys.shutdown()
            left = swarm_processes(port)
            for proc in left:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGKILL)
            if left:
                raise RuntimeError(f"raw Thespian processes left behind: {[p.pid for p in left]}")


# -- the plain Thespian baseline actors (no envelope, no supervision library) --------------
class RawEcho(Actor):
    """Replies with whatever it receives; ``"pid"`` is answered with its pid."""

    def receiveMessage(self, message, sender):
        if message == "pid":
            self.send(sender, os.getpid())
        elif not isinstance(message, ChildActorExited):
            self.send(sender, message)


class RawParent(Actor):
    """Recreates its RawEcho child the moment it exits; ``"child"`` asks for its address."""

    child = None

    def receiveMessage(self, message, sender):
        if isinstance(message, ChildActorExited):
            self.child = self.createActor(RawEcho)
        elif message == "child":
            if self.child is None:
                self.child = self.createActor(RawEcho)
            self.send(sender, self.child)


# -- command line and output --------------------------------------------------------------
def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="fewer samples (under a minute)")
    return p


def emit(args, result: dict, rows: list[tuple[str, object]]) -> None:
    """One JSON object with --json, else a two-column table of the given rows."""
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
