"""SQLite schema, connection set-up and SQL text of :class:`actors.queue.store.QueueStore`.

Indexes (all partial, so each state's queries only touch the rows they need):

* ``ix_ready``     (recipient, priority, available_at, id) WHERE state = 0 -> ``lease``
* ``ix_ready_any`` (priority, available_at, id)            WHERE state = 0 -> ``lease_any``,
  ``next_available_at`` / oldest ready age (MIN per priority)
* ``ix_leased``    (lease_expires_at)                       WHERE state = 1 -> ``expire_leases``
* ``ix_dead``      (dead_at, id)                            WHERE state = 2 -> ``dead_letters``
* ``acked_ids``    WITHOUT ROWID (id PK, acked_at) + ``ix_acked_at`` -> dedup + ``purge_acked``

Queries use literal ``state = N`` so the planner can match the partial indexes.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgpack

from actors.queue.model import Message, Priority, State
from system.errors import ConfigError

SCHEMA_VERSION = 1
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

DDL = """
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    recipient TEXT NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    priority INTEGER NOT NULL,           -- 0 urgent, 1 high, 2 normal, 3 low
    payload BLOB NOT NULL,               -- opaque pre-encoded msgpack, returned untouched
    headers BLOB,                        -- msgpack map str -> str, NULL when empty
    created_at REAL NOT NULL,
    available_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,    -- 0 ready, 1 leased, 2 dead (acked rows are deleted)
    last_error TEXT,
    lease_owner TEXT,
    lease_expires_at REAL,
    dead_at REAL
);
CREATE INDEX ix_ready ON messages(recipient, priority, available_at, id) WHERE state = 0;
CREATE INDEX ix_ready_any ON messages(priority, available_at, id) WHERE state = 0;
CREATE INDEX ix_leased ON messages(lease_expires_at) WHERE state = 1;
CREATE INDEX ix_dead ON messages(dead_at, id) WHERE state = 2;
CREATE TABLE acked_ids (id TEXT PRIMARY KEY, acked_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX ix_acked_at ON acked_ids(acked_at);
"""

COLS = ("id, recipient, sender, type, priority, payload, headers, created_at, available_at, "
        "attempts, max_attempts, state, last_error, lease_owner, lease_expires_at, dead_at")
# A list of ids is bound as ONE JSON array: the SQL text stays constant (statement cache).
IDS = "(SELECT value FROM json_each(:ids))"
OWNER = "(:owner IS NULL OR lease_owner = :owner)"
# The LIMIT pitfall: "ORDER BY priority, available_at, id LIMIT n" over all priorities walks
# every future-delayed row when fewer than n are due. Querying ONE priority at a time makes
# "available_at <= :now" a range bound of the index, EXPLAIN QUERY PLAN:
#   SEARCH messages USING INDEX ix_ready (recipient=? AND priority=? AND available_at<?)
LEASE_ONE_SQL = (
    "UPDATE messages SET state = 1, attempts = attempts + 1, lease_owner = :owner, "
    "lease_expires_at = :exp WHERE id IN (SELECT id FROM messages WHERE state = 0 "
    "AND recipient = :rcpt AND priority = :prio AND available_at <= :now "
    f"ORDER BY available_at, id LIMIT :lim) RETURNING {COLS}")
LEASE_ANY_SQL = LEASE_ONE_SQL.replace("AND recipient = :rcpt ", "")
INSERT_SQL = (
    "INSERT INTO messages (id, recipient, sender, type, priority, payload, headers, created_at,"
    " available_at, max_attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def id_chunks(ids: Sequence[str], size: int = 5000) -> Iterator[str]:
    """Distinct ``ids`` as JSON arrays of at most ``size``, to bind as ``:ids`` of ``IDS``."""
    unique = list(dict.fromkeys(ids))
    for i in range(0, len(unique), size):
        yield json.dumps(unique[i:i + size])


def row_to_message(row: tuple) -> Message:
    """A row selected as ``COLS`` -> :class:`Message` (headers decoded, labels for ints)."""
    headers = msgpack.unpackb(row[6], raw=False) if row[6] else {}
    return Message(row[0], row[1], row[2], row[3], Priority(row[4]).label, row[5], headers,
                   *row[7:11], State(row[11]).label, *row[12:])


def is_busy(exc: BaseException) -> bool:
    """A "database is locked" / "database is busy" error (another connection holds a lock)."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def connect(path: str | Path, synchronous: str, busy_timeout_s: float) -> sqlite3.Connection:
    """Open in autocommit mode (transactions are explicit), WAL, create/check the schema."""
    sync = synchronous.upper()
    if sync not in SYNCHRONOUS:
        raise ConfigError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}, "
                          f"not {synchronous!r}")
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_s,
                           cached_statements=64)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {sync}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for stmt in filter(str.strip, DDL.split(";")):
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise ConfigError(f"queue store {path} has schema version {version}, "
                                  f"this code supports {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except BaseException:
        conn.close()
        raise
    return conn
