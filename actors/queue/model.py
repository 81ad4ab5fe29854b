"""Value types of the persistent queue: priorities, new and stored messages, results.

Pure data and validation, no I/O: shared by :mod:`actors.queue.store` (SQLite repository)
and :mod:`actors.queue.inbox` (inbox file sink).
"""
from __future__ import annotations

import base64
import math
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import IntEnum
from typing import Any

MAX_ID_LEN = 128
MAX_RECIPIENT_LEN = 200
_SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:@+=~-]*")


class Priority(IntEnum):
    """Delivery priority; the stored value is the int, smaller is served first."""

    URGENT = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3

    @property
    def label(self) -> str:
        return self.name.lower()

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


class State(IntEnum):
    """Stored ``state`` column. Acked messages are deleted, so there is no ``done`` state."""

    READY = 0
    LEASED = 1
    DEAD = 2

    @property
    def label(self) -> str:
        return self.name.lower()


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
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(map(str, unknown))}")
        if "recipient" not in data or "payload" not in data:
            raise ValueError("recipient and payload are required")
        return cls(**data)

    def problem(self) -> str | None:
        """Why this message cannot be enqueued, or None if it is valid."""
        if not isinstance(self.recipient, str) or not self.recipient.strip():
            return "empty recipient"
        if len(self.recipient) > MAX_RECIPIENT_LEN:
            return f"recipient longer than {MAX_RECIPIENT_LEN} characters"
        if not isinstance(self.payload, (bytes, bytearray)):
            return f"payload must be bytes, not {type(self.payload).__name__}"
        if not isinstance(self.sender, str):
            return "sender must be a str"
        if not isinstance(self.type, str) or not self.type:
            return "type must be a non-empty str"
        try:
            Priority.parse(self.priority)
        except ValueError as exc:
            return str(exc)
        if self.headers is not None and not (
            isinstance(self.headers, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items())
        ):
            return "headers must be a dict[str, str]"
        delay = self.delay_s
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            return "delay_s must be a number"
        if not math.isfinite(delay):
            return "delay_s must be finite"
        if delay < 0:
            return "negative delay"
        if self.id is not None and (reason := check_message_id(self.id)):
            return reason
        if self.max_attempts is not None and (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            return "max_attempts must be an int >= 1"
        return None


@dataclass(frozen=True, slots=True)
class Message:
    """A stored message as read back (leased, dead letter or ``get``).

    ``priority`` and ``state`` are labels (``"normal"``, ``"leased"``); times are clock seconds.
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
        return asdict(self)


Leased = Message
DeadLetter = Message


@dataclass(slots=True)
class EnqueueResult:
    """Outcome of one ``enqueue`` batch.

    ``ids[i]`` is the id of input item ``i`` (accepted or duplicate), None if it was rejected.
    """

    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)


@dataclass(slots=True)
class NackResult:
    """Outcome of ``nack``: ids scheduled for a retry and ids moved to dead letters."""

    retried: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.retried) + len(self.dead)


class IdGenerator:
    """Monotonic ULID-like ids: 48-bit milliseconds + 80-bit random, 26 chars of base32hex.

    base32hex (``0-9A-V``) keeps byte order, so ids sort by creation time; within one
    millisecond (or if the clock steps back) the random part is incremented, so ids made by
    one generator are strictly increasing.
    """

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._last_ms = -1
        self._last_rand = 0

    def __call__(self) -> str:
        ms = max(int(self._clock() * 1000), 0)
        if ms <= self._last_ms:
            ms, rand = self._last_ms, self._last_rand + 1
            if rand >> 80:
                ms, rand = ms + 1, secrets.randbits(79)
        else:
            rand = secrets.randbits(79)  # top bit clear: room to increment
        self._last_ms, self._last_rand = ms, rand
        raw = ((ms & (2**48 - 1)) << 80 | rand).to_bytes(16, "big")
        return base64.b32hexencode(raw).decode("ascii")[:26]
