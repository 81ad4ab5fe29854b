"""The swarm brain: a knowledge store in SQLite (``data_dir/brain.db``) with ranked full-text
search (FTS5, bm25, title weighted), snippets, and the recent learnings the "ready" gas carries.

    >>> b = Brain(":memory:")
    >>> b.add("Flaky build", "The build fails when the cache is cold; warm it first.",
    ...       category="learning", tags=["ci"], author="Agent-1")
    1
    >>> [(r["id"], r["title"]) for r in b.search("cache")]
    [(1, 'Flaky build')]

``export_markdown`` renders entries as the per-category Markdown files the replaced store kept
(``learning.md``, ...), for ``swarm brain export DIR``.

Ids are the table's integer keys (no collisions); every write is one transaction (the
replaced store rewrote a file without a lock). User text never reaches FTS5's query syntax:
each word becomes a quoted term (the last one a prefix), so ``"``, ``*``, ``AND``, ``NEAR(``
are searched for, never a syntax error.
"""
from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterable

CATEGORIES = ("learning", "decision", "howto", "incident", "note", "quote")  # quote: !quote
MAX_TITLE, MAX_CONTENT, MAX_TAGS = 200, 20_000, 20
_WORD = re.compile(r"\w+", re.UNICODE)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY, title TEXT NOT NULL, content TEXT NOT NULL, author TEXT NOT NULL,
    category TEXT NOT NULL, tags TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ix_entries_category ON entries (category, id);
CREATE VIRTUAL TABLE IF NOT EXISTS entries_fts USING fts5(
    title, content, tags, content='entries', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS entries_ai AFTER INSERT ON entries BEGIN
    INSERT INTO entries_fts(rowid, title, content, tags)
    VALUES (new.id, new.title, new.content, new.tags);
END;
"""


def fts_query(text: str) -> str:
    """User text as a safe FTS5 query: quoted words, all required, the last one a prefix.

    >>> fts_query('NEAR( "flaky" build*')
    '"near" "flaky" "build"*'
    """
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        raise ValueError("the search needs at least one word")
    return " ".join(f'"{w}"' for w in words) + "*"


class Brain:
    def __init__(self, path: str):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def add(self, title: str, content: str, *, category: str = "learning",
            tags: list[str] | tuple[str, ...] = (), author: str = "unknown") -> int:
        title, content = str(title).strip(), str(content).strip()
        if not title or not content:
            raise ValueError("an entry needs a title and some text")
        if len(title) > MAX_TITLE or len(content) > MAX_CONTENT:
            raise ValueError(f"title at most {MAX_TITLE} and text at most {MAX_CONTENT} "
                             "characters")
        if category not in CATEGORIES:
            raise ValueError(f"category must be one of {', '.join(CATEGORIES)}")
        tags = sorted({t.strip().lower() for t in tags if t.strip()})
        if len(tags) > MAX_TAGS or any(len(t) > 40 for t in tags):
            raise ValueError(f"at most {MAX_TAGS} tags of at most 40 characters")
        with self.db:
            cur = self.db.execute(
                "INSERT INTO entries (title, content, author, category, tags, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", (title, content, str(author)[:200], category,
                                              " ".join(tags), time.time()))
        return cur.lastrowid

    def get(self, entry_id: int) -> dict | None:
        row = self.db.execute("SELECT * FROM entries WHERE id = ?", (entry_id,)).fetchone()
        return _entry(row) if row else None

    def list(self, category: str | None = None, limit: int = 20, offset: int = 0) -> list[dict]:
        where, args = ("WHERE category = ?", [category]) if category else ("", [])
        return [_entry(r) for r in self.db.execute(
            f"SELECT * FROM entries {where} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*args, limit, offset])]

    def search(self, query: str, category: str | None = None, limit: int = 10) -> list[dict]:
        sql = ("SELECT e.*, bm25(entries_fts, 5.0, 1.0, 2.0) AS score, "
               "snippet(entries_fts, 1, '**', '**', '…', 12) AS snippet "
               "FROM entries_fts JOIN entries e ON e.id = entries_fts.rowid "
               "WHERE entries_fts MATCH ?" + (" AND e.category = ?" if category else "")
               + " ORDER BY score LIMIT ?")
        args = [fts_query(query), *([category] if category else []), limit]
        return [{**{k: v for k, v in _entry(r).items() if k != "content"},
                 "score": round(-r["score"], 3), "snippet": r["snippet"]}
                for r in self.db.execute(sql, args)]

    def latest(self, category: str = "learning", limit: int = 3) -> list[dict]:
        return self.list(category, limit)

    def learnings_for(self, task: str | None, limit: int = 3) -> list[dict]:
        """The learnings a "get ready" gas carries: those most relevant to ``task`` (any of its
        words, ranked), topped up with the most recent ones."""
        words = _WORD.findall(task or "")
        found: list[dict] = []
        if words:
            found = [_entry(r) for r in self.db.execute(
                "SELECT e.* FROM entries_fts JOIN entries e ON e.id = entries_fts.rowid "
                "WHERE entries_fts MATCH ? AND e.category = 'learning' "
                "ORDER BY bm25(entries_fts, 5.0, 1.0, 2.0) LIMIT ?",
                (" OR ".join(f'"{w.lower()}"' for w in words[:20]), limit))]
        seen = {e["id"] for e in found}
        return found + [e for e in self.latest("learning", limit)
                        if e["id"] not in seen][:limit - len(found)]


def _entry(row: sqlite3.Row) -> dict:
    return {"id": row["id"], "title": row["title"], "content": row["content"],
            "author": row["author"], "category": row["category"],
            "tags": row["tags"].split() if row["tags"] else [], "created_at": row["created_at"]}


def export_markdown(entries: Iterable[dict]) -> dict[str, str]:
    """Entries as one Markdown file per category, ``{file name: text}``, oldest first: a
    heading per entry (``## #ID title``), its author, tags and time, then its text as written.

    >>> files = export_markdown([{"id": 2, "title": "Café ☕", "content": "Grind *fresh*.",
    ...     "author": "Agent-1", "category": "howto", "tags": ["coffee"], "created_at": 0}])
    >>> print(files["howto.md"])
    # Swarm brain: howto
    <BLANKLINE>
    ## #2 Café ☕
    <BLANKLINE>
    - author: Agent-1
    - tags: coffee
    - created: 1970-01-01 00:00:00 UTC
    <BLANKLINE>
    Grind *fresh*.
    <BLANKLINE>
    """
    files: dict[str, list[str]] = {}
    for e in sorted(entries, key=lambda e: e["id"]):
        title = " ".join(e["title"].split())  # a heading is one line
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(e["created_at"]))
        files.setdefault(e["category"], [f"# Swarm brain: {e['category']}\n"]).append(
            f"## #{e['id']} {title}\n\n- author: {e['author']}\n"
            f"- tags: {', '.join(e['tags']) or '-'}\n- created: {when}\n\n"
            f"{e['content'].strip()}\n")
    return {f"{category}.md": "\n".join(parts) for category, parts in files.items()}
