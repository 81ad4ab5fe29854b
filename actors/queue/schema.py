"""SQLite schema, connection set-up, SQL text and row plumbing of
:class:`actors.queue.store.QueueStore`: rows as inserted (:func:`insert_rows`), the memory of
fresh rows (:class:`FreshRows`), rows -> messages, and :class:`Transaction`.

Indexes (all partial, so each state's queries only touch the rows they need):

* ``ix_ready``  (recipient, priority, available_at[, rowid]) WHERE state = 0 -> leases (one
  range per recipient and priority), a lease's byte budget and ``next_available_at`` (the
  store knows which (recipient, priority) pairs have ready rows from its in-memory counters)
* ``ix_leased`` (lease_expires_at)                       WHERE state = 1 -> ``expire_leases``
* ``ix_dead``   (dead_at, id)                            WHERE state = 2 -> ``dead_letters``
* ``acked_ids`` WITHOUT ROWID (id PK, acked_at) + ``ix_acked_at`` -> dedup + ``purge_acked``

Every index is maintained on each enqueue, lease and ack, so there is no second ready index
for the cross-recipient order (schema version 1 had ``ix_ready_any``: dropping it made the
store ~15% faster; version 1 databases are migrated by dropping it). Messages that become
available at the same time go out in enqueue order (rowid), whatever their ids: version 2
ordered them by id, so a batch of producer-supplied ids went out sorted by id; its ix_ready is
rebuilt on open.

Queries use literal ``state = N`` so the planner can match the partial indexes.
"""
from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Self

import msgpack

from actors.queue.model import (
    PRIORITY_LABELS,
    WIRE_OVERHEAD,
    Message,
    NewMessage,
    State,
    check_fields,
    item_fields,
)
from system.errors import ConfigError, TransientError

SCHEMA_VERSION = 3
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
# A WAL that grew (a burst, a long reader holding the checkpoint back) is cut back to this size
# when it is next reset; by default SQLite keeps it at its largest size on disk forever.
WAL_SIZE_LIMIT = 64 << 20

READY_INDEX = ("CREATE INDEX ix_ready ON messages(recipient, priority, available_at) "
               "WHERE state = 0")
DDL = f"""
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
{READY_INDEX};
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
# The LIMIT pitfall: "ORDER BY priority, available_at LIMIT n" over all priorities walks
# every future-delayed row when fewer than n are due. Querying ONE (recipient, priority) at a
# time makes "available_at <= :now" a range bound of the index, EXPLAIN QUERY PLAN:
#   SEARCH messages USING INDEX ix_ready (recipient=? AND priority=? AND available_at<?)
# The index holds the rowid: rows are updated by rowid, not looked up again by id.
_READY = ("SELECT {} FROM messages WHERE state = 0 AND recipient = :rcpt AND priority = :prio "
          "AND available_at <= :now ORDER BY available_at, rowid LIMIT :lim")
# A lease returns only what changed or the caller needs to sort and count: the store has the
# rest of a freshly enqueued row in memory, else reads it with ROWS_SQL (QueueStore.lease_each).
_LEASE = ("UPDATE messages SET state = 1, attempts = attempts + 1, lease_owner = :owner, "
          "lease_expires_at = :exp WHERE rowid IN ({}) "
          "RETURNING rowid, id, recipient, priority, available_at, attempts")
LEASE_ONE_SQL = _LEASE.format(_READY.format("rowid"))
# A lease with a byte budget: the candidates' sizes as sent (model.wire_size) first, then the
# rowids that fit.
READY_SIZED_SQL = _READY.format(
    f"rowid, length(payload) + ifnull(length(headers), 0) + length(CAST(id || recipient || "
    f"sender || type AS BLOB)) + {WIRE_OVERHEAD}")
LEASE_ROWIDS_SQL = _LEASE.format("SELECT value FROM json_each(:rowids)")
ROWS_SQL = f"SELECT rowid, {COLS} FROM messages WHERE rowid IN (SELECT value FROM json_each(?))"
INSERT_SQL = (
    "INSERT INTO messages (id, recipient, sender, type, priority, payload, headers, created_at,"
    " available_at, max_attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# The same row stored already leased (first attempt): owner, lease_expires_at follow.
INSERT_LEASED_SQL = (INSERT_SQL.replace(") VALUES (", ", state, attempts, lease_owner, "
                                        "lease_expires_at) VALUES (")[:-1] + ", 1, 1, ?, ?)")


def insert_rows(items: Sequence[NewMessage | Mapping], now: float, new_id: Callable[[], str],
                default_max_attempts: int, rejected: list[tuple[int, str]],
                ) -> tuple[list[tuple[int, tuple]], list[str]]:
    """(index, row in ``INSERT_SQL`` order) of each valid item, and the producer-supplied ids
    among them; ``rejected`` gets (index, reason) of the others. One pass per item, no
    intermediate objects: this is most of an enqueue's Python time."""
    rows, supplied = [], []
    for i, item in enumerate(items):
        fields = item_fields(item)
        prio = fields if fields.__class__ is str else check_fields(*fields)
        if prio.__class__ is str:
            rejected.append((i, prio))
            continue
        recipient, payload, sender, kind, _, headers, delay, mid, max_attempts = fields
        if mid is None:
            mid = new_id()
        else:
            supplied.append(mid)
        rows.append((i, (mid, recipient, sender, kind, prio, bytes(payload),
                         msgpack.packb(headers) if headers else None, now, now + delay,
                         max_attempts or default_max_attempts)))
    return rows, supplied


def pick_leased(rows: list[tuple], lease: Mapping[str, tuple[str, int, float]],
                busy: set[str], now: float) -> list[tuple[tuple, str, float]]:
    """(row, owner, lease_expires_at) of the new ``rows`` that ``enqueue(..., lease)`` stores
    leased: per recipient in ``lease`` and not ``busy`` (has ready rows), the first ``limit``
    rows available now in lease order (priority, then enqueue order: they share available_at)."""
    wanted: dict[str, list[tuple]] = {}
    for row in rows:
        if row[1] in lease and row[8] <= now and row[1] not in busy:
            wanted.setdefault(row[1], []).append(row)
    out = []
    for rcpt, group in wanted.items():
        owner, limit, visibility_s = lease[rcpt]
        group.sort(key=_PRIO)  # stable: enqueue order within a priority
        out += [(row, owner, now + visibility_s) for row in group[:max(limit, 0)]]
    return out


_PRIO = itemgetter(4)


def id_chunks(ids: Sequence[str], size: int = 5000) -> Iterator[tuple[str, int]]:
    """Distinct ``ids`` as (JSON array of at most ``size``, how many), to bind the JSON as
    ``:ids`` of ``IDS``."""
    unique = list(dict.fromkeys(ids))
    for i in range(0, len(unique), size):
        part = unique[i:i + size]
        yield json.dumps(part), len(part)


_STATE_LABELS = tuple(s.label for s in State)
_new_message = tuple.__new__


def row_to_message(row: tuple) -> Message:
    """A row selected as ``COLS`` -> :class:`Message` (headers decoded, labels for ints)."""
    h = row[6]
    return _new_message(Message, (
        row[0], row[1], row[2], row[3], PRIORITY_LABELS[row[4]], row[5],
        msgpack.unpackb(h, raw=False) if h else {}, row[7], row[8], row[9], row[10],
        _STATE_LABELS[row[11]], row[12], row[13], row[14], row[15]))


def inserted_to_leased(row: tuple, available_at: float, attempts: int, owner: str,
                       expires_at: float) -> Message:
    """A row as inserted (``INSERT_SQL`` order), now leased -> :class:`Message`: what a lease
    would read back, without reading it (a never leased row has no last_error)."""
    h = row[6]
    return _new_message(Message, (
        row[0], row[1], row[2], row[3], PRIORITY_LABELS[row[4]], row[5],
        msgpack.unpackb(h, raw=False) if h else {}, row[7], available_at, attempts, row[9],
        "leased", None, owner, expires_at, None))


class FreshRows:
    """Committed, never leased rows as inserted (``INSERT_SQL`` order), by id: a lease of a
    row that this store enqueued needs no read-back (a single writer knows what it wrote).
    Dropped whole when it would hold more than ``max_rows`` rows or ``max_bytes`` of payload
    (nobody is consuming them); leases then read the rows back."""

    def __init__(self, max_rows: int = 100_000, max_bytes: int = 32 << 20):
        self.max_rows, self.max_bytes = max_rows, max_bytes
        self.rows: dict[str, tuple] = {}
        self.bytes = 0

    def add(self, rows: list[tuple]) -> None:
        size = sum(map(len, map(_PAYLOAD, rows)))
        if len(self.rows) + len(rows) > self.max_rows or self.bytes + size > self.max_bytes:
            self.clear()
            if len(rows) > self.max_rows or size > self.max_bytes:
                return
        self.rows.update(zip(map(_ID, rows), rows))
        self.bytes += size

    def take(self, mid: str) -> tuple | None:
        row = self.rows.pop(mid, None)
        if row is not None:
            self.bytes -= len(row[5])
        return row

    def clear(self) -> None:
        self.rows.clear()
        self.bytes = 0


_ID, _PAYLOAD = itemgetter(0), itemgetter(5)


def leased_messages(conn: sqlite3.Connection, fresh: FreshRows, rows: list[tuple], owner: str,
                    expires_at: float) -> list[Message]:
    """Messages of the ``rows`` a lease just returned (rowid, id, recipient, priority,
    available_at, attempts), in that order: from ``fresh`` if there, else read back."""
    out: list = []
    missing: dict[int, int] = {}  # rowid -> position in out
    for rowid, mid, _, _, available_at, attempts in rows:
        row = fresh.take(mid)
        if row is None:
            missing[rowid] = len(out)
            out.append(None)
        else:
            out.append(inserted_to_leased(row, available_at, attempts, owner, expires_at))
    if missing:
        for row in conn.execute(ROWS_SQL, (json.dumps(list(missing)),)):
            out[missing[row[0]]] = row_to_message(row[1:])
    return out


class Transaction:
    """``with Transaction(conn, on_commit) as tx``: one ``BEGIN IMMEDIATE`` transaction;
    "database is locked/busy" -> TransientError. ``tx.move`` records depth counter changes;
    ``on_commit(tx)`` applies them once committed. A plain class, not a @contextmanager: an
    unbatched enqueue pays for it on every request.

    ``single=True``: the block runs ONE statement, which is its own transaction (SQLite's
    autocommit): BEGIN and COMMIT as statements of their own cost ~10% of an unbatched
    enqueue."""

    __slots__ = ("conn", "depth", "on_commit", "single", "totals")

    def __init__(self, conn: sqlite3.Connection, on_commit: Callable[[Transaction], None],
                 single: bool = False) -> None:
        self.conn, self.on_commit, self.single = conn, on_commit, single
        self.depth: dict[tuple[int, str, int], int] = {}
        self.totals: dict[str, int] = {}  # set once per transaction: tx.totals.update(...)

    def __enter__(self) -> Self:
        if not self.single:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise_busy(exc)
                raise
        return self

    def __exit__(self, etype, exc, tb) -> None:
        conn = self.conn
        if etype is None:
            if not self.single:
                try:
                    conn.execute("COMMIT")
                except sqlite3.OperationalError as err:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise_busy(err)
                    raise
            self.on_commit(self)
            return
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError):
            raise_busy(exc)

    def move(self, rows: Sequence[tuple], old: int | None, new: int | None,
             key: Callable = itemgetter(0, 1)) -> None:
        """Rows (``key`` -> (recipient, priority); default: rows RETURNING recipient,
        priority, ...) went from state ``old`` to ``new`` (None: gone)."""
        if not rows:
            return
        depth = self.depth
        counts = Counter(map(key, rows)).items() if len(rows) > 1 else ((key(rows[0]), 1),)
        for (rcpt, prio), n in counts:
            if old is not None:
                depth[old, rcpt, prio] = depth.get((old, rcpt, prio), 0) - n
            if new is not None:
                depth[new, rcpt, prio] = depth.get((new, rcpt, prio), 0) + n


def raise_busy(exc: sqlite3.OperationalError) -> None:
    """"database is locked/busy" -> TransientError (else the caller re-raises ``exc``)."""
    if is_busy(exc):
        raise TransientError(f"queue store busy: {exc}") from exc


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
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for stmt in filter(str.strip, DDL.split(";")):
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version in (1, 2):  # 2 = 1 without ix_ready_any; 3: ix_ready by rowid
                conn.execute("DROP INDEX IF EXISTS ix_ready_any")
                conn.execute("DROP INDEX ix_ready")
                conn.execute(READY_INDEX)
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
