"""Quotes for ``!quote``: the packaged file plus quotes moderators add, in SQLite.

    >>> import pathlib, tempfile
    >>> book = QuoteBook(pathlib.Path(tempfile.mkdtemp()) / "quotes.db")
    >>> n = book.add("Relays beat sprints.", by="twitch:alice")
    >>> book.get(n).text
    'Relays beat sprints.'
    >>> first, second = book.next(), book.next()
    >>> first.n != second.n
    True
    >>> book.remove(n, by="twitch:bob").n == n and book.get(n) is None
    True
    >>> book.close()

Numbers are stable: packaged quotes are numbered once, in file order, when first seen
(lines later removed from the file are hidden, lines added get the next numbers); a removed
quote is hidden, never renumbered. ``next`` deals from a shuffle bag kept in the database:
every visible quote once per round, no quote twice in a row (also across rounds), and a
restart continues the round. A quote added mid-round joins the rest of the round.

``extra`` is an optional source of more quote texts (the swarm brain's entries), read at
the start of each round; its new texts are stored and numbered like added ones.

Every method is blocking SQLite I/O (short transactions): call it from a worker thread
(``asyncio.to_thread``) in an actor; the book is safe to share between threads.
"""
from __future__ import annotations

import importlib.resources
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

MAX_QUOTE_LENGTH = 400
PACKAGED_QUOTES = importlib.resources.files("config") / "quotes.txt"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS quotes (
    n INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    source TEXT NOT NULL,          -- packaged | added | extra
    added_by TEXT,
    added_at REAL NOT NULL,
    hidden_by TEXT,                -- a principal, or "package" when the file dropped it
    hidden_at REAL
);
CREATE INDEX IF NOT EXISTS quotes_text ON quotes (text);
CREATE TABLE IF NOT EXISTS bag (n INTEGER PRIMARY KEY, draw REAL NOT NULL);
CREATE INDEX IF NOT EXISTS bag_draw ON bag (draw);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Quote(NamedTuple):
    """One quote."""

    n: int                  # its number (``!quote N``)
    text: str
    source: str             # packaged | added | extra
    added_by: str | None    # the principal who added it (None for packaged ones)


def check_quote(text: str) -> str:
    """``text`` with whitespace collapsed if it can be a quote, else ValueError (why not)."""
    text = " ".join(str(text).split())
    if not text:
        raise ValueError("a quote needs some text")
    if len(text) > MAX_QUOTE_LENGTH:
        raise ValueError(f"a quote is at most {MAX_QUOTE_LENGTH} characters, not {len(text)}")
    if not text.isprintable():
        raise ValueError("a quote cannot contain control characters")
    return text


class QuoteBook:
    """The quotes in ``db_path`` (created if missing), synchronized with ``packaged_path``
    (a UTF-8 file, one quote per line; blank lines are skipped). ``rng`` is for tests."""

    def __init__(self, db_path: str | Path, packaged_path: str | Path | None = None, *,
                 extra: Callable[[], Iterable[str]] | None = None,
                 rng: random.Random | None = None):
        self.extra = extra
        self.extra_error: str | None = None  # why the last read of ``extra`` failed
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(db_path), isolation_level=None, check_same_thread=False)
        self._db.executescript(_SCHEMA)
        packaged = (Path(packaged_path) if packaged_path is not None else PACKAGED_QUOTES)
        self._sync_packaged(packaged.read_text(encoding="utf-8").splitlines())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def count(self) -> int:
        """How many quotes can be drawn (visible ones)."""
        with self._lock:
            return self._db.execute(
                "SELECT count(*) FROM quotes WHERE hidden_at IS NULL").fetchone()[0]

    def get(self, n: int) -> Quote | None:
        """Quote number ``n``, None if there is none or it was removed."""
        with self._lock:
            row = self._db.execute("SELECT n, text, source, added_by FROM quotes "
                                   "WHERE n = ? AND hidden_at IS NULL", (int(n),)).fetchone()
        return Quote(*row) if row else None

    def next(self) -> Quote | None:
        """The next quote of the shuffle bag (None if there are no quotes)."""
        if self.extra is not None and self._bag_empty():
            self._store_extra()  # outside the lock: the source may be slow
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM bag WHERE n IN "
                             "(SELECT n FROM quotes WHERE hidden_at IS NOT NULL)")
            if not self._db.execute("SELECT 1 FROM bag LIMIT 1").fetchone():
                self._refill()
            row = self._db.execute("SELECT q.n, q.text, q.source, q.added_by FROM bag "
                                   "JOIN quotes q USING (n) ORDER BY draw LIMIT 1").fetchone()
            if row is None:
                return None
            self._db.execute("DELETE FROM bag WHERE n = ?", (row[0],))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('last', ?)", (str(row[0]),))
        return Quote(*row)

    def add(self, text: str, by: str) -> int:
        """Store a new quote; its number. ValueError if invalid or already a quote."""
        text = check_quote(text)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            existing = self._visible_number(text)
            if existing is not None:
                raise ValueError(f"that is already quote #{existing}")
            n = self._insert(text, "added", by)
            remaining = self._db.execute("SELECT min(draw) FROM bag").fetchone()[0]
            if remaining is not None:  # mid-round: deal it into the rest of this round
                self._db.execute("INSERT INTO bag VALUES (?, ?)",
                                 (n, self._rng.uniform(remaining, 1.0)))
        return n

    def remove(self, n: int, by: str) -> Quote:
        """Hide quote ``n`` (its number is not reused); LookupError if there is none."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT n, text, source, added_by FROM quotes "
                                   "WHERE n = ? AND hidden_at IS NULL", (int(n),)).fetchone()
            if row is None:
                raise LookupError(f"there is no quote #{n}")
            self._db.execute("UPDATE quotes SET hidden_by = ?, hidden_at = ? WHERE n = ?",
                             (by, time.time(), row[0]))
            self._db.execute("DELETE FROM bag WHERE n = ?", (row[0],))
        return Quote(*row)

    # -- internals ---------------------------------------------------------------------------
    def _sync_packaged(self, lines: list[str]) -> None:
        texts = []
        for line in lines:
            if line.strip():
                texts.append(check_quote(line))
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            known = dict(self._db.execute(
                "SELECT text, hidden_by FROM quotes WHERE source = 'packaged'").fetchall())
            for text in dict.fromkeys(texts):
                if text not in known:
                    self._insert(text, "packaged", None)
                elif known[text] == "package":  # back in the file
                    self._db.execute("UPDATE quotes SET hidden_by = NULL, hidden_at = NULL "
                                     "WHERE source = 'packaged' AND text = ?", (text,))
            for text in set(known) - set(texts):
                self._db.execute(
                    "UPDATE quotes SET hidden_by = 'package', hidden_at = ? WHERE source = "
                    "'packaged' AND text = ? AND hidden_at IS NULL", (time.time(), text))

    def _store_extra(self) -> None:
        try:
            texts = list(self.extra())
        except Exception as exc:  # noqa: BLE001 - a failing brain must not break !quote
            self.extra_error = f"{type(exc).__name__}: {exc}"
            return
        self.extra_error = None
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for raw in texts:
                try:
                    text = check_quote(raw)
                except ValueError:
                    continue  # a long brain entry is not a chat quote
                if not self._db.execute("SELECT 1 FROM quotes WHERE text = ?",
                                        (text,)).fetchone():
                    self._insert(text, "extra", None)

    def _bag_empty(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM bag LIMIT 1").fetchone() is None

    def _refill(self) -> None:
        numbers = [n for (n,) in self._db.execute(
            "SELECT n FROM quotes WHERE hidden_at IS NULL")]
        draws = sorted(self._rng.random() for _ in numbers)
        self._rng.shuffle(numbers)
        last = self._db.execute("SELECT value FROM meta WHERE key = 'last'").fetchone()
        if len(numbers) > 1 and last and numbers[0] == int(last[0]):
            numbers[0], numbers[1] = numbers[1], numbers[0]  # no repeat across rounds
        self._db.executemany("INSERT INTO bag VALUES (?, ?)", zip(numbers, draws))

    def _visible_number(self, text: str) -> int | None:
        row = self._db.execute("SELECT n FROM quotes WHERE text = ? AND hidden_at IS NULL",
                               (text,)).fetchone()
        return row[0] if row else None

    def _insert(self, text: str, source: str, by: str | None) -> int:
        return self._db.execute(
            "INSERT INTO quotes (text, source, added_by, added_at) VALUES (?, ?, ?, ?)",
            (text, source, by, time.time())).lastrowid
