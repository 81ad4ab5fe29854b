"""Structured logging: JSON lines under ``data_dir/logs``, configured once through Thespian's logDefs.

Actors log with :func:`log`; Thespian forwards each record to its logger process, which
formats it with :class:`JsonFormatter` into a size-rotated file.

    >>> log_defs("/tmp/x")["handlers"]["file"]["filename"]
    '/tmp/x/logs/swarm.log'
"""
from __future__ import annotations

import errno
import json
import logging
import logging.handlers
import os
import time
import traceback
from pathlib import Path

LOG_FILE = "swarm.log"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, service, actor, pid, event, msg, plus fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "service": getattr(record, "service", record.name),
            "actor": str(getattr(record, "actorAddress", "") or ""),
            "pid": record.process,
            "event": getattr(record, "event", "log"),
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out and key != "actorAddress":
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class SwarmFileHandler(logging.handlers.RotatingFileHandler):
    """The size-rotated log file, safe on a full disk: a line that cannot be written is dropped
    and counted, never raised (into Thespian's logger process, which gives up after a few
    errors a second) nor reported on stderr (``logs/console.log``, on the same disk).

    Each line is one unbuffered ``write(2)`` on the file opened for appending; a line the disk
    took only in part is taken back (the file truncated to where it was: this process is the
    file's only writer), so no line is torn and nothing waits in a buffer. On a full disk a
    short line can still fit in the space the file's last block holds, so the outage ends only
    with ``MIN_FREE_BYTES`` free (or ``RECOVERED_BYTES`` written since the last failure); then
    one record says how many lines were lost (event ``log_lines_lost``, field ``lost``): "N log
    lines lost to a full disk", written before the line that found the disk writable again.
    """

    MIN_FREE_BYTES = 1 << 20
    RECOVERED_BYTES = 64 * 1024

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.lost = 0
        self.lost_since = 0.0
        self.lost_error: OSError | None = None
        self.written_since = 0  # bytes written since the last failure, during an outage

    def _open(self):
        return open(self.baseFilename, "ab", buffering=0)

    def _write(self, data: bytes) -> None:
        start = self.stream.seek(0, os.SEEK_END)
        done = 0
        try:
            while done < len(data):
                n = self.stream.write(data[done:])
                if not n:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += n
        except OSError:
            if done:
                try:
                    os.ftruncate(self.stream.fileno(), start)
                except OSError:  # not on a local disk; a newline at least ends the piece
                    self.stream.write(b"\n")
            raise

    def _disk_full(self) -> bool:
        return self.lost_error is not None and self.lost_error.errno in (errno.ENOSPC,
                                                                         errno.EDQUOT)

    def _recovered(self) -> bool:
        if not self._disk_full() or self.written_since >= self.RECOVERED_BYTES:
            return True
        st = os.fstatvfs(self.stream.fileno())
        return st.f_bavail * st.f_frsize >= self.MIN_FREE_BYTES

    def lost_notice(self) -> bytes:
        exc = self.lost_error
        why = "to a full disk" if self._disk_full() else f"to a write error: {exc}"
        lines = "log line" if self.lost == 1 else "log lines"
        record = logging.LogRecord("swarm.logs", logging.WARNING, __file__, 0,
                                   f"{self.lost} {lines} lost {why}", None, None)
        record.service, record.event, record.lost = "logs", "log_lines_lost", self.lost
        record.since = round(self.lost_since, 6)
        record.error = f"{type(exc).__name__}: {exc}" if exc is not None else ""
        return (self.format(record) + "\n").encode("utf-8", "backslashreplace")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:  # noqa: BLE001 - a record that cannot be formatted: logging's report
            self.handleError(record)
            return
        try:
            if self.stream is None:
                self.stream = self._open()
            if self.maxBytes > 0 and self.stream.seek(0, os.SEEK_END) + len(line) >= \
                    self.maxBytes:
                self.doRollover()
                if self.stream is None:
                    self.stream = self._open()
            if self.lost and self._recovered():
                self._write(self.lost_notice())
                self.lost, self.lost_error = 0, None
            self._write(line)
            self.written_since += len(line)
        except OSError as exc:
            if not self.lost:
                self.lost_since, self.lost_error = record.created, exc
            self.lost += 1
            self.written_since = 0


class RedactFilter(logging.Filter):
    """Replaces every known secret value in a record's message and fields with ``***``."""

    def __init__(self, secrets: list[str] | None = None):
        super().__init__()
        self.secrets = sorted((s for s in (secrets or []) if s), key=len, reverse=True)

    def _clean(self, value):
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, "***")
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self._clean(record.getMessage())
            record.args = None
            for key, value in list(vars(record).items()):
                if key not in _STANDARD:
                    setattr(record, key, self._clean(value))
        return True


class LibraryLevelFilter(logging.Filter):
    """Records of third-party libraries (no ``event`` field) obey ``system.log_level``; the
    runtime's own records were already filtered in the actor by the live per-service level."""

    def __init__(self, level: str = "info"):
        super().__init__()
        self.level = LEVELS.get(level, logging.INFO)

    def filter(self, record: logging.LogRecord) -> bool:
        return hasattr(record, "event") or record.levelno >= self.level


_actor_filter = RedactFilter()


def redact_in_process(secrets: list[str]) -> None:
    """Redact ``secrets`` from every record this process emits, before it leaves the process.

    Inside an actor the root logger is Thespian's forwarder, whose handler neither accepts new
    handlers nor runs filters; wrapping its ``handle`` covers library records too, and the set
    can change on reload (the logger process' filter only knows the secrets of boot time).
    """
    _actor_filter.secrets = sorted((s for s in secrets if s), key=len, reverse=True)
    for handler in logging.root.handlers:
        if not getattr(handler, "_swarm_redacts", False):
            original = handler.handle
            handler.handle = lambda record, _h=original: _h(record) if _actor_filter.filter(
                record) else None
            handler._swarm_redacts = True


def log_defs(data_dir: str | Path, level: str = "info", max_bytes: int = 10 * 1024 * 1024,
             backups: int = 5, secrets: list[str] | None = None) -> dict:
    """The dictConfig given to Thespian's ActorSystem as ``logDefs``."""
    logs = Path(data_dir) / "logs"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "system.logs.JsonFormatter"}},
        "filters": {"redact": {"()": "system.logs.RedactFilter", "secrets": list(secrets or [])},
                    "libraries": {"()": "system.logs.LibraryLevelFilter", "level": level}},
        "handlers": {"file": {
            "class": "system.logs.SwarmFileHandler",
            "filename": str(logs / LOG_FILE), "maxBytes": max_bytes, "backupCount": backups,
            "formatter": "json", "filters": ["libraries", "redact"],
        }},
        # Actors filter their own records by the live per-service level (see ``log``); DEBUG here
        # lets a reload lower that level without restarting the logger.
        "root": {"handlers": ["file"], "level": logging.DEBUG},
    }


def prepare_log_dir(data_dir: str | Path) -> Path:
    """Create the log directory and point Thespian's internal log there (not /tmp)."""
    logs = Path(data_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    os.environ["THESPLOG_FILE"] = str(logs / "thespian.log")
    os.environ.setdefault("THESPLOG_FILE_MAXSIZE", str(1024 * 1024))
    return logs


def log(level: str, service: str, event: str, msg: str, *,
        exc: BaseException | None = None, **fields) -> None:
    """Log one structured record; ``fields`` become JSON keys, ``exc`` a ``traceback`` field
    (formatted here: tracebacks do not cross to Thespian's logger process)."""
    fields = {(f"field_{k}" if k in _STANDARD else k): v for k, v in fields.items()}
    if exc is not None:
        fields["traceback"] = "".join(traceback.format_exception(exc))[-4000:]
    # logging.root, looked up per call: inside an actor Thespian replaces it with its forwarder
    # after fork, and loggers created before the fork would still point at the old root.
    logging.root.log(LEVELS.get(level, logging.INFO), msg,
                extra={"service": service, "event": event, **fields})


def format_line(line: str, color: bool = False) -> str | None:
    """Render one JSON log line for humans; None if the line is not a record."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.get("ts", 0)))
    level = str(rec.get("level", "info"))
    extra = {k: v for k, v in rec.items()
             if k not in ("ts", "level", "service", "actor", "pid", "event", "msg")}
    tail = " ".join(f"{k}={v}" for k, v in extra.items())
    text = f"{stamp} {level.upper():7} {rec.get('service', '-'):10} {rec.get('event', '')}: " \
           f"{rec.get('msg', '')}" + (f"  {tail}" if tail else "")
    if color:
        code = {"error": "31", "warning": "33", "debug": "2"}.get(level)
        if code:
            text = f"\033[{code}m{text}\033[0m"
    return text


def follow_log(path: Path, alive=lambda: True, poll_s: float = 0.2):
    """Yield lines appended to ``path``, following it across rotation, while ``alive()``."""
    handle, inode, from_end = None, None, path.exists()
    while True:
        if handle is None and path.exists():
            handle, inode = open(path, encoding="utf-8", errors="replace"), path.stat().st_ino  # noqa: SIM115 - kept open across yields
            if from_end:  # only the file as first found is skipped; a rotated-in one is new
                handle.seek(0, os.SEEK_END)
            from_end = False
        line = handle.readline() if handle else ""
        if line:
            yield line.rstrip("\n")
            continue
        try:
            rotated = path.stat().st_ino != inode
        except FileNotFoundError:
            rotated = True
        if handle and rotated:
            for rest in handle:
                yield rest.rstrip("\n")
            handle.close()
            handle = None
            continue
        if not alive():
            return
        time.sleep(poll_s)


def log_files(directory: Path) -> list[Path]:
    """The log file and its rotated backups, oldest first."""
    rotated = sorted(directory.glob(LOG_FILE + ".*"), key=lambda p: -int(p.suffix[1:])
                     if p.suffix[1:].isdigit() else 0)
    return [*rotated, directory / LOG_FILE]
