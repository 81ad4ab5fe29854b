"""The queue on a full disk: a real size-limited file system under the queue's database.

Two ways to get one, both a tmpfs of 32 MiB mounted at the queue's database directory and
filled up by the test with a file (``ENOSPC`` for everyone, SQLite's "database or disk is
full"), then freed by deleting that file:

* as root: ``mount -t tmpfs`` in the test's own mount namespace;
* without root: the swarm is started inside a new user + mount namespace
  (``unshare --user --map-root-user --mount``, unprivileged user namespaces), where it mounts
  the tmpfs before ``exec``-ing ``swarm start -d``; the test reaches that file system through
  ``/proc/QUEUE_PID/root``. Skipped where user namespaces are not allowed.

(``RLIMIT_FSIZE`` on the live queue process is used by tests/test_queue_service.py: it needs
no root and no namespace, but it gives ``EFBIG``, which SQLite reports as "disk I/O error",
never as a full disk; SQLite's ``max_page_count`` would fake a full database file, not a full
disk.)
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.queue import core
from actors.queue.service import QueueService
from actors.queue.store import QueueStore
from system import protocol
from system.errors import classify
from tests.conftest import ROOT, Swarm

DISK_SIZE = "32m"
PAYLOAD = 4096
BIG = 128 * 1024


class Disk:
    """A small file system: ``path`` where the queue sees it, ``view()`` where the test does."""

    def __init__(self, path: Path, view=None):
        self.path = path
        self.view = view or (lambda: path)

    def fill(self) -> int:
        """Write a file until the file system is full; returns its size."""
        filler = self.view() / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        size = 0
        try:
            for chunk in (1 << 16, 4096, 512):
                try:
                    while True:
                        size += os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)
        return size

    def free(self) -> None:
        (self.view() / "filler").unlink()


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def tmpfs_disk(tmp_path):
    """A tmpfs mounted here (root only); unmounted after the test, even on failure. Request it
    before ``make_swarm``: fixtures are torn down in reverse, so the swarm stops first."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (test_queue_on_a_full_disk_without_root "
                    "covers the same without)")
    path = tmp_path / "disk"
    path.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs",
                   str(path))
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield Disk(path)
    if _run("umount", str(path)).returncode:
        assert not _run("umount", "--lazy", str(path)).returncode, "tmpfs left mounted"


@pytest.fixture
def userns_disk(tmp_path):
    """The command prefix that runs a command in a new user + mount namespace with a tmpfs
    mounted at ``disk`` (no root needed); skipped where that is not allowed. The namespace
    and its tmpfs go away with the last process in it (the swarm, stopped by make_swarm)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) here")
    path = tmp_path / "disk"
    path.mkdir()
    prefix = [unshare, "--user", "--map-root-user", "--mount", "sh", "-c",
              f'mount -t tmpfs -o size={DISK_SIZE} tmpfs "$0" && exec "$@"', str(path)]
    tried = _run(*prefix, "true")
    if tried.returncode:
        pytest.skip(f"no unprivileged user namespace with a tmpfs mount here: "
                    f"{tried.stderr.strip()}")
    return path, prefix


def _config(disk: Path) -> dict:
    return {"services": {"queue": {"enabled": True, "db_path": str(disk / "queue.db"),
                                   "write_probe_s": 0.5, "storage_errors_failing": 3}}}


def _item(mid: str, size: int = PAYLOAD) -> dict:
    return {"recipient": "keep", "payload": os.urandom(size), "id": mid}


def _log(swarm: Swarm) -> list[dict]:
    path = swarm.data / "logs" / "swarm.log"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _lease_all(swarm: Swarm, recipient: str, owner: str) -> list[dict]:
    out = []
    while True:
        reply = swarm.ask("queue", protocol.QUEUE_LEASE, {
            "recipient": recipient, "limit": 1000, "owner": owner})
        assert reply.t == "ok", reply.b
        if not reply.b["messages"]:
            return out
        out += reply.b["messages"]


def _ack(swarm: Swarm, ids: list[str], owner: str) -> None:
    done = swarm.ask("queue", protocol.QUEUE_ACK, {"ids": ids, "owner": owner})
    assert done.t == "ok" and done.b["acked"] == len(ids), done.b


def _full_disk(swarm: Swarm, disk: Disk) -> None:
    """The scenario, on a running swarm whose queue database lives on ``disk``."""
    queue = swarm.service("queue")
    pid = queue["pid"]
    assert queue["health"] == "ok" and queue["restarts"] == 0
    # 5 MiB through the queue first: the WAL passed SQLite's checkpoint size (1000 pages) and
    # is reused from its start, and the database has free pages. Both hold space a commit
    # can use on a full disk, the hard case: some commits and the empty write probe still
    # succeed after others failed.
    for batch in range(10):
        reply = swarm.ask("queue", protocol.QUEUE_ENQUEUE, {"items": [
            dict(_item(f"p-{batch}-{i}", 50_000), recipient="bulk") for i in range(10)]})
        assert reply.t == "ok" and len(reply.b["accepted"]) == 10
    bulk = _lease_all(swarm, "bulk", "p")
    _ack(swarm, [m["id"] for m in bulk], "p")
    before = [f"b-{i:02d}" for i in range(20)]
    reply = swarm.ask("queue", protocol.QUEUE_ENQUEUE, {"items": [_item(i) for i in before]})
    assert reply.t == "ok" and reply.b["accepted"] == before
    swarm.ask("queue", protocol.QUEUE_ENQUEUE, {"items": [
        {"recipient": "held", "text": "acked during the outage", "id": "h-1"}]})
    held = swarm.ask("queue", protocol.QUEUE_LEASE, {"recipient": "held", "visibility_s": 2.0,
                                                     "owner": "h"})
    assert [m["id"] for m in held.b["messages"]] == ["h-1"]

    assert disk.fill() > 0
    # Producers keep sending: SQLite may still fit a commit or two into space its files hold
    # already; then every commit fails and is refused, so the producer keeps its messages.
    accepted, refused = [], {}
    for i in range(150):
        item = _item(f"x-{i:03d}", BIG)
        reply = swarm.ask("queue", protocol.QUEUE_ENQUEUE, {"items": [item]})
        if reply.t == "ok":
            assert reply.b["accepted"] == [item["id"]]
            accepted.append(item["id"])
        else:
            assert reply.t == "error" and reply.b["code"] == "storage", reply.b
            assert reply.b["detail"].startswith(
                "not committed, retry with the same ids: disk full: "), reply.b["detail"]
            refused[item["id"]] = item
            if len(refused) == 3:
                break
    assert len(refused) == 3, f"the disk never refused a commit ({len(accepted)} accepted)"
    ack = swarm.ask("queue", protocol.QUEUE_ACK, {"ids": ["h-1"], "owner": "h"})
    assert ack.t == "ok" or (ack.t == "error" and ack.b["code"] == "storage"), ack
    ack_committed = ack.t == "ok"

    failing = swarm.wait_for(lambda s: s["services"]["queue"]["health"] == "failing",
                             what="queue failing")["services"]["queue"]
    assert failing["detail"].startswith("disk full: "), failing["detail"]
    assert "storage errors in a row" in failing["detail"]
    assert failing["state"] == "running" and failing["restarts"] == 0 and failing["pid"] == pid
    assert failing["errors"]["by_class"].get("storage", 0) >= len(refused)
    assert failing["errors"]["last"].startswith("storage: ")
    time.sleep(2.5)  # h-1's lease ends during the outage: its expiry waits for the disk
    assert swarm.service("queue")["health"] == "failing"  # no flapping on a full disk

    disk.free()
    healed = swarm.wait_for(lambda s: s["services"]["queue"]["health"] == "ok", timeout=10,
                            what="queue healthy again")["services"]["queue"]
    assert healed["pid"] == pid and healed["restarts"] == 0
    # the refused messages were not stored: sent again, they are new, not duplicates
    again = swarm.ask("queue", protocol.QUEUE_ENQUEUE, {"items": list(refused.values())})
    assert again.t == "ok" and again.b["accepted"] == list(refused), again.b
    got = _lease_all(swarm, "keep", "t")
    assert [m["id"] for m in got] == before + accepted + list(refused)
    assert all(len(m["payload"]) == PAYLOAD for m in got[:len(before)])
    _ack(swarm, [m["id"] for m in got], "t")
    # an ack that could not be committed changed nothing: the lease ran out, it comes back
    back = _wait(lambda: swarm.ask("queue", protocol.QUEUE_LEASE, {"recipient": "held"}
                                   ).b["messages"] or ack_committed, 10, "h-1 back")
    assert back is True if ack_committed else [m["id"] for m in back] == ["h-1"]
    assert swarm.service("queue")["restarts"] == 0

    def alerts() -> tuple[list[dict], list[dict]]:
        log = [e for e in _log(swarm) if e.get("event") == "alert"]
        return ([e for e in log if e.get("service") == "queue"],
                [e for e in log if e.get("alert_service") == "queue"])
    _wait(lambda: all(alerts()), 5, "the alert in the log")
    raised, routed = alerts()
    assert len(raised) == 1 and len(routed) == 1, (raised, routed)
    assert "disk full" in raised[0]["msg"] and "disk is full" in raised[0]["details"]
    assert routed[0]["service"] == "registry" and routed[0]["severity"] == "error"
    events = [e.get("event") for e in _log(swarm) if e.get("service") == "queue"]
    assert events.count("not_writable") == 1 and events.count("writable") == 1


def test_queue_on_a_full_tmpfs(tmpfs_disk, make_swarm):
    swarm = make_swarm(_config(tmpfs_disk.path))
    swarm.start()
    _full_disk(swarm, tmpfs_disk)


def test_queue_on_a_full_disk_without_root(userns_disk, make_swarm):
    path, prefix = userns_disk
    swarm = make_swarm(_config(path))
    started = subprocess.run(
        [*prefix, sys.executable, "-m", "system.cli", "start", "-d", "--wait", "20", "-c",
         str(swarm.config_path)], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, **swarm.env}, check=False)
    assert started.returncode == 0, started.stdout + started.stderr
    pid = swarm.service("queue")["pid"]
    inside = Path(f"/proc/{pid}/root") / path.relative_to(path.anchor)
    assert (inside / "queue.db").exists() and not (path / "queue.db").exists()  # the tmpfs
    _full_disk(swarm, Disk(path, lambda: inside))


# -- the parts, without a swarm ---------------------------------------------------------------
def test_disk_full_errors_are_storage_errors_named_disk_full():
    for exc in (sqlite3.OperationalError("database or disk is full"),
                OSError(errno.ENOSPC, "No space left on device"),
                OSError(errno.EDQUOT, "Disk quota exceeded")):
        assert classify(exc) == "storage" and core.is_disk_full(exc), exc
    for exc in (sqlite3.OperationalError("disk I/O error"), OSError(errno.EROFS, "read-only")):
        assert classify(exc) == "storage" and not core.is_disk_full(exc), exc
    state = core.StorageState()
    state.failed(OSError(errno.ENOSPC, "No space left on device"), now=0.0)
    state.failed(sqlite3.OperationalError("disk I/O error"), now=1.0)
    assert state.problem == "disk full" and "No space left" in state.last_error  # the cause


def test_the_write_probe_wants_free_space_beside_the_database(tmp_path):
    """SQLite alone can still commit a small write on a full disk (into space its WAL holds
    already), so the probe also checks the file system's free space."""
    with QueueStore(tmp_path / "q.db") as store:
        store.probe_write(1)
        with pytest.raises(OSError) as caught:
            store.probe_write(1 << 62)
        assert caught.value.errno == errno.ENOSPC and "MiB free" in str(caught.value)
        assert core.is_disk_full(caught.value) and classify(caught.value) == "storage"


def test_an_outage_raises_one_alert_is_counted_once_and_ends_only_with_a_good_probe():
    svc = QueueService()
    svc.name, svc.db_path = "queue", Path("/q/queue.db")
    svc.max_depth, svc.max_age_s, svc.fail_after = 100, 600.0, 3
    alerts, logged = [], []
    svc.alert = lambda severity, summary, details="", key=None: alerts.append((summary, key))
    svc.log = lambda level, event, text, **kw: logged.append(event)
    full, asked = {"on": True}, []
    stats = {"depth": {"ready": 2, "leased": 0, "dead": 0, "total": 2},
             "oldest_ready_age_s": 0.5}

    class Store:
        def probe_write(self, min_free_bytes=0):
            asked.append(min_free_bytes)
            if full["on"]:
                raise sqlite3.OperationalError("database or disk is full")

        def stats(self):
            return stats

    svc.store = Store()
    assert svc.health()[0] == "ok"
    for _ in range(5):
        svc._probe_write()
    assert alerts == [("queue database disk full: /q/queue.db", "queue:storage")]
    assert svc.error_stats.by_class == {"storage": 1}  # the outage, not every probe
    status, detail = svc.health()
    assert status == "failing" and detail.startswith(
        "disk full: OperationalError: database or disk is full (5 storage errors in a row")
    full["on"] = False
    svc._probe_write()
    assert svc.health()[0] == "ok" and svc.disk.writable
    assert logged == ["not_writable", "writable"] and len(alerts) == 1
    assert asked == [0] + [core.MIN_FREE_BYTES] * 5  # free space ends a disk-full outage
