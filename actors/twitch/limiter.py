"""The Twitch chat output limiter: what the bot may say, in which channel, and when.

Pure (the caller passes the time): the service offers every line it wants to say and sends
whatever ``due`` hands back, sleeping ``next_due_in`` seconds in between.

    >>> limiter = OutputLimiter(limit=3, window_s=30.0, margin_s=0.0)
    >>> for text in ("status: all green", "quote #7", "status: all green"):
    ...     _ = limiter.offer("swarm", text, Priority.ANSWER, now=0.0)
    >>> limiter.offer("swarm", "sent to   Agent-3", Priority.CONFIRM, now=0.0)
    1
    >>> limiter.due(now=0.0)
    [('swarm', 'sent to Agent-3'), ('swarm', 'status: all green'), ('swarm', 'quote #7')]
    >>> limiter.next_due_in(now=0.0)
    30.0
    >>> limiter.due(now=30.0)
    [('swarm', 'status: all green')]

The second "status: all green" waited for a free slot; had it gone out within 30 s of the
first, it would have carried the invisible duplicate suffix (below).

Rules, each one a Twitch rule or a lesson from it:

- **Rate**: at most ``limit`` messages per channel in any ``window_s`` window (Twitch: 20 per
  30 s, 100 where the bot is a moderator or the broadcaster: ``set_moderator``; going over
  locks the account out of chat for about 30 minutes). A sent message's slot comes back
  ``window_s + margin_s`` later: an exact sliding window, so no burst at a window edge, and
  the margin absorbs network jitter between our clock and Twitch's.
- **Length**: whitespace is collapsed as twitchio and Twitch do, then a line longer than
  ``max_length`` is split at word boundaries (a longer word is cut) into parts sent in
  order; ``SUFFIX_ROOM`` characters stay free in each part for the duplicate suffix.
- **Duplicates**: Twitch drops a message identical to one the bot sent in the channel within
  30 s (``msg_duplicate``). A CONFIRM or ANSWER (two admins confirmed, two viewers answered)
  gets an invisible suffix instead: a space and U+E0000 (an unassigned tag character that
  chat clients do not render, the usual Twitch duplicate bypass) repeated, one more per
  earlier copy in the window; a NOTICE or PERIODIC post repeated within 30 s says nothing
  new and is dropped (counted as ``duplicate``).
- **Priority**: CONFIRM (admin confirmations) before ANSWER (replies to viewers) before
  NOTICE (announcements) before PERIODIC (timer posts); first in, first out within one.
- **Bounded**: at most ``max_queue`` parts wait per channel. When full, the newest part of
  the lowest priority present goes (the incoming one if it is lowest), so nothing is dropped
  while a lower priority waits. A part waiting longer than ``max_wait_s[priority]`` is
  dropped as ``expired`` (an answer a minute late answers nobody); CONFIRM never expires.

Every part offered is sent, still queued or counted dropped (by priority and reason):
``offered == sent + queued + dropped`` in ``stats()``.
"""
from __future__ import annotations

import textwrap
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum


class Priority(IntEnum):
    """Smaller goes first."""

    CONFIRM = 0   # admin confirmations ("sent to Agent-3"): never dropped for a lower one
    ANSWER = 1    # replies to a viewer's command
    NOTICE = 2    # announcements (gas milestones, alerts)
    PERIODIC = 3  # timer posts

    @classmethod
    def parse(cls, value: Priority | str) -> Priority:
        """A member, or its name in any case (``"confirm"``); else ValueError."""
        if isinstance(value, Priority):
            return value
        try:
            return cls[str(value).strip().upper()]
        except KeyError:
            raise ValueError(f"unknown priority {value!r}") from None


MAX_LENGTH = 500              # Twitch's chat message limit (twitchio raises ValueError above)
DUPLICATE_WINDOW_S = 30.0     # Twitch's msg_duplicate window
SUFFIX = "\U000e0000"
SUFFIX_ROOM = 8               # " " + up to 7 tag characters: 8 copies of a line per 30 s
DEFAULT_MAX_WAIT_S: Mapping[Priority, float | None] = {
    Priority.CONFIRM: None, Priority.ANSWER: 60.0, Priority.NOTICE: 120.0,
    Priority.PERIODIC: 30.0}
DROP_REASONS = ("full", "expired", "duplicate", "empty")


def normalize(text: str) -> str:
    """Whitespace collapsed to single spaces, as twitchio measures and Twitch shows a line."""
    return " ".join(text.split())


def split_message(text: str, max_length: int = MAX_LENGTH) -> list[str]:
    """``text`` normalized and cut at word boundaries into parts of at most ``max_length``.

    >>> split_message("one two three", 8)
    ['one two', 'three']
    """
    text = normalize(text)
    if len(text) <= max_length:
        return [text] if text else []
    return textwrap.wrap(text, max_length, break_long_words=True, break_on_hyphens=False)


@dataclass
class _Part:
    text: str
    priority: Priority
    queued_at: float


@dataclass
class _Channel:
    queues: list[deque[_Part]] = field(default_factory=lambda: [deque() for _ in Priority])
    sent_at: deque[float] = field(default_factory=deque)         # send times in the window
    # text -> {suffix copies: when that variant was sent}, within the duplicate window
    recent: dict[str, dict[int, float]] = field(default_factory=dict)
    moderator: bool = False

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues)


class OutputLimiter:
    """Queues and paces chat output per channel (see the module docstring for the rules).
    ``max_wait_s`` overrides the expiry of some priorities (None: never expires)."""

    def __init__(self, limit: int = 20, window_s: float = 30.0, moderator_limit: int = 100,
                 max_queue: int = 200, max_length: int = MAX_LENGTH, margin_s: float = 1.0,
                 max_wait_s: Mapping[Priority | str, float | None] | None = None):
        if limit < 1 or moderator_limit < 1 or max_queue < 1 or max_length <= SUFFIX_ROOM:
            raise ValueError("limits, queue size and length must be positive")
        self.limit, self.moderator_limit = limit, moderator_limit
        self.window_s, self.margin_s = window_s, margin_s
        self.max_queue, self.max_length = max_queue, max_length
        self.max_wait_s = dict(DEFAULT_MAX_WAIT_S)
        for key, value in (max_wait_s or {}).items():
            self.max_wait_s[Priority.parse(key)] = value
        self._channels: dict[str, _Channel] = {}
        self.offered = self.sent = 0
        self.dropped = {p.name.lower(): dict.fromkeys(DROP_REASONS, 0) for p in Priority}

    def set_moderator(self, channel: str, moderator: bool) -> None:
        """The bot is (or no longer is) a moderator or the broadcaster in ``channel``."""
        self._channel(channel).moderator = moderator

    def channel_limit(self, channel: str) -> int:
        return self.moderator_limit if self._channel(channel).moderator else self.limit

    def offer(self, channel: str, text: str, priority: Priority | str, now: float) -> int:
        """Queue ``text`` for ``channel``; returns how many parts were queued (0: dropped)."""
        priority = Priority.parse(priority)
        parts = split_message(text, self.max_length - SUFFIX_ROOM)
        if not parts:
            self.offered += 1
            self._drop(priority, "empty")
            return 0
        state, queued = self._channel(channel), 0
        for part in parts:
            self.offered += 1
            if len(state) >= self.max_queue and not self._evict(state, priority):
                self._drop(priority, "full")
                continue
            state.queues[priority].append(_Part(part, priority, now))
            queued += 1
        return queued

    def due(self, now: float, most: int | None = None) -> list[tuple[str, str]]:
        """The (channel, text) pairs to send now, in order (at most ``most``); each counts
        as sent at ``now`` (see :meth:`delivered`)."""
        out: list[tuple[str, str]] = []
        for name, state in self._channels.items():
            self._forget(state, now)
            while len(state.sent_at) < self.channel_limit(name) and (
                    most is None or len(out) < most):
                picked = self._next_part(state, now)
                if picked is None:
                    break
                part, copies = picked
                state.sent_at.append(now)
                state.recent.setdefault(part.text, {})[copies] = now
                self.sent += 1
                out.append((name, f"{part.text} {SUFFIX * copies}" if copies else part.text))
        return out

    def delivered(self, channel: str, at: float) -> None:
        """The last line ``due`` handed out for ``channel`` reached the platform by ``at``
        (when its send returned): its slot counts from then. A sender that cannot send
        at once (a busy loop, a slow request) so never lets Twitch see more than ``limit``
        in a window."""
        state = self._channel(channel)
        if state.sent_at:
            state.sent_at[-1] = max(state.sent_at[-1], at)

    def next_due_in(self, now: float) -> float | None:
        """Seconds until ``due`` may return something (0.0: now), None if nothing waits."""
        waits = []
        for name, state in self._channels.items():
            if not len(state):
                continue
            self._forget(state, now)
            if len(state.sent_at) < self.channel_limit(name):
                return 0.0
            waits.append(state.sent_at[0] + self.window_s + self.margin_s - now)
        return max(0.0, min(waits)) if waits else None

    def stats(self) -> dict:
        """Counters: offered, sent, queued (total and per channel), dropped[priority][reason]."""
        queued = {name: len(state) for name, state in self._channels.items() if len(state)}
        return {"offered": self.offered, "sent": self.sent, "queued": sum(queued.values()),
                "queued_by_channel": queued,
                "dropped": {p: dict(reasons) for p, reasons in self.dropped.items()},
                "dropped_total": sum(sum(r.values()) for r in self.dropped.values())}

    # -- internals ---------------------------------------------------------------------------
    def _channel(self, name: str) -> _Channel:
        state = self._channels.get(name)
        if state is None:
            state = self._channels[name] = _Channel()
        return state

    def _drop(self, priority: Priority, reason: str) -> None:
        self.dropped[priority.name.lower()][reason] += 1

    def _evict(self, state: _Channel, incoming: Priority) -> bool:
        """Make room for a part of ``incoming`` priority by dropping the newest part of a
        lower one; False if every waiting part is of ``incoming`` priority or higher."""
        for priority in reversed(Priority):
            if priority <= incoming:
                return False
            if state.queues[priority]:
                self._drop(priority, "full")
                state.queues[priority].pop()
                return True
        return False

    def _forget(self, state: _Channel, now: float) -> None:
        """Give back the slots of messages older than the window; forget old texts."""
        # the same sum as next_due_in's wait (plus a microsecond for rounding): sleeping
        # exactly that wait always frees the slot, so the sender never spins on a 0 wait
        while state.sent_at and state.sent_at[0] + self.window_s + self.margin_s <= now + 1e-6:
            state.sent_at.popleft()
        duplicate_horizon = now - DUPLICATE_WINDOW_S - self.margin_s
        for text, variants in list(state.recent.items()):
            for copies, sent_at in list(variants.items()):
                if sent_at <= duplicate_horizon:
                    del variants[copies]
            if not variants:
                del state.recent[text]

    def _next_part(self, state: _Channel, now: float) -> tuple[_Part, int] | None:
        """The next part to send and how many suffix characters make it unique in the
        duplicate window, dropping what expired or duplicates on the way; None if none."""
        for queue in state.queues:
            while queue:
                part = queue.popleft()
                max_wait = self.max_wait_s.get(part.priority)
                if max_wait is not None and now - part.queued_at > max_wait:
                    self._drop(part.priority, "expired")
                    continue
                used = state.recent.get(part.text, {})
                if not used:
                    return part, 0
                copies = next(n for n in range(len(used) + 1) if n not in used)
                if part.priority <= Priority.ANSWER and copies < SUFFIX_ROOM:
                    return part, copies
                self._drop(part.priority, "duplicate")
        return None
