"""QueueStore: the SQLite (WAL) repository behind the persistent message queue.

One connection, one writer: the queue actor owns the store; every mutation is one
``BEGIN IMMEDIATE`` transaction (a whole ``enqueue`` batch, a whole ``lease`` batch, ...).

Durability (``synchronous``):

* ``NORMAL`` (default): a committed transaction survives a crash of the process; on power
  loss or an OS crash the last few commits (since the last WAL checkpoint sync) may be lost,
  never corrupted. No fsync per commit.
* ``FULL``: one fsync of the WAL per commit (~0.24 ms here); survives power loss. Costs
  little at large batches (B=1000 ~69k msgs/s vs ~75k), a lot unbatched (~1,150/s vs ~1,550/s).
* ``OFF``: no fsync at all; a power loss can corrupt the database. Tests/benchmarks only.

Design (see /work/shared/QUEUE_NOTES.md):

* States: ready (0), leased (1), dead (2). Acked rows are deleted (faster than keeping them);
  their ids are kept in the compact ``acked_ids`` table (id, acked_at) so that a producer
  retrying an already delivered id is still reported as a duplicate. That dedup window is
  bounded by ``purge_acked(older_than_s)``; pass ``remember_acked=False`` to skip it.
* Partial indexes per state and the LIMIT pitfall (lease one priority at a time so that
  ``available_at <= now`` bounds the index range): see :mod:`actors.queue.schema`.
* Depth counters per state and (recipient, priority) live in memory (dead letters per
  priority only: see :func:`_depth_key`), are rebuilt by one GROUP BY at open and updated
  only after a commit, so ``stats()`` and the "nothing ready" fast path cost no query.
* Retention deletes (``purge_acked``, ``purge_dead``) take at most ``limit`` rows per call:
  a backlog (months of dead letters reaching retention, acked ids after a long stop) is
  worked off over several ticks, never in one transaction that holds the actor for seconds.
* A single writer knows what it wrote: a lease takes the rows it just enqueued from memory
  (:class:`schema.FreshRows`) instead of reading 16 columns back, and ``enqueue(..., lease=)``
  stores new rows already leased to a waiting consumer when none of its recipient's rows
  are ready (no UPDATE at all). Generated ids are a counter after a per-millisecond prefix.
* ``sqlite3.OperationalError`` "database is locked/busy" -> :class:`TransientError`.
"""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from operator import itemgetter
from pathlib import Path
from typing import Self

from actors.queue import schema
from actors.queue.model import (
    PURGE_LIMIT,
    DeadLetter,
    EnqueueResult,
    IdGenerator,
    Leased,
    Message,
    NackResult,
    NewMessage,
    Priority,
    State,
)
from actors.queue.schema import (
    LEASE_ONE_SQL,
    LEASE_ROWIDS_SQL,
    READY_SIZED_SQL,
    SCHEMA_VERSION,
    FreshRows,
    Transaction,
    is_busy,
)
from system.errors import ConfigError, TransientError

__all__ = ["LEASE_ONE_SQL", "READY_SIZED_SQL", "SCHEMA_VERSION", "QueueStore"]

READY, LEASED, DEAD = State.READY, State.LEASED, State.DEAD
ALL_RECIPIENTS = "*"
# Above this many (recipient, priority) pairs with ready rows, the oldest ready time is one
# scan of ix_ready (~75 ms per million ready rows) rather than a MIN() per pair (~5 µs each).
MIN_BY_PAIR_MAX = 1_000
BULK_ROWS = 50_000  # rows per transaction of an operator's purge or requeue-all (~0.1 s)


def free_bytes(directory: str) -> int:
    """Free space of the file system holding ``directory`` for this process (root may use
    the blocks reserved for it)."""
    st = os.statvfs(directory)
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def _no_depths() -> dict[int, Counter[tuple[str, int]]]:
    return {READY: Counter(), LEASED: Counter(), DEAD: Counter()}


def _depth_key(state: int, recipient: str, priority: int) -> tuple[str, int]:
    """The in-memory depth counters: (recipient, priority) per state, except dead letters,
    counted by priority only: they pile up under any number of recipient names (unknown
    agents), and nothing needs their count per recipient. The hot paths (a lease, each tick's
    expiry check) read the ready and leased counters, which never hold dead entries."""
    return (ALL_RECIPIENTS, priority) if state == DEAD else (recipient, priority)


_PURGE_STATES = {"ready": (READY,), "leased": (LEASED,), "dead": (DEAD,),
                 "all": (READY, LEASED, DEAD)}
_TOTALS = ("enqueued", "duplicates", "rejected", "leased", "acked", "nacked", "retried", "dead",
           "expired", "requeued", "purged", "dead_expired")
_RCPT_PRIO_OF_ROW = itemgetter(1, 4)  # rows as INSERT_SQL / COLS: id, recipient, ..., priority
_RCPT_PRIO_OF_LEASED = itemgetter(2, 3)  # rows RETURNING rowid, id, recipient, priority, ...
_LEASE_ORDER = itemgetter(4, 0)      # available_at, rowid (RETURNING order is unspecified)


def _admitted(rows: list[tuple[int, tuple]], admit: Callable[[str, str], str | None],
              result: EnqueueResult) -> list[tuple[int, tuple]]:
    out = []
    for i, row in rows:
        if why := admit(row[2], row[1]):
            result.ids[i] = None
            result.rejected.append((i, why))
        else:
            out.append((i, row))
    return out


class QueueStore:
    """Persistent priority queue with leases, retries with backoff and dead letters.

    Must be the database's only writer (its depth counters track its own commits); not
    thread-safe: one owner (the queue actor) calls it.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL",
                 clock: Callable[[], float] = time.time, busy_timeout_s: float = 2.0,
                 default_max_attempts: int = 5, backoff_base_s: float = 1.0,
                 backoff_max_s: float = 300.0, remember_acked: bool = True,
                 max_recipients: int = 10_000):
        if default_max_attempts < 1:
            raise ConfigError("default_max_attempts must be >= 1")
        self.path = str(path)
        self._clock = clock
        self._new_id = IdGenerator(clock)
        self.default_max_attempts = default_max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.remember_acked = remember_acked
        self.max_recipients = max_recipients
        self._depth: dict[int, Counter[tuple[str, int]]] = _no_depths()
        self._ready_rcpts: Counter[str] = Counter()  # ready messages per recipient
        self._totals: Counter[str] = Counter()
        self._fresh = FreshRows()
        try:
            self._conn = schema.connect(self.path, synchronous, busy_timeout_s)
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise TransientError(f"queue store {self.path} busy: {exc}") from exc
            raise
        self.resync()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions -----------------------------------------------------------------
    def _tx(self, single: bool = False) -> Transaction:
        return Transaction(self._conn, self._apply, single)

    def _apply(self, tx: Transaction) -> None:
        depth = self._depth
        for (state, rcpt, prio), n in tx.depth.items():
            if n:
                counts, key = depth[state], _depth_key(state, rcpt, prio)
                if total := counts[key] + n:
                    counts[key] = total
                else:
                    del counts[key]
                if state == READY:
                    if total := self._ready_rcpts[rcpt] + n:
                        self._ready_rcpts[rcpt] = total
                    else:
                        del self._ready_rcpts[rcpt]
        totals = self._totals
        for key, n in tx.totals.items():
            totals[key] += n

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Map "database is locked/busy" to TransientError."""
        try:
            yield self._conn
        except sqlite3.OperationalError as exc:
            schema.raise_busy(exc)
            raise

    # -- producer side ------------------------------------------------------------------
    def enqueue(self, items: Sequence[NewMessage | Mapping],
                lease: Mapping[str, tuple[str, int, float]] | None = None,
                admit: Callable[[str, str], str | None] | None = None) -> EnqueueResult:
        """Store a batch in one transaction.

        Duplicates: an id already in the queue (any state, incl. dead), acked within the
        ``acked_ids`` window, or repeated earlier in the same batch. Invalid items are
        reported in ``rejected`` as (index, reason) and do not abort the rest.

        ``lease`` maps a recipient to (owner, limit, visibility_s) of a consumer waiting for
        it: if that recipient has no ready message (none could be overtaken), up to ``limit``
        of its new messages available now are stored already leased to ``owner`` and
        returned in ``result.leased``: what ``lease()`` would return right after this commit,
        without its UPDATE and read-back (a third of the SQL work of a message).

        ``admit(sender, recipient)``, if given, is asked about each new (not duplicate) item
        in order, inside the transaction; a reason rejects that item (the agent throttle).
        """
        result = EnqueueResult(ids=[None] * len(items))
        now = self._clock()
        rows, supplied = schema.insert_rows(items, now, self._new_id, self.default_max_attempts,
                                            result.rejected)
        if len(self._ready_rcpts) + len(rows) > self.max_recipients:  # only near the cap
            rows = self._within_recipient_cap(rows, result.rejected)
        if not rows:
            self._totals["rejected"] += len(result.rejected)
            return result
        with self._tx(single=len(rows) == 1 and not supplied) as tx:  # then: one INSERT
            if supplied:  # generated ids are new by construction
                known = self._existing(supplied)
                fresh = []
                for i, row in rows:
                    mid = result.ids[i] = row[0]
                    if mid in known:
                        result.duplicates.append(mid)
                    else:
                        known.add(mid)
                        fresh.append((i, row))
            else:
                for i, row in rows:
                    result.ids[i] = row[0]
                fresh = rows
            if admit is not None:
                fresh = _admitted(fresh, admit, result)
            keep = [row for _, row in fresh]
            result.accepted = [row[0] for row in keep]
            leased = schema.pick_leased(keep, lease, self._busy(), now) if lease else []
            if leased:
                taken = {row[0] for row, _, _ in leased}
                keep = [row for row in keep if row[0] not in taken]
                self._conn.executemany(schema.INSERT_LEASED_SQL,
                                       [row + (owner, exp) for row, owner, exp in leased])
                tx.move([row for row, _, _ in leased], None, LEASED, _RCPT_PRIO_OF_ROW)
                result.leased = [schema.inserted_to_leased(row, row[8], 1, owner, exp)
                                 for row, owner, exp in leased]
            self._conn.executemany(schema.INSERT_SQL, keep)
            tx.move(keep, None, READY, _RCPT_PRIO_OF_ROW)
            tx.totals.update(enqueued=len(result.accepted), duplicates=len(result.duplicates),
                             rejected=len(result.rejected), leased=len(leased))
        self._fresh.add(keep)
        return result

    def _within_recipient_cap(self, rows: list[tuple[int, tuple]],
                              rejected: list[tuple[int, str]]) -> list[tuple[int, tuple]]:
        """The rows whose recipient has ready messages already or fits under
        ``max_recipients``; the others are rejected. Every delivery round, stats and health
        check walks the recipients with ready messages: a producer inventing a recipient per
        message (a bug) would make each of them take seconds."""
        room = self.max_recipients - len(self._ready_rcpts)
        keep, new = [], set()
        for i, row in rows:
            rcpt = row[1]
            if rcpt in self._ready_rcpts or rcpt in new:
                keep.append((i, row))
            elif room > 0:
                room -= 1
                new.add(rcpt)
                keep.append((i, row))
            else:
                rejected.append((i, f"{self.max_recipients} recipients have waiting messages"
                                    + " already (max_recipients); this would be one more"))
        return keep

    def _existing(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        sql = f"SELECT id FROM messages WHERE id IN {schema.IDS}"
        if self.remember_acked:
            sql += f" UNION ALL SELECT id FROM acked_ids WHERE id IN {schema.IDS}"
        for chunk, _ in schema.id_chunks(ids):
            found.update(r[0] for r in self._conn.execute(sql, {"ids": chunk}))
        return found

    # -- consumer side ------------------------------------------------------------------
    def lease(self, recipient: str, limit: int, owner: str, visibility_s: float,
              max_bytes: int | None = None) -> list[Leased]:
        """Lease up to ``limit`` ready messages of ``recipient`` available now, ordered by
        (priority, available_at, enqueue order); each lease counts one attempt. See
        :meth:`lease_each` for ``max_bytes``."""
        return self.lease_each([(recipient, limit)], owner, visibility_s, max_bytes)

    def lease_each(self, wants: Sequence[tuple[str, int]], owner: str, visibility_s: float,
                   max_bytes: int | None = None) -> list[Leased]:
        """Up to n messages of each (recipient, n), in that order, in ONE transaction; what one
        recipient cannot fill (fewer due now) goes to the others. With ``max_bytes``, no
        more than that many bytes as sent (:func:`model.wire_size`): the sizes are read before
        anything is leased, and leasing stops at the first message that does not fit, except
        a first message, which comes alone however large."""
        ready: dict[str, list[int]] = {}  # recipient -> priorities with ready rows
        for rcpt, prio in self._depth[READY]:
            ready.setdefault(rcpt, []).append(prio)
        work, asked = [], 0  # (recipient, how many in all up to it, its priorities)
        for rcpt, n in wants:
            asked += n
            if asked > 0 and rcpt in ready:
                work.append((rcpt, asked, sorted(ready[rcpt])))
        if not work:
            return []  # nothing ready where asked: no transaction at all
        now = self._clock()
        rows: list[tuple] = []  # rowid, id, recipient, priority, available_at, attempts
        params = {"owner": owner, "exp": now + visibility_s, "now": now}
        budget = max_bytes
        conn = self._conn
        with self._tx() as tx:
            # pass 1: each its share, and what one leaves goes to the next; pass 2 (only if
            # short, and several recipients): the rest from any (pass 1's rows are leased now)
            rest = [(rcpt, asked, prios) for rcpt, _, prios in work] if len(work) > 1 else []
            for recipient, want, prios in (*work, *rest):
                for prio in prios:
                    if len(rows) >= want or budget is not None and budget <= 0:
                        break
                    params.update(rcpt=recipient, prio=prio, lim=want - len(rows))
                    if budget is None:
                        got = conn.execute(LEASE_ONE_SQL, params).fetchall()
                    else:
                        pick = []
                        for rowid, size in conn.execute(READY_SIZED_SQL, params):
                            if size > budget and (rows or pick):
                                budget = 0
                                break
                            pick.append(rowid)
                            budget -= size
                        got = conn.execute(LEASE_ROWIDS_SQL, {
                            **params, "rowids": json.dumps(pick)}).fetchall() if pick else []
                    got.sort(key=_LEASE_ORDER)
                    rows += got
            out = schema.leased_messages(conn, self._fresh, rows, owner, params["exp"])
            tx.move(rows, READY, LEASED, _RCPT_PRIO_OF_LEASED)
            tx.totals["leased"] = len(out)
        return out

    def ack(self, ids: Sequence[str], owner: str | None = None) -> int:
        """Delete leased messages (of ``owner`` if given); unknown/already acked/not leased
        ids count 0. Returns the number acked."""
        now = self._clock()
        done = 0
        with self._tx() as tx:
            for chunk, count in schema.id_chunks(ids):
                rows = self._conn.execute(
                    f"DELETE FROM messages WHERE state = 1 AND id IN {schema.IDS} "
                    f"AND {schema.OWNER} RETURNING recipient, priority, id",
                    {"ids": chunk, "owner": owner}).fetchall()
                if self.remember_acked and rows:  # usually every id of the chunk: reuse it
                    acked = chunk if len(rows) == count else json.dumps(
                        [r[2] for r in rows])
                    self._conn.execute("INSERT OR REPLACE INTO acked_ids SELECT value, ? "
                                       "FROM json_each(?)", (now, acked))
                tx.move(rows, LEASED, None)
                done += len(rows)
            tx.totals["acked"] = done
        return done

    def nack(self, ids: Sequence[str], error: str, owner: str | None = None, *,
             retry: bool = True) -> NackResult:
        """Give leased messages back. Retry after ``min(max, base * 2**(attempts-1))`` s, or
        dead-letter them (with ``last_error``) when out of attempts or ``retry=False``."""
        now = self._clock()
        res = NackResult()
        with self._tx() as tx:
            for chunk, _ in schema.id_chunks(ids):
                rows = self._conn.execute(
                    "SELECT recipient, priority, id, attempts, max_attempts FROM messages "
                    f"WHERE state = 1 AND id IN {schema.IDS} AND {schema.OWNER}",
                    {"ids": chunk, "owner": owner}).fetchall()
                dead = [r for r in rows if not retry or r[3] >= r[4]]
                again = [r for r in rows if retry and r[3] < r[4]]
                self._conn.executemany(
                    "UPDATE messages SET state = 0, available_at = ?, last_error = ?, "
                    "lease_owner = NULL, lease_expires_at = NULL WHERE id = ?",
                    [(now + self.backoff(r[3]), error, r[2]) for r in again])
                self._conn.executemany(
                    "UPDATE messages SET state = 2, dead_at = ?, last_error = ?, "
                    "lease_owner = NULL, lease_expires_at = NULL WHERE id = ?",
                    [(now, error, r[2]) for r in dead])
                tx.move(again, LEASED, READY)
                tx.move(dead, LEASED, DEAD)
                res.retried += [r[2] for r in again]
                res.dead += [r[2] for r in dead]
            tx.totals.update(nacked=res.count, retried=len(res.retried), dead=len(res.dead))
        return res

    def backoff(self, attempts: int) -> float:
        """Delay before the retry that follows attempt number ``attempts`` (1-based)."""
        return min(self.backoff_max_s, self.backoff_base_s * 2.0 ** min(max(attempts - 1, 0), 64))

    def expire_leases(self) -> int:
        """Leases past ``lease_expires_at`` become ready again at their old queue position
        (attempt already counted), or dead with "lease expired" if it was the last attempt.
        Uses ``ix_leased``; no query at all while nothing is leased. Returns the count."""
        if not self._depth[LEASED]:
            return 0
        return self._end_leases("lease_expires_at < :now", {}, "lease expired")

    def release_leases(self, owner: str) -> int:
        """Every lease of ``owner`` ends now, as if it had expired (see :meth:`expire_leases`):
        for a consumer known to be gone, e.g. the previous incarnation of the queue's own
        inbox sink after a crash. Returns the count."""
        return self._end_leases("lease_owner = :owner", {"owner": owner}, "lease released")

    def _end_leases(self, where: str, params: dict, why: str) -> int:
        clear = "lease_owner = NULL, lease_expires_at = NULL, last_error = :why"
        params = {**params, "now": self._clock(), "why": why}
        with self._tx() as tx:
            dead = self._conn.execute(
                f"UPDATE messages SET state = 2, dead_at = :now, {clear} WHERE state = 1 AND "
                f"{where} AND attempts >= max_attempts RETURNING recipient, priority",
                params).fetchall()
            ready = self._conn.execute(
                f"UPDATE messages SET state = 0, {clear} WHERE state = 1 AND {where} "
                "RETURNING recipient, priority", params).fetchall()
            tx.move(dead, LEASED, DEAD)
            tx.move(ready, LEASED, READY)
            tx.totals.update(expired=len(dead) + len(ready), dead=len(dead))
        return len(dead) + len(ready)

    # -- operator side ------------------------------------------------------------------
    def dead_letters(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Dead messages, oldest death first."""
        with self._read() as conn:
            rows = conn.execute(f"SELECT {schema.COLS} FROM messages WHERE state = 2 "
                                "ORDER BY dead_at, id LIMIT ? OFFSET ?", (limit, offset))
            return [schema.row_to_message(r) for r in rows]

    def requeue(self, ids: Sequence[str] | None = None) -> int:
        """Dead letters (``ids``, or all if None) -> ready now with attempts reset to 0. All of
        them go in transactions of BULK_ROWS (see :meth:`purge`)."""
        now = self._clock()
        sql = ("UPDATE messages SET state = 0, attempts = 0, available_at = :now, dead_at = NULL"
               " WHERE {} RETURNING recipient, priority")
        if ids is None:
            return self._in_bulk(sql.format("rowid IN (SELECT rowid FROM messages WHERE state = 2 "
                                            "LIMIT :lim)"), {"now": now}, DEAD, READY, "requeued")
        n = 0
        with self._tx() as tx:
            for chunk, _ in schema.id_chunks(ids):
                rows = self._conn.execute(sql.format(f"state = 2 AND id IN {schema.IDS}"),
                                          {"now": now, "ids": chunk}).fetchall()
                tx.move(rows, DEAD, READY)
                n += len(rows)
            tx.totals["requeued"] = n
        return n

    def _in_bulk(self, sql: str, params: dict, old: int, new: int | None, total: str) -> int:
        """Run ``sql`` (changing at most ``:lim`` rows of state ``old``, RETURNING recipient,
        priority) in one transaction per BULK_ROWS until fewer change. Returns the count."""
        n = 0
        while True:
            with self._tx() as tx:
                rows = self._conn.execute(sql, {**params, "lim": BULK_ROWS}).fetchall()
                tx.move(rows, old, new)
                tx.totals[total] = len(rows)
            n += len(rows)
            if len(rows) < BULK_ROWS:
                return n

    def purge(self, state: str = "dead", recipient: str | None = None) -> int:
        """Delete messages in ``state`` ("dead", "ready", "leased" or "all"), optionally
        only those of ``recipient``. Purged ids are not remembered for dedup. One transaction
        per BULK_ROWS: a purge of millions holds the actor for seconds, and if it is killed
        for that (a missed health ping), what was deleted stays deleted and a second purge
        finishes; one transaction would roll back every time."""
        if state not in _PURGE_STATES:
            raise ValueError(f"purge state must be one of {sorted(_PURGE_STATES)}, not {state!r}")
        if READY in _PURGE_STATES[state]:
            self._fresh.clear()
        return sum(self._in_bulk(
            f"DELETE FROM messages WHERE rowid IN (SELECT rowid FROM messages WHERE state = "
            f"{int(st)} AND (:rcpt IS NULL OR recipient = :rcpt) LIMIT :lim) "
            "RETURNING recipient, priority", {"rcpt": recipient}, st, None, "purged")
            for st in _PURGE_STATES[state])

    def probe_write(self, min_free_bytes: int = 0) -> None:
        """One write transaction that changes nothing (it rewrites the schema version): raises
        the storage error if the database cannot be written now (read-only, disk full, I/O).
        With ``min_free_bytes``, first ``OSError(ENOSPC)`` if the file system holding the
        database has less free space than that: SQLite can still fit a small write into
        space its files hold already when the disk is full, so the write alone may pass."""
        if min_free_bytes > 0:
            where = os.path.dirname(os.path.abspath(self.path))
            free = free_bytes(where)
            if free < min_free_bytes:
                raise OSError(errno.ENOSPC, f"only {free / 2**20:.2f} MiB free, the "
                              f"queue needs {min_free_bytes / 2**20:g} MiB", where)
        with self._tx(single=True):
            self._conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION}")

    def purge_acked(self, older_than_s: float, limit: int = PURGE_LIMIT) -> int:
        """Forget up to ``limit`` acked ids older than ``older_than_s`` (ends their dedup
        window), oldest first via ``ix_acked_at``. Returns the count (``limit``: call again)."""
        with self._tx():
            return self._conn.execute(
                "DELETE FROM acked_ids WHERE id IN (SELECT id FROM acked_ids WHERE acked_at < ? "
                "ORDER BY acked_at LIMIT ?)", (self._clock() - older_than_s, limit)).rowcount

    def purge_dead(self, older_than_s: float, limit: int = PURGE_LIMIT) -> int:
        """Delete up to ``limit`` dead letters that died more than ``older_than_s`` ago (their
        retention), oldest first via ``ix_dead``. Returns the count (``limit``: call again)."""
        with self._tx() as tx:
            rows = self._conn.execute(
                "DELETE FROM messages WHERE rowid IN (SELECT rowid FROM messages WHERE "
                "state = 2 AND dead_at < ? ORDER BY dead_at LIMIT ?) "
                "RETURNING recipient, priority", (self._clock() - older_than_s, limit)).fetchall()
            tx.move(rows, DEAD, None)
            tx.totals.update(dead_expired=len(rows))
        return len(rows)

    def get(self, msg_id: str) -> Message | None:
        """One message by id in any state (None if absent or acked)."""
        with self._read() as conn:
            row = conn.execute(f"SELECT {schema.COLS} FROM messages WHERE id = ?",
                               (msg_id,)).fetchone()
        return schema.row_to_message(row) if row else None

    # -- introspection ------------------------------------------------------------------
    def ready_counts(self) -> dict[str, int]:
        """Ready messages per recipient (delayed ones included), by recipient name."""
        return dict(sorted(self._ready_rcpts.items()))

    def _busy(self) -> set[str]:
        return set(self._ready_rcpts)

    def next_available_at(self) -> float | None:
        """Earliest ``available_at`` of any ready message (to schedule a wake-up), or None:
        one indexed MIN per (recipient, priority) that has ready messages, or one scan of the
        ready index when there are many."""
        with self._read() as conn:
            if len(self._depth[READY]) > MIN_BY_PAIR_MAX:  # one scan of ix_ready instead
                return conn.execute("SELECT MIN(available_at) FROM messages WHERE state = 0"
                                    ).fetchone()[0]
            sql = ("SELECT MIN(available_at) FROM messages WHERE state = 0 AND recipient = ? "
                   "AND priority = ?")
            times = [conn.execute(sql, key).fetchone()[0] for key in self._depth[READY]]
        return min((t for t in times if t is not None), default=None)

    def next_lease_expiry(self) -> float | None:
        """Earliest ``lease_expires_at`` of a leased message (to schedule expiry), or None."""
        with self._read() as conn:
            return conn.execute(
                "SELECT MIN(lease_expires_at) FROM messages WHERE state = 1").fetchone()[0]

    def totals(self) -> dict[str, int]:
        """Operation counters since open (enqueued, duplicates, ..., purged); no query."""
        return {k: self._totals[k] for k in _TOTALS}

    def stats(self) -> dict:
        """Depths from the in-memory counters plus one indexed MIN() per (recipient, priority)
        with ready messages; no table scan."""
        by_state = {s.label: 0 for s in State}
        by_prio = {s.label: {p.label: 0 for p in Priority} for s in State}
        for state, counts in self._depth.items():
            for (_, prio), n in counts.items():
                by_state[State(state).label] += n
                by_prio[State(state).label][Priority(prio).label] += n
        nxt = self.next_available_at()
        now = self._clock()
        return {
            "depth": {**by_state, "total": sum(by_state.values())},
            "by_priority": by_prio,
            "ready_by_recipient": self.ready_counts(),
            "oldest_ready_age_s": max(now - nxt, 0.0) if nxt is not None else 0.0,
            "totals": self.totals(),
        }

    def _count_rows(self) -> dict[int, Counter[tuple[str, int]]]:
        depth = _no_depths()
        with self._read() as conn:
            for s, r, p, n in conn.execute(
                    "SELECT state, recipient, priority, COUNT(*) FROM messages GROUP BY 1, 2, 3"):
                depth[s][_depth_key(s, r, p)] += n
        return depth

    def resync(self) -> None:
        """Reload the depth counters with a full COUNT (done at open; needed only if another
        process wrote to the database)."""
        self._depth = self._count_rows()
        self._ready_rcpts = Counter()
        for (rcpt, _), n in self._depth[READY].items():
            self._ready_rcpts[rcpt] += n
        self._fresh.clear()

    def recount(self) -> dict[tuple[str, str, str], int]:
        """Exact depths by COUNT(*), keyed (state, recipient, priority) as the in-memory
        counters keep them (dead letters under recipient "*") (diagnostics)."""
        return self._labelled(self._count_rows())

    def counted(self) -> dict[tuple[str, str, str], int]:
        """The in-memory counters in the shape of :meth:`recount`."""
        return self._labelled(self._depth)

    @staticmethod
    def _labelled(depth: dict[int, Counter[tuple[str, int]]]) -> dict[tuple[str, str, str], int]:
        return {(State(s).label, r, Priority(p).label): n
                for s, counts in depth.items() for (r, p), n in counts.items() if n}
