"""What the registry knows about one supervised actor, and the status snapshot built from it.

    >>> e = Entry("queue"); e.update({"state": "running", "pid": 7, "started_at": 100.0}, 100.0)
    >>> e.pong({"status": "ok", "detail": ""}, 101.0)
    >>> snapshot({"queue": e}, now=110.0)["services"]["queue"]["uptime_s"]
    10.0
"""
from __future__ import annotations

from dataclasses import dataclass, field

CAUSE_WINDOW_S = 30.0
_UPDATE_FIELDS = ("state", "parent", "kind", "pid", "started_at", "addr", "depends_on",
                  "restarts", "max_rss_mb")


@dataclass
class Entry:
    name: str
    state: str = "starting"
    parent: str = ""
    kind: str = "service"
    pid: int | None = None
    started_at: float = 0.0
    addr: str | None = None
    parent_addr: str | None = None
    depends_on: list = field(default_factory=list)
    restarts: int = 0
    max_rss_mb: float | None = None
    health: str = "unknown"
    detail: str = ""
    last_error: str = ""
    last_error_at: float = 0.0
    last_pong: float = 0.0
    epoch: float = 0.0
    """Start time of the supervisor incarnation that reported last: older ones are stale."""
    seq: int = 0
    """Number of that supervisor's last applied report: a lower one arrived late."""
    settled: str | None = None
    """The last state not on the way to another (starting, stopping): for state notices."""
    errors: dict = field(default_factory=dict)
    rss_bytes: int = 0
    uss_bytes: int = 0
    cpu_percent: float = 0.0
    activity: list = field(default_factory=list)
    """The service's latest activity (ServiceActor.activity), from its last health reply."""

    def set_error(self, text: str, now: float) -> None:
        self.last_error, self.last_error_at = text, now

    def recent_cause(self, now: float) -> bool:
        """A specific cause (unresponsive, over limit) was recorded moments ago: the supervisor's
        generic "exited unexpectedly" must not hide it."""
        return bool(self.last_error) and now - self.last_error_at < CAUSE_WINDOW_S

    def update(self, body: dict, now: float) -> None:
        """Apply a supervisor's report; a new pid means a new process whose health is unknown."""
        if body.get("pid") != self.pid:
            self.health, self.rss_bytes, self.uss_bytes, self.cpu_percent = "unknown", 0, 0, 0.0
            self.activity = []
        for key in _UPDATE_FIELDS:
            if key in body:
                setattr(self, key, body[key])
        if body.get("last_error") and not (body.get("generic_error") and self.recent_cause(now)):
            self.set_error(body["last_error"], now)
        if "detail" in body:
            self.detail = body["detail"]

    def pong(self, body: dict, now: float) -> None:
        self.health = body.get("status", "ok")
        self.detail = str(body.get("detail", ""))
        self.errors = body.get("errors") or {}
        activity = body.get("activity")
        self.activity = [a for a in activity if isinstance(a, dict)] \
            if isinstance(activity, list) else []
        self.last_pong = now
        if self.errors.get("last") and self.errors.get("last_at", 0) > self.last_error_at:
            self.set_error(self.errors["last"], self.errors["last_at"])

    def sample(self, sample: dict) -> None:
        self.rss_bytes = int(sample.get("rss", 0))
        self.uss_bytes = int(sample.get("uss", 0))
        self.cpu_percent = float(sample.get("cpu", 0.0))

    @property
    def healthy(self) -> bool:
        if self.state == "disabled":
            return True
        return self.state == "running" and self.health in ("ok", "degraded")

    def view(self, now: float) -> dict:
        running = self.state == "running"
        return {
            "state": self.state, "healthy": self.healthy, "health": self.health,
            "pid": self.pid if running else None, "restarts": self.restarts,
            "uptime_s": round(now - self.started_at, 3) if running and self.started_at else 0.0,
            "rss_bytes": self.rss_bytes if running else 0,
            "uss_bytes": self.uss_bytes if running else 0,
            "cpu_percent": self.cpu_percent if running else 0.0,
            "detail": self.detail if running else (self.last_error or self.detail),
            "last_error": self.last_error, "parent": self.parent, "kind": self.kind,
            "depends_on": self.depends_on, "errors": self.errors,
            "activity": self.activity if running else [],
        }


def snapshot(entries: dict[str, Entry], now: float) -> dict:
    """The ``swarm status --json`` shape: overall health and one view per actor."""
    services = {name: e.view(now) for name, e in entries.items()}
    return {"healthy": bool(services) and all(e.healthy for e in entries.values()),
            "services": services,
            "total_uss_bytes": sum(v["uss_bytes"] for v in services.values())}
