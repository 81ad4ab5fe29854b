"""SQLite schema, connection set-up and SQL text of :class:`actors.queue.store.QueueStore`.

Indexes (all partial, so each state's queries only touch the rows they need):

* ``ix_ready``  (recipient, priority, available_at, id) WHERE state = 0 -> ``lease`` (one range
  per recipient and priority), ``lease_any`` and ``next_available_at`` (the store knows which
  (recipient, priority) pairs have ready rows from its in-memory counters)
* ``ix_leased`` (lease_expires_at)                       WHERE state = 1 -> ``expire_leases``
* ``ix_dead``   (dead_at, id)                            WHERE state = 2 -> ``dead_letters``
* ``acked_ids`` WITHOUT ROWID (id PK, acked_at) + ``ix_acked_at`` -> dedup + ``purge_acked``

Every index is maintained on each enqueue, lease and ack, so there is no second ready index
for the cross-recipient order (schema version 1 had ``ix_ready_any``: dropping it made the
store ~15% faster; version 1 databases are migrated by dropping it).

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

SCHEMA_VERSION = 2
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
# every future-delayed row when fewer than n are due. Querying ONE (recipient, priority) at a
# time makes "available_at <= :now" a range bound of the index, EXPLAIN QUERY PLAN:
#   SEARCH messages USING COVERING INDEX ix_ready (recipient=? AND priority=? AND available_at<?)
# The index holds the rowid: rows are updated by rowid, not looked up again by id.
READY_SQL = ("SELECT rowid, available_at, id FROM messages WHERE state = 0 AND recipient = :rcpt "
             "AND priority = :prio AND available_at <= :now ORDER BY available_at, id LIMIT :lim")
# A lease returns only what changed or the caller needs to sort and count: the store has the
# rest of a freshly enqueued row in memory, else reads it with ROWS_SQL (see QueueStore._lease).
_LEASE = ("UPDATE messages SET state = 1, attempts = attempts + 1, lease_owner = :owner, "
          "lease_expires_at = :exp WHERE rowid IN ({}) "
          "RETURNING rowid, id, recipient, priority, available_at, attempts")
LEASE_ONE_SQL = _LEASE.format(READY_SQL.replace("rowid, available_at, id", "rowid", 1))
# lease_any: READY_SQL per (recipient, priority), merged in Python, then this by rowids.
LEASE_ROWIDS_SQL = _LEASE.format("SELECT value FROM json_each(:rowids)")
ROWS_SQL = f"SELECT rowid, {COLS} FROM messages WHERE rowid IN (SELECT value FROM json_each(?))"
INSERT_SQL = (
    "INSERT INTO messages (id, recipient, sender, type, priority, payload, headers, created_at,"
    " available_at, max_attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# The same row stored already leased (first attempt): owner, lease_expires_at follow.
INSERT_LEASED_SQL = (INSERT_SQL.replace(") VALUES (", ", state, attempts, lease_owner, "
                                        "lease_expires_at) VALUES (")[:-1] + ", 1, 1, ?, ?)")


def id_chunks(ids: Sequence[str], size: int = 5000) -> Iterator[tuple[str, int]]:
    """Distinct ``ids`` as (JSON array of at most ``size``, how many), to bind the JSON as
    ``:ids`` of ``IDS``."""
    unique = list(dict.fromkeys(ids))
    for i in range(0, len(unique), size):
        part = unique[i:i + size]
        yield json.dumps(part), len(part)


_PRIORITY_LABELS = tuple(p.label for p in Priority)
_STATE_LABELS = tuple(s.label for s in State)
_new_message = tuple.__new__


def row_to_message(row: tuple) -> Message:
    """A row selected as ``COLS`` -> :class:`Message` (headers decoded, labels for ints)."""
    h = row[6]
    return _new_message(Message, (
        row[0], row[1], row[2], row[3], _PRIORITY_LABELS[row[4]], row[5],
        msgpack.unpackb(h, raw=False) if h else {}, row[7], row[8], row[9], row[10],
        _STATE_LABELS[row[11]], row[12], row[13], row[14], row[15]))


def inserted_to_leased(row: tuple, available_at: float, attempts: int, owner: str,
                       expires_at: float) -> Message:
    """A row as inserted (``INSERT_SQL`` order), now leased -> :class:`Message`: what a lease
    would read back, without reading it (a never leased row has no last_error)."""
    h = row[6]
    return _new_message(Message, (
        row[0], row[1], row[2], row[3], _PRIORITY_LABELS[row[4]], row[5],
        msgpack.unpackb(h, raw=False) if h else {}, row[7], available_at, attempts, row[9],
        "leased", None, owner, expires_at, None))


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
            elif version == 1:  # 2 = 1 without ix_ready_any
                conn.execute("DROP INDEX IF EXISTS ix_ready_any")
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
