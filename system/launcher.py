"""Start and stop the actor system: loopback binding, actor loops on fresh threads waiting in
one poll (``system.transport``), pid file, process sweep.

Thespian binds every socket to 0.0.0.0 and accepts unauthenticated pickle; :func:`secure_bind`
restricts binding to ``system.bind`` (127.0.0.1 by default) in this process and, by fork, in
every actor. :func:`connect` never starts a system by accident: it probes the admin port first.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from system import protocol, transport
from system.logs import log_defs, prepare_log_dir

BASE = "multiprocTCPBase"
ROOT_NAME = "swarm"
ROOT_CLASS = "actors.supervisor.Supervisor"
INSTANCE_ENV = "SWARM_INSTANCE"
PID_FILE = "swarm.pid"
BOOT_TIMEOUT_S = 60.0


class NotRunning(Exception):
    """No swarm answers on the configured admin port."""


class AlreadyRunning(Exception):
    """A swarm (or something else) already listens on the configured admin port."""


def secure_bind(bind: str) -> None:
    """Make every Thespian socket created from now on (here and in forked actors) bind ``bind``."""
    from thespian.system.transport import IPBase

    if bind in ("0.0.0.0", "::", ""):  # explicit opt-in to listen on every interface
        return
    os.environ["THESPIAN_BASE_IPADDR"] = bind
    IPBase.IPActorAddress.bindArgs = property(lambda s: ((bind, s.bindname[1]),))


_wakeup: list[socket.socket] = []  # this process' signal wake-up pair (closed in its forks)


def fresh_stack_actors() -> None:
    """Run every actor's message loop (in forks of this process) on a new thread.

    Thespian forks a child inside its parent's message handler, so the child's loop would run
    on top of the parent's deep Python stack. CPython 3.11 keeps frames in 16 KiB chunks and
    frees a chunk as soon as it empties, so a handler that crosses a chunk boundary maps and
    unmaps memory on every message (measured: up to a third of an actor's message rate). A
    new thread starts with an empty frame stack.

    Python runs signal handlers (Thespian's SIGCHLD and SIGTERM ones) only in the main thread,
    so the main thread stays awake for them: it waits on a wake-up fd that the interpreter
    writes whichever thread the signal hits. No signal is blocked anywhere, so processes the
    actors start inherit a normal signal mask.
    """
    import threading

    from thespian.system.multiprocCommon import MultiProcManager

    run = MultiProcManager.run
    if getattr(run, "fresh_stack", False):
        return

    def run_on_fresh_stack(self) -> None:
        for sock in _wakeup:  # the parent's pair, inherited by fork
            sock.close()
        _wakeup[:] = wake_r, wake_w = socket.socketpair()
        for sock in _wakeup:
            sock.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        # Thespian catches every signal. A write past RLIMIT_FSIZE must fail with EFBIG, as
        # Python arranges by default: Thespian's SIGXFSZ handler writes to its log file, which
        # raises SIGXFSZ again, forever.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        outcome: list[BaseException | None] = []  # filled when the loop has ended

        def loop() -> None:
            try:
                run(self)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                outcome.append(exc)
            with contextlib.suppress(OSError):
                wake_w.send(b"\0")

        worker = threading.Thread(target=loop, name="actor", daemon=True)
        worker.start()
        while not outcome:
            select.select([wake_r], [], [])  # signal handlers run here; then drain and recheck
            with contextlib.suppress(OSError):
                while wake_r.recv(4096):
                    pass
        worker.join()
        if outcome[0] is not None:
            raise outcome[0]

    run_on_fresh_stack.fresh_stack = True
    MultiProcManager.run = run_on_fresh_stack


def admin_endpoint(config: dict) -> tuple[str, int]:
    system = config["system"]
    host = system.get("bind", "127.0.0.1")
    return ("127.0.0.1" if host in ("0.0.0.0", "") else host), int(system["admin_port"])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def capabilities(config: dict) -> dict:
    caps = {"Admin Port": int(config["system"]["admin_port"])}
    leader = config["system"].get("convention_leader")
    if leader:
        host, _, port = str(leader).rpartition(":")
        caps["Convention Address.IPv4"] = (host, int(port))
    return caps


_handles: dict[int, object] = {}


def connect(config: dict):
    """An ActorSystem handle on the running swarm (one per port and process); NotRunning if none
    answers. Never starts a system: the port is probed first."""
    from thespian.actors import ActorSystem

    host, port = admin_endpoint(config)
    if not port_open(host, port):
        _handles.pop(port, None)
        raise NotRunning(f"no swarm running on {host}:{port}")
    if port not in _handles:
        secure_bind(config["system"].get("bind", "127.0.0.1"))
        with _env_restored("TZ"):
            _handles[port] = ActorSystem(BASE, capabilities(config), transientUnique=True)
    return _handles[port]


@contextlib.contextmanager
def _env_restored(*names: str):
    """Put these environment variables back as they were (Thespian sets TZ in the caller;
    boot points THESPLOG_FILE at data_dir only for the system it creates)."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def data_dir(config: dict) -> Path:
    return Path(config["system"]["data_dir"])


def boot(config: dict) -> dict:
    """Start a new actor system with the whole tree; returns the pid file contents.

    Raises AlreadyRunning if the admin port is taken, RuntimeError if the tree does not start.
    """
    from thespian.actors import ActorSystem

    host, port = admin_endpoint(config)
    if port_open(host, port):
        raise AlreadyRunning(f"a swarm is already running on {host}:{port}")
    system = config["system"]
    root_dir = data_dir(config)
    root_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):  # clients wait for the new one (see AdminClient)
        (root_dir / PID_FILE).unlink()
    secure_bind(system.get("bind", "127.0.0.1"))
    fresh_stack_actors()
    transport.install()
    logs = log_defs(root_dir, system.get("log_level", "info"), system.get("log_max_bytes",
                    10 * 1024 * 1024), system.get("log_backups", 5),
                    sorted(config.get("_secret_values", [])))
    with _env_restored("TZ", "THESPLOG_FILE"):
        prepare_log_dir(root_dir)
        asys = ActorSystem(BASE, capabilities(config), logDefs=logs)
    root = asys.createActor(ROOT_CLASS, globalName=ROOT_NAME)
    reply = asys.ask(root, protocol.SVC_INIT.encode(
        {"name": ROOT_NAME, "config": config, "registry": None,
         "config_file": config.get("_file")}), BOOT_TIMEOUT_S)
    env = protocol.decode(reply) if reply is not None else None
    if not isinstance(env, protocol.Envelope) or env.t != protocol.SVC_STARTED.name:
        reason = env.b.get("reason") if isinstance(env, protocol.Envelope) else "no answer"
        shutdown(config, timeout=5.0)
        raise RuntimeError(f"the supervision tree did not start: {reason}")
    info = {"admin_pid": env.b.get("ppid"), "root_pid": env.b["pid"], "admin_port": port,
            "bind": system.get("bind"), "started_at": time.time()}
    (root_dir / PID_FILE).write_text(json.dumps(info))
    return info


def spawn_boot(config_file: Path | None, config: dict) -> subprocess.Popen:
    """Run :func:`boot` in a new session (Ctrl-C in the caller's terminal does not reach the
    actors) with stdio on ``logs/console.log``. Every actor process inherits INSTANCE_ENV from
    this exec, which is how :func:`swarm_processes` finds them, orphans included."""
    logs = data_dir(config) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "system.cli", "_boot"]
    if config_file:
        cmd += ["-c", str(config_file)]
    env = {**os.environ, INSTANCE_ENV: str(admin_endpoint(config)[1])}
    with open(logs / "console.log", "ab") as console:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                                start_new_session=True, close_fds=True, env=env)


def swarm_processes(port: int) -> list[psutil.Process]:
    """Every live process of the swarm on ``port`` (tagged by environment at boot), except us."""
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid in me:
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(INSTANCE_ENV) == str(port) and proc.status() != "zombie":
                found.append(proc)
    return found


def kill_swarm_process(pid: int) -> bool:
    """SIGKILL ``pid`` only if it is a process of this swarm (the INSTANCE_ENV tag of the
    caller's own swarm): a pid that arrived in a message, stale or forged, could name any
    process of the user. True if it was killed. Without a tag (a swarm booted in-process
    instead of by ``swarm start``) there is nothing to check against."""
    tag = os.environ.get(INSTANCE_ENV)
    try:
        proc = psutil.Process(pid)
        if tag is not None and proc.environ().get(INSTANCE_ENV) != tag:
            return False
        proc.kill()  # psutil refuses a pid reused since Process() was made
        return True
    except psutil.Error:
        return False


def shutdown(config: dict, timeout: float = 10.0) -> dict:
    """Stop the tree in reverse order, then the actor system; SIGKILL whatever is left.

    Returns ``{"stopped": bool, "killed": [names or pids]}``. NotRunning if nothing answers.
    """
    host, port = admin_endpoint(config)
    leftovers = swarm_processes(port)
    if not port_open(host, port) and not leftovers:
        raise NotRunning(f"no swarm running on {host}:{port}")
    killed: list = []
    if port_open(host, port):
        asys = connect(config)
        root = asys.createActor(ROOT_CLASS, globalName=ROOT_NAME)
        reply = asys.ask(root, protocol.TREE_STOP.encode({"timeout_s": timeout}), timeout + 5)
        env = protocol.decode(reply) if reply is not None else None
        if isinstance(env, protocol.Envelope) and env.t == protocol.TREE_STOPPED.name:
            killed.extend(env.b.get("killed", []))
        with contextlib.suppress(Exception):
            _shutdown_system(asys)
        _handles.pop(port, None)
    deadline = time.monotonic() + 3.0
    while (left := swarm_processes(port)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
            killed.append(proc.pid)
    psutil.wait_procs(left, timeout=3.0)
    with contextlib.suppress(FileNotFoundError):
        (data_dir(config) / PID_FILE).unlink()
    return {"stopped": True, "killed": killed}


def _shutdown_system(asys) -> None:
    """Thespian's shutdown can block ~10 s on a hung actor; bound it, the sweep finishes the job."""
    import threading

    worker = threading.Thread(target=asys.shutdown, daemon=True)
    worker.start()
    worker.join(5.0)


def read_pid_file(config: dict) -> dict | None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return json.loads((data_dir(config) / PID_FILE).read_text())
    return None
