"""The queue on a full disk: a real size-limited file system under the queue's database.

Two ways to get one, both a tmpfs of 32 MiB mounted at the queue's database directory and
filled up by the test with a file (``ENOSPC`` for everyone, SQLite's "database or disk is
full"), then freed by deleting that file:

* as root: ``mount -t tmpfs`` in the test's own mount namespace;
* without root: the swarm is started inside a new user + mount namespace
  (``unshare --user --map-root-user --mount``, unprivileged user namespaces), where it mounts
  the tmpfs before ``exec``-ing ``swarm start -d``; the test reaches that file system through
  ``/proc/QUEUE_PID/root``. Skipped where user namespaces are not allowed.

The mounting, filling and freeing are system/harness/disk.py (the harness' ``disk_full``
fault uses the same). A third test puts the whole ``data_dir`` on the tmpfs: the log file
(system/logs.py SwarmFileHandler) is on the full disk too, and must not take anything down.

(``RLIMIT_FSIZE`` on the live queue process is used by tests/test_queue_service.py: it needs
no root and no namespace, but it gives ``EFBIG``, which SQLite reports as "disk I/O error",
never as a full disk; SQLite's ``max_page_count`` would fake a full database file, not a full
disk.)
"""
from __future__ import annotations

import errno
import io
import json
import logging
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
from system.harness.disk import SIZE as DISK_SIZE
from system.harness.disk import Disk, mount_tmpfs, unmount
from system.logs import JsonFormatter, SwarmFileHandler
from tests.conftest import ROOT, Swarm

PAYLOAD = 4096
BIG = 128 * 1024


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def mount_at():
    """``mount_at(path)``: a tmpfs mounted there (root only; the test skipped with the reason
    where that cannot be done), unmounted after the test, even on failure. Request it before
    ``make_swarm``: fixtures are torn down in reverse, so the swarm stops first."""
    done: list[Path] = []

    def mount(path: Path) -> Disk:
        disk, why = mount_tmpfs(path, DISK_SIZE)
        if disk is None:
            pytest.skip(f"{why} (without root: test_queue_on_a_full_disk_without_root "
                        "covers the queue, test_the_log_file_drops_... the log file)")
        done.append(path)
        return disk

    yield mount
    left = [p for p in done if not unmount(p)]
    assert not left, f"tmpfs left mounted: {left}"


@pytest.fixture
def tmpfs_disk(mount_at, tmp_path):
    """A tmpfs for the queue's database alone."""
    return mount_at(tmp_path / "disk")


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


def _send_until_refused(swarm: Swarm, refusals: int = 3) -> tuple[list[str], dict]:
    """Enqueue large items one by one on a full disk until ``refusals`` were refused: SQLite
    may still fit a commit or two into space its files hold already; then every commit fails
    and is refused, so the producer keeps its messages. (accepted ids, refused items by id)"""
    accepted, refused = [], {}
    for i in range(150):
        item = _item(f"x-{i:03d}", BIG)
        reply = swarm.ask("queue", protocol.QUEUE_ENQUEUE, {"items": [item]})
        if reply.t == "ok":
            assert reply.b["accepted"] == [item["id"]]
            accepted.append(item["id"])
            continue
        assert reply.t == "error" and reply.b["code"] == "storage", reply.b
        assert reply.b["detail"].startswith(
            "not committed, retry with the same ids: disk full: "), reply.b["detail"]
        refused[item["id"]] = item
        if len(refused) == refusals:
            return accepted, refused
    raise AssertionError(f"the disk never refused a commit ({len(accepted)} accepted)")


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
    accepted, refused = _send_until_refused(swarm)
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


def _running(status: dict) -> dict[str, int]:
    """The pid of every running actor, checked to have never restarted."""
    services = {n: s for n, s in status["services"].items() if s["state"] != "disabled"}
    assert all(s["state"] == "running" and s["restarts"] == 0 for s in services.values()), \
        services
    return {n: s["pid"] for n, s in services.items()}


def test_logs_on_the_same_full_disk_do_not_take_an_actor_down(mount_at, make_swarm):
    """The whole data_dir on the small tmpfs: logs/swarm.log (and thespian.log, console.log),
    the queue's database, the pid file. Filled: the queue refuses enqueues ('storage'), every
    log line written meanwhile is lost and counted, nothing crashes or restarts, ``swarm
    status`` answers with the queue failing on 'disk full'; freed: healthy again by itself,
    the log says how many lines were lost, and none of its lines is torn."""
    swarm = make_swarm({"services": {"queue": {"enabled": True, "write_probe_s": 0.5,
                                               "storage_errors_failing": 3}}})
    disk = mount_at(swarm.data)
    swarm.start()
    assert (disk.path / "logs" / "swarm.log").exists() and (disk.path / "queue.db").exists()
    pids = _running(swarm.status())
    assert {"queue", "probe", "admin", "health", "registry"} <= set(pids)
    processes = {p.pid for p in swarm.processes()}  # with Thespian's logger and the admin
    before = [f"b-{i:02d}" for i in range(10)]
    reply = swarm.ask("queue", protocol.QUEUE_ENQUEUE, {"items": [_item(i) for i in before]})
    assert reply.t == "ok" and reply.b["accepted"] == before

    assert disk.fill() > 0
    accepted, refused = _send_until_refused(swarm)
    for _ in range(20):  # each one a warning in the log: 20 lines written to a full disk
        reply = swarm.ask("probe", protocol.TEST_RAISE, {"kind": "permanent"})
        assert reply.t == "error" and reply.b["code"] == "permanent", reply.b
    failing = swarm.wait_for(lambda s: s["services"]["queue"]["health"] == "failing",
                             what="queue failing")["services"]["queue"]
    assert failing["detail"].startswith("disk full: "), failing["detail"]
    cli = swarm.cli("status", "--json", check=False)  # the operator's view, through the admin
    assert cli.returncode == 3, cli.stdout + cli.stderr  # answered: not healthy
    shown = json.loads(cli.stdout)["services"]["queue"]
    assert shown["health"] == "failing" and "disk full" in shown["detail"], shown
    time.sleep(1.5)  # health polls, write probes, more log lines, all on the full disk
    assert disk.filled and disk.free_bytes() < 64 * 1024
    assert _running(swarm.status()) == pids
    assert {p.pid for p in swarm.processes()} == processes

    disk.free()
    healed = swarm.wait_for(lambda s: s["healthy"], timeout=15, what="healthy again")
    assert healed["services"]["queue"]["health"] == "ok"
    assert _running(healed) == pids
    assert {p.pid for p in swarm.processes()} == processes
    again = swarm.ask("queue", protocol.QUEUE_ENQUEUE, {"items": list(refused.values())})
    assert again.t == "ok" and again.b["accepted"] == list(refused), again.b
    got = _lease_all(swarm, "keep", "t")
    assert [m["id"] for m in got] == before + accepted + list(refused)


    lost = _wait(lambda: [e for e in _log(swarm) if e.get("event") == "log_lines_lost"], 10,
                 "the lost log lines in the log")
    assert len(lost) == 1, lost  # said once, when writing worked again
    assert lost[0]["lost"] >= 20 and lost[0]["msg"] == \
        f"{lost[0]['lost']} log lines lost to a full disk", lost[0]
    lines = (swarm.data / "logs" / "swarm.log").read_text().splitlines()
    assert all(line.startswith("{") and line.endswith("}") for line in lines), "a torn line"
    events = [e.get("event") for e in _log(swarm)]
    rejected = [e for e in _log(swarm) if e.get("event") == "rejected"
                and e.get("service") == "probe"]
    assert len(rejected) < 20, "the probe's warnings were written to a full disk"
    assert events.index("log_lines_lost") < len(events) - 1  # written before the next line


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


def test_the_log_file_drops_and_counts_lines_it_cannot_write_and_says_so_once(tmp_path):
    """No line torn, nothing raised: a line the disk takes in part is taken back; the outage
    ends with free space (a short line can fit the file's last block on a full disk) or
    RECOVERED_BYTES written; then one record says how many lines were lost. Rotation works."""
    room: dict = {"bytes": None}  # None: no limit

    class SmallDisk(io.FileIO):
        def write(self, data):
            if room["bytes"] is None:
                return super().write(data)
            n = super().write(bytes(data[:room["bytes"]])) if room["bytes"] else 0
            room["bytes"] -= n
            if not n:
                raise OSError(errno.ENOSPC, "No space left on device")
            return n

    handler = SwarmFileHandler(tmp_path / "swarm.log", maxBytes=20_000, backupCount=2,
                               delay=True)
    handler._open = lambda: SmallDisk(handler.baseFilename, "ab")
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.disk_full.swarm_log")
    logger.propagate = False
    logger.addHandler(handler)

    def lines() -> list[dict]:
        return [json.loads(line) for line in (tmp_path / "swarm.log").read_text().splitlines()]

    logger.warning("before")
    room["bytes"] = 30  # a piece of the next line fits, then the disk is full
    for i in range(5):
        logger.warning(f"lost {i}", extra={"event": "x"})
    assert [e["msg"] for e in lines()] == ["before"] and handler.lost == 5
    handler.MIN_FREE_BYTES = handler.RECOVERED_BYTES = 1 << 62  # not known to be over
    room["bytes"] = 250
    logger.warning("fits in the last block")
    assert [e["msg"] for e in lines()] == ["before", "fits in the last block"]  # no notice
    logger.warning("lost 5")
    room["bytes"] = None  # freed
    logger.warning("after 0")
    logger.warning("after 1")
    assert handler.lost == 6 and [e["msg"] for e in lines()][-1] == "after 1"
    handler.RECOVERED_BYTES = handler.written_since  # written enough since: over
    logger.warning("after 2")
    msgs = [e["msg"] for e in lines()]
    assert msgs == ["before", "fits in the last block", "after 0", "after 1",
                    "6 log lines lost to a full disk", "after 2"], msgs
    notice = lines()[4]
    assert (notice["event"], notice["service"], notice["lost"], notice["level"]) == (
        "log_lines_lost", "logs", 6, "warning") and "No space left" in notice["error"]
    handler.RECOVERED_BYTES = 1 << 62
    room["bytes"] = 0
    logger.warning("lost 6")
    room["bytes"] = None
    handler.MIN_FREE_BYTES = 0  # free space again: over at once
    logger.warning("after 3")
    assert [e["msg"] for e in lines()][-2:] == ["1 log line lost to a full disk", "after 3"]
    for i in range(400):
        logger.warning(f"rotated {i}")
    assert (tmp_path / "swarm.log.1").exists() and (tmp_path / "swarm.log.2").exists()
    assert handler.lost == 0 and lines()[-1]["msg"] == "rotated 399"
    logger.removeHandler(handler)
    handler.close()
