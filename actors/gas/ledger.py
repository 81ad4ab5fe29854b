"""Which gas was sent, in SQLite (``data_dir/gas.db``): exactly once per (agent, cycle,
threshold), across crashes.

    >>> led = Ledger(":memory:")
    >>> rows = led.save(AgentState("Agent-1", 1, "T1", 76.0, 0.0, sent=frozenset({"prepare"})),
    ...                 [("prepare", "Agent-2", 0.0)])
    >>> [(g["kind"], g["state"]) for g in led.pending()]
    [('prepare', 'pending')]

The protocol: the state and the gas now due are written in one transaction as ``pending``
(the intent), each with a deterministic queue message id (:func:`gas_id`); then enqueued; then
marked ``sent`` once the queue has accepted it. A crash before the enqueue leaves it pending,
and the next start enqueues it; a crash between the enqueue and the mark leaves it pending
too, and enqueueing it again is a queue duplicate (same id), never a second inbox file.
"""
from __future__ import annotations

import hashlib
import sqlite3
import time

from actors.gas.relay import AgentState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    agent TEXT PRIMARY KEY, cycle INTEGER NOT NULL, task TEXT, progress REAL NOT NULL,
    changed_at REAL NOT NULL, stalled INTEGER NOT NULL DEFAULT 0, cycle_task TEXT);
CREATE TABLE IF NOT EXISTS gas (
    agent TEXT NOT NULL, cycle INTEGER NOT NULL, kind TEXT NOT NULL, task TEXT,
    next_agent TEXT NOT NULL, progress REAL NOT NULL, msg_id TEXT NOT NULL,
    state TEXT NOT NULL, created_at REAL NOT NULL, sent_at REAL,
    PRIMARY KEY (agent, cycle, kind));
CREATE INDEX IF NOT EXISTS ix_gas_pending ON gas (state) WHERE state = 'pending';
"""


def gas_id(agent: str, cycle: int, task: str | None, kind: str) -> str:
    """The queue message id of one threshold of one cycle: the same on every resend."""
    digest = hashlib.sha256(f"{agent}\0{cycle}\0{task}\0{kind}".encode()).hexdigest()[:32]
    return f"gas-{kind}-{digest}"


class Ledger:
    def __init__(self, path: str):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        if "cycle_task" not in {r[1] for r in self.db.execute("PRAGMA table_info(agents)")}:
            self.db.execute("ALTER TABLE agents ADD COLUMN cycle_task TEXT")  # an older gas.db

    def close(self) -> None:
        self.db.close()

    def load(self) -> dict[str, AgentState]:
        """Every agent's last state, with the gas of its current cycle as sent."""
        states = {}
        for row in self.db.execute("SELECT * FROM agents"):
            kinds = {r[0] for r in self.db.execute(
                "SELECT kind FROM gas WHERE agent = ? AND cycle = ?", (row["agent"],
                                                                       row["cycle"]))}
            states[row["agent"]] = AgentState(row["agent"], row["cycle"], row["task"],
                                              row["progress"], row["changed_at"],
                                              bool(row["stalled"]), frozenset(kinds),
                                              row["cycle_task"] or row["task"])
        return states

    def save(self, state: AgentState, due: list[tuple[str, str, float]]) -> list[dict]:
        """Write the state and, in the same transaction, the gas now due
        ``(kind, next_agent, now)`` as pending; returns those rows."""
        rows = []
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT INTO agents (agent, cycle, task, progress, changed_at, stalled, cycle_task)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(agent) DO UPDATE SET "
                "cycle = excluded.cycle, task = excluded.task, progress = excluded.progress, "
                "changed_at = excluded.changed_at, stalled = excluded.stalled, "
                "cycle_task = excluded.cycle_task",
                (state.agent, state.cycle, state.task, state.progress, state.changed_at,
                 int(state.stalled), state.cycle_task))
            for kind, nxt, now in due:
                row = {"agent": state.agent, "cycle": state.cycle, "kind": kind,
                       "task": state.task, "next_agent": nxt, "progress": state.progress,
                       "msg_id": gas_id(state.agent, state.cycle, state.task, kind),
                       "state": "pending", "created_at": now, "sent_at": None}
                self.db.execute("INSERT OR IGNORE INTO gas VALUES (:agent, :cycle, :kind, :task,"
                                " :next_agent, :progress, :msg_id, :state, :created_at, "
                                ":sent_at)", row)
                rows.append(row)
        return rows

    def mark_sent(self, msg_ids: list[str], now: float | None = None) -> None:
        with self.db:
            self.db.executemany("UPDATE gas SET state = 'sent', sent_at = ? WHERE msg_id = ?",
                                [(now or time.time(), m) for m in msg_ids])

    def pending(self) -> list[dict]:
        return [dict(r) for r in self.db.execute(
            "SELECT * FROM gas WHERE state = 'pending' ORDER BY created_at, cycle")]

    def history(self, agent: str | None = None, limit: int = 50) -> list[dict]:
        query = "SELECT * FROM gas" + (" WHERE agent = ?" if agent else "") + \
            " ORDER BY created_at DESC LIMIT ?"
        return [dict(r) for r in self.db.execute(query, (agent, limit) if agent else (limit,))]

    def sent_in_cycle(self, agent: str, cycle: int) -> dict[str, float | None]:
        return {r["kind"]: r["sent_at"] for r in self.db.execute(
            "SELECT kind, sent_at FROM gas WHERE agent = ? AND cycle = ?", (agent, cycle))}
