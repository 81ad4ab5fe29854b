"""The status channel's posts: notifications folded into as few messages as the channel's
budget allows (Discord: 5 messages per 5 s per channel), none dropped.

    >>> r = ChannelReporter(posts=5, per_s=5.0, linger_s=0.0)
    >>> restart = {"kind": "alert", "severity": "error", "service": "queue",
    ...            "summary": "queue restarted", "key": "queue:restart"}
    >>> [r.add(restart, now=0.0) for _ in range(3)]
    [True, True, True]
    >>> print(r.take(now=0.0))
    🔴 **queue** queue restarted ×3
    >>> r.take(now=0.0) is None
    True

Notifications with the same key fold into one line with a count; a post lists lines up to
Discord's 2,000 characters and sums up the rest ("… and 40 more: ..."), so every
notification is accounted for in the post that takes it. A first notification waits
``linger_s`` for the rest of its burst before a post goes out.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

SEVERITIES = ("info", "warning", "error", "critical")
_ICON = {"info": "🔵", "warning": "🟡", "error": "🔴", "critical": "🚨"}
MAX_CHARS = 1900  # below Discord's 2,000 per message
_REST_CHARS = 240  # kept free for the line summing up what a post has no room to list
MAX_KEYS = 1000


@dataclass
class _Pending:
    first: dict
    count: int = 1
    last: dict = field(default_factory=dict)


class ChannelReporter:
    """What to post and when, for one channel; the caller does the posting."""

    def __init__(self, posts: int = 5, per_s: float = 5.0, linger_s: float = 1.0,
                 kinds: tuple[str, ...] = ("alert", "state", "gas"),
                 min_severity: str = "info") -> None:
        self.posts, self.per_s, self.linger_s = posts, per_s, linger_s
        self.kinds = set(kinds)
        self.min_rank = SEVERITIES.index(min_severity) if min_severity in SEVERITIES else 0
        self.pending: collections.OrderedDict[str, _Pending] = collections.OrderedDict()
        self.overflow: collections.Counter = collections.Counter()  # service -> count
        self.sent_at: collections.deque = collections.deque(maxlen=posts)
        self.first_at: float | None = None
        self.items_in = self.items_out = self.filtered = self.post_count = 0

    def add(self, notice: dict, now: float) -> bool:
        """Queue a notification; False if ``report`` config filters it out."""
        severity = notice.get("severity", "error")
        rank = SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES) - 1
        if notice.get("kind", "alert") not in self.kinds or rank < self.min_rank:
            self.filtered += 1
            return False
        count = max(1, int(notice.get("count") or 1))
        self.items_in += count
        key = str(notice.get("key") or f"{notice.get('service')}:{notice.get('summary')}")
        if self.first_at is None:
            self.first_at = now
        if key in self.pending:
            entry = self.pending[key]
            entry.count += count
            entry.last = notice
        elif len(self.pending) < MAX_KEYS:
            self.pending[key] = _Pending(notice, count, notice)
        else:  # a flood of distinct causes: counted per service, summed up in the next post
            self.overflow[str(notice.get("service", "?"))] += count
        return True

    @property
    def backlog(self) -> int:
        """Notifications received and not yet in a post."""
        return self.items_in - self.items_out

    def wait_s(self, now: float) -> float | None:
        """Seconds until :meth:`take` has something; None when nothing is pending."""
        if self.first_at is None:
            return None
        linger = self.first_at + self.linger_s - now
        budget = 0.0
        if len(self.sent_at) >= self.posts:
            budget = self.sent_at[0] + self.per_s - now
        return max(0.0, linger, budget)

    def take(self, now: float) -> str | None:
        """The next post's text if one may go out now (it then counts against the budget)."""
        wait = self.wait_s(now)
        if wait is None or wait > 0:
            return None
        lines, size = [], 0
        while self.pending:
            key, entry = next(iter(self.pending.items()))
            line = _line(entry)
            if lines and size + len(line) + 1 > MAX_CHARS - _REST_CHARS:
                break
            lines.append(line[:MAX_CHARS - _REST_CHARS])
            size += len(line) + 1
            self.items_out += entry.count
            del self.pending[key]
        rest = self._sum_up()
        if rest:
            lines.append(rest)
        self.first_at = now if self.pending else None  # what is left goes with the next post
        self.sent_at.append(now)
        self.post_count += 1
        return "\n".join(lines)

    def _sum_up(self) -> str:
        """The line accounting for everything a post has no room to list (then cleared)."""
        by_what: collections.Counter = collections.Counter()
        for entry in self.pending.values():
            by_what[f"{entry.first.get('service', '?')} {entry.first.get('summary', '')}"] += \
                entry.count
        for service, count in self.overflow.items():
            by_what[f"{service} (other)"] += count
        total = sum(by_what.values())
        self.pending.clear()
        self.overflow.clear()
        self.items_out += total
        if not total:
            return ""
        shown = ", ".join(f"{what} ×{n}" for what, n in by_what.most_common(8))
        more = "" if len(by_what) <= 8 else ", …"
        line = f"… and {total} more: {shown}{more}"
        return line if len(line) <= _REST_CHARS else line[:_REST_CHARS - 1] + "…"


def _line(entry: _Pending) -> str:
    first, last = entry.first, entry.last or entry.first
    icon = _ICON.get(last.get("severity", "error"), "🔴")
    text = f"{icon} **{first.get('service', '?')}** {first.get('summary', '')}"
    if entry.count > 1:
        text += f" ×{entry.count}"
    details = str(last.get("details") or "").strip().replace("\n", " ")
    if details:
        text += f" — {details[:200]}"
    return text
