"""A swarm of its own for a rehearsal or a test: a temp data_dir and workspace, a free port, the
operator's config (or the packaged default) with an overlay, started and stopped by the real
``swarm`` CLI, asked through the admin like any client."""
from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from system import protocol
from system.admin import AdminClient
from system.config import find_config_file, load_config
from system.errors import ConfigError
from system.launcher import NotRunning, shutdown, swarm_processes

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A free port for a swarm's admin, below the kernel's ephemeral range: a port from
    ``bind(0)`` is free now, but every Thespian actor binds one the same way, so another
    swarm's actor can take it before this swarm starts (seen with parallel test workers)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = _PICK.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the whole band in use: the kernel's choice then
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PICK = random.SystemRandom()  # not the seedable global: test workers must not pick alike


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def operator_config(path: str | None) -> dict:
    """The operator's config file as written (secret references unresolved), or {} for the
    packaged default; ``path`` None finds it as ``swarm`` does."""
    found = find_config_file(path, os.environ, cwd=Path.cwd())
    if found is None:
        return {}
    data = yaml.safe_load(found.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{found}: the config file must be a mapping")
    return data


class TempSwarm:
    """A swarm in ``directory`` on a free port: ``base`` (a config mapping) + ``overlay``, with
    the system/agents paths moved under ``directory``. ``env``: variables the swarm's
    processes get (the simulated platforms' secrets)."""

    def __init__(self, directory: Path, base: dict | None = None, overlay: dict | None = None,
                 env: dict[str, str] | None = None):
        self.dir = Path(directory)
        self.port = free_port()
        self.env = dict(env or {})
        self.base = deep_merge(base or {}, {
            "system": {"admin_port": self.port, "data_dir": str(self.dir / "data")},
            "agents": {"workspace_root": str(self.dir / "agents")}})
        self.config_path = self.dir / "swarm.yaml"
        self.rewrite(overlay)

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def workspace(self) -> Path:
        return self.dir / "agents"

    def rewrite(self, overlay: dict | None) -> None:
        """Write the config file: the base plus ``overlay`` (validated as ``swarm`` would)."""
        self.config_path.write_text(yaml.safe_dump(deep_merge(self.base, overlay or {})))
        self.config = load_config(str(self.config_path), {**os.environ, **self.env}).data

    def cli(self, *args: str, check: bool = True, timeout: float = 60,
            env: dict[str, str] | None = None):
        proc = subprocess.run([sys.executable, "-m", "system.cli", *args, "-c",
                               str(self.config_path)], check=False, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout,
                              env={**os.environ, **self.env, **(env or {})})
        if check and proc.returncode != 0:
            raise RuntimeError(f"swarm {' '.join(args)} exited {proc.returncode}: "
                               f"{proc.stdout}\n{proc.stderr}".strip())
        return proc

    def start(self, *extra: str):
        return self.cli("start", "-d", "--wait", "20", *extra)

    def admin(self, timeout: float = 10.0) -> AdminClient:
        return AdminClient(self.config, timeout=timeout)

    def status(self) -> dict:
        return self.admin().call(protocol.ADMIN_STATUS)

    def service(self, name: str) -> dict:
        return self.status()["services"][name]

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                last = self.status()
                if predicate(last):
                    return last
            time.sleep(0.05)
        raise TimeoutError(f"timed out waiting for {what}; last status: "
                           f"{json.dumps(last, default=str)[:2000]}")

    def processes(self) -> list:
        return swarm_processes(self.port)

    def stop(self) -> list:
        """Stop the swarm; returns the processes still alive afterwards (none, normally)."""
        with contextlib.suppress(NotRunning):
            shutdown(self.config, timeout=2.0)
        return self.processes()
