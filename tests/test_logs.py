"""Structured logging: JSON records, secret redaction, human rendering, error classes."""
from __future__ import annotations

import errno
import json
import logging
import sqlite3

from system.errors import ConfigError, PermanentError, StorageError, TransientError, classify
from system.logs import JsonFormatter, RedactFilter, format_line, log_defs


def _record(msg: str, **extra) -> logging.LogRecord:
    record = logging.LogRecord("swarm", logging.WARNING, __file__, 1, msg, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_records_are_json_lines_with_the_documented_fields():
    line = JsonFormatter().format(_record("queue is slow", service="queue", event="slow",
                                          depth=12))
    rec = json.loads(line)
    assert {"ts", "level", "service", "actor", "pid", "event", "msg"} <= set(rec)
    assert (rec["service"], rec["event"], rec["msg"], rec["depth"]) == (
        "queue", "slow", "queue is slow", 12)


def test_redaction_removes_secret_values_from_message_and_fields():
    record = _record("login with tok-123 failed", service="discord", header="Bot tok-123")
    RedactFilter(["tok-123"]).filter(record)
    line = JsonFormatter().format(record)
    assert "tok-123" not in line and line.count("***") == 2


def test_log_defs_point_at_data_dir_and_carry_the_redaction_filter():
    defs = log_defs("/data", "debug", 1000, 2, ["s3cret"])
    handler = defs["handlers"]["file"]
    assert handler["filename"] == "/data/logs/swarm.log" and handler["backupCount"] == 2
    assert defs["filters"]["redact"]["secrets"] == ["s3cret"]


def test_format_line_renders_humans_and_skips_non_records():
    text = format_line(json.dumps({"ts": 0, "level": "error", "service": "gas",
                                   "event": "stall", "msg": "Agent-2 stalled", "agent": "A2"}))
    assert "ERROR" in text and "gas" in text and "Agent-2 stalled" in text and "agent=A2" in text
    assert format_line("not json") is None and format_line("[1]") is None


def test_exceptions_map_to_recovery_classes():
    assert classify(TimeoutError()) == "transient"
    assert classify(ConnectionResetError()) == "transient"
    assert classify(sqlite3.OperationalError("database is locked")) == "transient"
    assert classify(sqlite3.OperationalError("no such table")) == "fatal"
    assert classify(ValueError()) == "permanent"
    assert classify(OverflowError("Python int too large to convert to SQLite INTEGER")) == \
        "permanent"  # a client's number, not broken state: no restart
    assert classify(PermanentError("x")) == "permanent"
    assert classify(TransientError("x")) == "transient"
    assert classify(ConfigError(["a", "b"])) == "config"
    assert classify(RuntimeError()) == "fatal"
    for disk in (OSError(errno.ENOSPC, "full"), OSError(errno.EROFS, "ro"),
                 PermissionError(errno.EACCES, "denied", "/data/q.db"),
                 sqlite3.OperationalError("database or disk is full"),
            sqlite3.OperationalError("attempt to write a readonly database"),
            sqlite3.OperationalError("disk I/O error"), StorageError("x")):
        assert classify(disk) == "storage", disk
    assert classify(OSError(errno.EBADF, "bad fd")) == "fatal"
    assert classify(PermissionError(errno.EPERM, "kill: not permitted")) == "fatal"  # no file


def test_follow_continues_across_rotation(tmp_path):
    import threading
    import time

    from system.logs import follow_log

    path = tmp_path / "swarm.log"
    path.write_text("old line\n")
    done = threading.Event()

    def writer():
        time.sleep(0.1)
        with open(path, "a") as f:
            f.write("before rotation\n")
        time.sleep(0.1)
        path.rename(tmp_path / "swarm.log.1")
        path.write_text("after rotation\n")
        time.sleep(0.3)
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    lines = list(follow_log(path, alive=lambda: not done.is_set(), poll_s=0.02))
    assert lines == ["before rotation", "after rotation"]
