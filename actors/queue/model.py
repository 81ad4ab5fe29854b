"""Value types of the persistent queue: priorities, new and stored messages, results.

Pure data and validation, no I/O: shared by :mod:`actors.queue.store` (SQLite repository)
and :mod:`actors.queue.inbox` (inbox file sink); :class:`QueueRepository` is the storage
interface the queue service is written against.
"""
from __future__ import annotations

import math
import os
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, NamedTuple, Protocol, runtime_checkable

MAX_ID_LEN = 128
MAX_RECIPIENT_LEN = 200
MAX_ATTEMPTS = 1000  # per message; with backoff capped at retry_max_s that is days of retries
MAX_DELAY_S = 366 * 86_400  # a delay is a reminder, not an archive: at most a year
PURGE_LIMIT = 10_000  # rows per retention delete: ~50 ms here (1M dead letters took ~5 s)
_SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:@+=~-]*")


class _Labeled(IntEnum):
    @property
    def label(self) -> str:
        return self.name.lower()


class Priority(_Labeled):
    """Delivery priority; the stored value is the int, smaller is served first."""

    URGENT = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3

    @classmethod
    def parse(cls, value: Priority | str) -> Priority:
        """A member, or its label in any case (``"urgent"``...``"low"``); else ValueError."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        raise ValueError(f"unknown priority {value!r}")


class State(_Labeled):
    """Stored ``state`` column. Acked messages are deleted, so there is no ``done`` state."""

    READY = 0
    LEASED = 1
    DEAD = 2


def check_message_id(value: object) -> str | None:
    """Why ``value`` is not a safe message id (also used as a file name), or None if it is.

    Safe: a str of 1..128 chars from ``[A-Za-z0-9._:@+=~-]``, not starting with ``.`` or ``-``,
    without ``..`` (so no path separator, no NUL, no hidden/temp-file clash, no traversal).
    """
    if not isinstance(value, str):
        return "id must be a str"
    if not 0 < len(value) <= MAX_ID_LEN:
        return f"id must be 1..{MAX_ID_LEN} characters"
    if not _SAFE_ID.fullmatch(value) or ".." in value:
        return f"unsafe id {value!r}"
    return None


@dataclass(slots=True)
class NewMessage:
    """A message to enqueue. ``payload`` is opaque pre-encoded msgpack bytes.

    ``id`` None = generated (sortable: time-based + random); a producer-supplied id makes
    retries idempotent (see ``QueueStore.enqueue``). ``max_attempts`` None = store default.
    """

    recipient: str
    payload: bytes
    sender: str = ""
    type: str = "text"
    priority: Priority | str = "normal"
    headers: dict[str, str] | None = None
    delay_s: float = 0.0
    id: str | None = None
    max_attempts: int | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> NewMessage:
        """Build from a decoded envelope dict; unknown keys -> ValueError."""
        unknown = set(data) - FIELDS
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(map(str, unknown))}")
        if "recipient" not in data or "payload" not in data:
            raise ValueError("recipient and payload are required")
        return cls(**data)

    def problem(self) -> str | None:
        """Why this message cannot be enqueued, or None if it is valid."""
        out = check_fields(self.recipient, self.payload, self.sender, self.type, self.priority,
                           self.headers, self.delay_s, self.id, self.max_attempts)
        return out if isinstance(out, str) else None


FIELDS = frozenset(f.name for f in fields(NewMessage))
PRIORITY_OF_LABEL = {p.label: int(p) for p in Priority}
PRIORITY_LABELS = {int(p): p.label for p in Priority}


def check_fields(recipient: Any, payload: Any, sender: Any, kind: Any, priority: Any,
                 headers: Any, delay_s: Any, mid: Any, max_attempts: Any) -> int | str:
    """The priority as an int if the fields of a :class:`NewMessage` are valid, else why not
    (a str). One pass, no objects built: the store's enqueue calls it for every item."""
    if not isinstance(recipient, str):
        return f"recipient must be a str, not {type(recipient).__name__}"
    if not recipient.strip():
        return "empty recipient"
    if len(recipient) > MAX_RECIPIENT_LEN:
        return f"recipient longer than {MAX_RECIPIENT_LEN} characters"
    # Names are printed in tables and inbox headers, and compared exactly: "alice " or a
    # control character would be a recipient nobody consumes, or a forged line of output.
    if not recipient.isprintable() or recipient != recipient.strip():
        return "recipient has control characters or leading/trailing spaces"
    if not isinstance(payload, (bytes, bytearray)):
        return f"payload must be bytes, not {type(payload).__name__}"
    if not isinstance(sender, str) or not sender.isprintable():
        return "sender must be a str without control characters"
    if not isinstance(kind, str) or not kind or not kind.isprintable():
        return "type must be a non-empty str without control characters"
    prio = PRIORITY_OF_LABEL.get(priority) if priority.__class__ is str else None
    if prio is None:
        try:
            prio = int(Priority.parse(priority))
        except ValueError as exc:
            return str(exc)
    if headers is not None and not (
        isinstance(headers, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        return "headers must be a dict[str, str]"
    if isinstance(delay_s, bool) or not isinstance(delay_s, (int, float)):
        return "delay_s must be a number"
    if not math.isfinite(delay_s):
        return "delay_s must be finite"
    if delay_s < 0:
        return "negative delay"
    if delay_s > MAX_DELAY_S:
        return f"delay_s over {MAX_DELAY_S // 86_400} days"
    if mid is not None and (reason := check_message_id(mid)):
        return reason
    if max_attempts is not None and (
        isinstance(max_attempts, bool) or not isinstance(max_attempts, int)
        or not 1 <= max_attempts <= MAX_ATTEMPTS
    ):
        return f"max_attempts must be an int in 1..{MAX_ATTEMPTS}"
    return prio


class Message(NamedTuple):
    """A stored message as read back (leased, dead letter or ``get``): an immutable record.

    ``priority`` and ``state`` are labels (``"normal"``, ``"leased"``); times are clock seconds.
    A NamedTuple rather than a frozen dataclass: the store builds one per leased row, and a
    tuple is several times cheaper to create.
    """

    id: str
    recipient: str
    sender: str
    type: str
    priority: str
    payload: bytes
    headers: dict[str, str]
    created_at: float
    available_at: float
    attempts: int
    max_attempts: int
    state: str
    last_error: str | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    dead_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (msgpack-able: payload stays bytes)."""
        return self._asdict()


Leased = Message
DeadLetter = Message
WIRE_OVERHEAD = 256  # msgpack keys, numbers and framing of one message in a reply (generous)


def wire_size(m: Message) -> int:
    """The bytes ``m`` takes in a delivery or reply envelope, at most (strings as UTF-8)."""
    text = f"{m.id}{m.recipient}{m.sender}{m.type}{m.last_error or ''}"
    return (len(m.payload) + len(text.encode()) + WIRE_OVERHEAD
            + sum(len(k.encode()) + len(v.encode()) for k, v in (m.headers or {}).items()))


def fitting(msgs: Sequence[Message], max_bytes: int) -> int:
    """How many of ``msgs``, from the first, fit in ``max_bytes`` (at least one: a single
    message is always smaller than an envelope may be)."""
    total = 0
    for n, m in enumerate(msgs):
        total += wire_size(m)
        if total > max_bytes and n:
            return n
    return len(msgs)


def item_fields(item: NewMessage | Mapping) -> tuple | str:
    """(recipient, payload, sender, type, priority, headers, delay_s, id, max_attempts) of an
    item, or why it is not a message. A plain dict is read without building a NewMessage."""
    if item.__class__ is dict and FIELDS.issuperset(item) and "recipient" in item \
            and "payload" in item:
        get = item.get
        return (item["recipient"], item["payload"], get("sender", ""), get("type", "text"),
                get("priority", "normal"), get("headers"), get("delay_s", 0.0), get("id"),
                get("max_attempts"))
    if not isinstance(item, NewMessage):
        try:
            item = NewMessage.from_mapping(item)
        except (TypeError, ValueError) as exc:
            return f"invalid message: {exc}"
    return (item.recipient, item.payload, item.sender, item.type, item.priority, item.headers,
            item.delay_s, item.id, item.max_attempts)


@dataclass(slots=True)
class EnqueueResult:
    """Outcome of one ``enqueue`` batch.

    ``ids[i]`` is the id of input item ``i`` (accepted or duplicate), None if it was rejected.
    """

    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)
    leased: list[Message] = field(default_factory=list)
    """Accepted messages stored already leased (``enqueue(..., lease=...)``), in lease order."""


@dataclass(slots=True)
class NackResult:
    """Outcome of ``nack``: ids scheduled for a retry and ids moved to dead letters."""

    retried: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.retried) + len(self.dead)


@runtime_checkable
class QueueRepository(Protocol):
    """What the queue service needs from its storage: the seam for another backend.

    :class:`actors.queue.store.QueueStore` (SQLite, WAL) is the implementation; see its
    docstrings for the exact semantics, which ``tests/test_queue_store.py`` pins down for any
    backend. Storage failures raise ``sqlite3.Error``/``OSError`` (or TransientError for a
    busy database); a new backend maps its own errors onto those.
    """

    def enqueue(self, items: Sequence[NewMessage | Mapping],
                lease: Mapping[str, tuple[str, int, float]] | None = None,
                admit: Callable[[str, str], str | None] | None = None) -> EnqueueResult: ...
    def lease(self, recipient: str, limit: int, owner: str, visibility_s: float,
              max_bytes: int | None = None) -> list[Message]: ...
    def lease_each(self, wants: Sequence[tuple[str, int]], owner: str, visibility_s: float,
                   max_bytes: int | None = None) -> list[Message]: ...
    def ack(self, ids: Sequence[str], owner: str | None = None) -> int: ...
    def nack(self, ids: Sequence[str], error: str, owner: str | None = None, *,
             retry: bool = True) -> NackResult: ...
    def expire_leases(self) -> int: ...
    def release_leases(self, owner: str) -> int: ...
    def dead_letters(self, limit: int = 100, offset: int = 0) -> list[Message]: ...
    def requeue(self, ids: Sequence[str] | None = None) -> int: ...
    def purge(self, state: str = "dead", recipient: str | None = None) -> int: ...
    def purge_acked(self, older_than_s: float, limit: int = PURGE_LIMIT) -> int: ...
    def purge_dead(self, older_than_s: float, limit: int = PURGE_LIMIT) -> int: ...
    def probe_write(self, min_free_bytes: int = 0) -> None: ...
    def get(self, msg_id: str) -> Message | None: ...
    def ready_counts(self) -> dict[str, int]: ...
    def totals(self) -> dict[str, int]: ...
    def stats(self) -> dict: ...
    def close(self) -> None: ...


class IdGenerator:
    """Monotonic, time-sortable ids of 26 characters from ``0-9A-V`` (base32hex, as ULIDs).

    An id is 10 digits of milliseconds (48 bits, shifted by 2), 8 random digits (40 bits,
    drawn once per generator and process) and an 8-digit uppercase hex counter. The prefix is
    re-encoded only when the clock's millisecond changes, so an id costs one string format
    (~0.3 us, not ~7 us for encoding 128 bits). ``0-9A-F`` sort like their base32hex values
    and every part has a fixed width, so ids sort by creation time; within one millisecond (or
    if the clock steps back) the counter grows, so ids made by one generator are strictly
    increasing. Generators started in the same millisecond differ by their random digits.
    """

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._forks = -1  # the random digits are drawn again in a forked copy
        self._random = ""
        self._last_ms = -1
        self._prefix = ""
        self._n = 0

    def __call__(self) -> str:
        ms = int(self._clock() * 1000)
        if ms > self._last_ms or self._n > 0xFFFFFFFF:
            self._rebase(ms)
        n = self._n
        self._n = n + 1
        return f"{self._prefix}{n:08X}"

    def _rebase(self, ms: int) -> None:
        ms = max(ms, self._last_ms + 1, 0)  # counter exhausted in this millisecond: borrow one
        if self._forks != _forks[0]:
            self._forks, self._random = _forks[0], _base32hex(secrets.randbits(40), 4)
        self._prefix = _base32hex((ms & (2**48 - 1)) << 2, 5) + self._random
        self._last_ms, self._n = ms, 0


_forks = [0]  # forks of this process so far
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))
_B32_PAIRS = [a + b for a in "0123456789ABCDEFGHIJKLMNOPQRSTUV"
              for b in "0123456789ABCDEFGHIJKLMNOPQRSTUV"]  # 10 bits -> 2 digits


def _base32hex(value: int, pairs: int) -> str:
    """The low ``10 * pairs`` bits of ``value`` as ``2 * pairs`` base32hex digits."""
    return "".join([_B32_PAIRS[value >> shift & 1023] for shift in _SHIFTS[-pairs:]])


_SHIFTS = tuple(range(90, -1, -10))
