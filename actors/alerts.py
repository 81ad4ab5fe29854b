"""Alert coalescing: repeated alerts for the same cause within a window become one, with a count.

    >>> router = AlertRouter(window_s=60)
    >>> [a["summary"] for a in router.submit(alert("error", "queue", "restarted"), now=0.0)]
    ['restarted']
    >>> router.submit(alert("error", "queue", "restarted"), now=1.0)
    []
    >>> [(a["summary"], a["count"]) for a in router.flush(now=61.0)]
    [('restarted', 1)]

The first alert of a cause goes out at once; repeats inside the window are only counted, and
one summary with the count goes out when the window closes. A restart storm is one message
plus one summary, not hundreds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

SEVERITIES = ("info", "warning", "error", "critical")


def alert(severity: str, service: str, summary: str, details: str = "",
          key: str | None = None) -> dict:
    """An alert body; ``key`` names the cause for coalescing (default: service + summary)."""
    return {"severity": severity if severity in SEVERITIES else "error", "service": service,
            "summary": summary, "details": details, "key": key or f"{service}:{summary}",
            "ts": time.time(), "count": 1}


_STATE_SEVERITY = {"running": "info", "disabled": "info", "restarting": "warning",
                   "stopped": "warning", "failed": "error"}


def state_notice(name: str, last: str | None, new: str, detail: str = "") -> dict | None:
    """The notification for a supervised actor now in state ``new``, or None when it is not
    news. ``last``: its last state that was not on the way somewhere (starting, stopping),
    None before its first. A first start is not news; coming back after a restart is.

    >>> state_notice("queue", "running", "restarting", "exited unexpectedly")["summary"]
    'queue is restarting (was running)'
    >>> state_notice("queue", "restarting", "starting") is None
    True
    >>> state_notice("queue", None, "running") is None
    True
    """
    if new == last or new not in _STATE_SEVERITY or (last is None and new == "running"):
        return None
    return dict(alert(_STATE_SEVERITY[new], name, f"{name} is {new}" + (
        f" (was {last})" if last else ""), detail, key=f"{name}:state"), kind="state")


@dataclass
class _Window:
    opened: float
    first: dict
    repeats: int = 0
    last: dict = field(default_factory=dict)


class AlertRouter:
    """Coalesces alerts by key; returns what to emit now (``submit``) or at window end (``flush``)."""

    def __init__(self, window_s: float = 60.0, min_severity: str = "warning"):
        self.windows: dict[str, _Window] = {}
        self.recent: list[dict] = []
        self.configure(window_s, min_severity)

    def configure(self, window_s: float, min_severity: str) -> None:
        self.window_s = window_s
        self.min_rank = SEVERITIES.index(min_severity) if min_severity in SEVERITIES else 1

    def submit(self, body: dict, now: float) -> list[dict]:
        if SEVERITIES.index(body.get("severity", "error")) < self.min_rank:
            return []
        key = body.get("key") or f"{body.get('service')}:{body.get('summary')}"
        out = self.flush(now)
        window = self.windows.get(key)
        if window is not None:
            window.repeats += 1
            window.last = body
            return out
        self.windows[key] = _Window(now, body)
        return out + [self._emit(dict(body, count=1))]

    def flush(self, now: float) -> list[dict]:
        """Close the windows older than ``window_s``; one summary for each that saw repeats."""
        out = []
        for key, window in list(self.windows.items()):
            if now - window.opened >= self.window_s:
                del self.windows[key]
                if window.repeats:
                    last = window.last
                    out.append(self._emit(dict(
                        last, count=window.repeats,
                        details=f"{window.repeats} more in {self.window_s:g}s; last: "
                                f"{last.get('details') or last.get('summary')}")))
        return out

    def _emit(self, body: dict) -> dict:
        self.recent = (self.recent + [body])[-50:]
        return body
