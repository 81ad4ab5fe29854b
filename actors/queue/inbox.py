"""InboxSink: exactly-once-effect delivery of queue messages to agent inbox files.

Each message becomes ``WORKSPACE/AGENT/inbox/MESSAGE_ID.md``, written atomically: a temp file
``.MESSAGE_ID.RANDOM.tmp`` in the same directory is written, flushed and fsynced, then
hard-linked to the final name (``os.link`` refuses to overwrite), unlinked, and the directory
fsynced. A file that already exists is never rewritten: redelivering a message (a lease that
expired after the write but before the ack) is a no-op returning the same path, so acking
after ``deliver`` gives at-least-once delivery with an exactly-once effect.

Errors: unknown agent, unsafe id, undecodable payload -> :class:`PermanentError` (dead-letter
the message); disk errors (ENOSPC, EACCES, EIO, ...) -> :class:`TransientError` (retry).
"""
from __future__ import annotations

import base64
import errno
import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack

from actors.queue.model import Priority, check_message_id
from system.errors import PermanentError, TransientError

_FIELDS = ("id", "recipient", "sender", "priority", "type", "created_at", "payload")
# link(2) unsupported by the file system: fall back to exists-check + os.replace.
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}


def _field(msg: Any, name: str) -> Any:
    try:
        return msg[name] if isinstance(msg, Mapping) else getattr(msg, name)
    except (KeyError, AttributeError):
        if name in ("sender", "type", "priority"):
            return {"sender": "", "type": "text", "priority": "normal"}[name]
        raise PermanentError(f"message has no {name!r}") from None


def _one_line(value: Any) -> str:
    return " ".join(str(value).splitlines())


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {(k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): _jsonable(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode("ascii")
    if isinstance(value, msgpack.Timestamp):
        return value.to_datetime().isoformat()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)  # msgpack.ExtType


def render_body(payload: bytes) -> str:
    """Markdown body of a msgpack payload: a str as is, ``{"text": str, ...}`` -> the text,
    anything else as a fenced pretty JSON block. Undecodable -> PermanentError."""
    if not isinstance(payload, (bytes, bytearray)):
        raise PermanentError(f"payload must be bytes, not {type(payload).__name__}")
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # ExtraData, FormatError, StackError, ValueError, ...
        raise PermanentError(f"undecodable payload: {exc.__class__.__name__}: {exc}") from exc
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value["text"]
    try:  # deep nesting (RecursionError), a timestamp out of datetime's range (OverflowError)
        text = json.dumps(_jsonable(value), indent=2, ensure_ascii=False)
    except (RecursionError, OverflowError, ValueError) as exc:
        raise PermanentError(f"payload cannot be shown as JSON: {exc.__class__.__name__}: "
                             f"{exc}") from exc
    return f"```json\n{text}\n```"


_FIXED = {"from", "to", "priority", "type", "timestamp", "message-id"}


def render(msg: Any) -> str:
    """The inbox file text: the header block (then one line per message header, sorted; one
    named like a fixed line gets a ``Header-`` prefix), a blank line, the body, a final
    newline."""
    mid = _field(msg, "id")
    prio = _field(msg, "priority")
    with suppress(ValueError):  # unknown: shown as given
        prio = Priority(prio).label if isinstance(prio, int) else Priority.parse(prio).label
    try:
        created = datetime.fromtimestamp(float(_field(msg, "created_at")), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise PermanentError(f"bad created_at: {exc}") from exc
    stamp = created.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    header = [f"# Message {mid}", f"From: {_one_line(_field(msg, 'sender'))}",
              f"To: {_one_line(_field(msg, 'recipient'))}", f"Priority: {_one_line(prio)}",
              f"Type: {_one_line(_field(msg, 'type'))}", f"Timestamp: {stamp}",
              f"Message-Id: {mid}"]
    headers = msg.get("headers") if isinstance(msg, Mapping) else getattr(msg, "headers", None)
    for key, value in sorted((headers or {}).items()):  # e.g. Tags: build, ci
        name = _one_line(key).strip()
        if not name or name.lower() in _FIXED:
            name = "Header-" + name
        header.append(f"{name}: {_one_line(value)}")
    body = render_body(_field(msg, "payload"))
    return "\n".join(header) + "\n\n" + body + ("" if body.endswith("\n") else "\n")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_error(exc: OSError, what: str) -> TransientError:
    name = errno.errorcode.get(exc.errno or 0, "OSError")
    return TransientError(f"{what}: {name}: {exc.strerror or exc}")


class InboxSink:
    """Writes messages addressed to known agents into their inbox directories."""

    def __init__(self, workspace_root: Path | str, agents: Sequence[str]):
        self.root = Path(workspace_root)
        bad = [a for a in agents if check_message_id(a)]
        if bad:
            raise ValueError(f"unsafe agent name(s): {bad}")
        self.agents = frozenset(agents)
        self._ready_dirs: set[Path] = set()

    def inbox_dir(self, agent: str) -> Path:
        return self.root / agent / "inbox"

    def path_for(self, msg: Any) -> Path:
        """Validated final path of ``msg``; PermanentError for unknown agent or unsafe id."""
        agent, mid = _field(msg, "recipient"), _field(msg, "id")
        if agent not in self.agents:
            raise PermanentError(f"unknown agent {agent!r}")
        if reason := check_message_id(mid):
            raise PermanentError(f"bad message id: {reason}")
        return self.inbox_dir(agent) / f"{mid}.md"

    def deliver(self, msg: Any) -> Path:
        """Write ``msg`` to its inbox file (durable on return) or find it already there."""
        path = self._write(msg)
        try:
            _fsync_dir(path.parent)
        except OSError as exc:
            raise _disk_error(exc, f"fsync {path.parent}") from exc
        return path

    def deliver_batch(self, msgs: Iterable[Any]) -> tuple[list[str], list[tuple[str, Exception]]]:
        """Deliver many; one directory fsync per agent. Returns (delivered ids, failures).
        One message that fails, for whatever reason, never holds up the others: an error that
        is not a disk error is permanent (that message is dead-lettered)."""
        done: dict[Path, list[str]] = {}
        failures: list[tuple[str, Exception]] = []
        for msg in msgs:
            try:
                path = self._write(msg)
            except Exception as exc:  # noqa: BLE001 - see the docstring
                if not isinstance(exc, (PermanentError, TransientError)):
                    exc = PermanentError(f"cannot write it: {exc.__class__.__name__}: {exc}")
                mid = msg.get("id") if isinstance(msg, Mapping) else getattr(msg, "id", None)
                failures.append((str(mid), exc))
                continue
            done.setdefault(path.parent, []).append(path.name[:-3])
        delivered: list[str] = []
        for directory, ids in done.items():
            try:
                _fsync_dir(directory)
            except OSError as exc:
                err = _disk_error(exc, f"fsync {directory}")
                failures += [(mid, err) for mid in ids]
                continue
            delivered += ids
        return delivered, failures

    def _write(self, msg: Any) -> Path:
        """Create the final file if absent; the caller fsyncs the directory."""
        path = self.path_for(msg)
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp")
        try:
            if path.exists():
                return path
            data = render(msg).encode("utf-8")
            self._ensure_dir(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._publish(tmp, path)
        except OSError as exc:
            self._ready_dirs.discard(path.parent)  # re-check the directory next time
            raise _disk_error(exc, f"write {path}") from exc
        finally:
            with suppress(OSError):  # absent (os.replace, never created) or swept later
                os.unlink(tmp)
        return path

    @staticmethod
    def _publish(tmp: Path, path: Path) -> None:
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # delivered concurrently or earlier: never overwrite
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            if not path.exists():
                os.replace(tmp, path)

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._ready_dirs:
            return
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            _fsync_dir(directory.parent)
            _fsync_dir(directory.parent.parent)
        self._ready_dirs.add(directory)

    def sweep_temp(self) -> int:
        """Remove leftover ``.*.tmp`` files (a crash between write and link). Run it when no
        delivery is in progress (at start-up). Returns the number removed."""
        removed = 0
        for agent in sorted(self.agents):
            directory = self.inbox_dir(agent)
            if not directory.is_dir():
                continue
            for entry in directory.iterdir():
                if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                    try:
                        entry.unlink()
                        removed += 1
                    except FileNotFoundError:
                        pass
        return removed
