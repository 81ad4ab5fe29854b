"""Swarm brain search over 100,000 entries: FTS5 (bm25, snippets) against a LIKE scan of the
same rows in the same SQLite file, in the same run.

Entries are generated sentences over a 2,000-word vocabulary; queries are one or two words
drawn from it. The peer (``LIKE '%word%'`` on title and content, the plain SQL way to search)
answers the same queries; the ratio is its median over the brain's. Add throughput:
``Brain.add`` (one transaction per entry, FTS index kept by trigger) into the 100k-entry table,
entries/s.

    python -m bench.brain [--json] [--quick]
"""
from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from actors.gas.brain import Brain
from bench.common import emit, median_ms, p95_ms, parser


def run(entries: int, queries: int, adds: int) -> dict:
    rng = random.Random(1)
    vocab = [f"w{i:04d}{chr(97 + i % 26)}" for i in range(2000)]
    with tempfile.TemporaryDirectory(prefix="swarm-bench-brain-") as tmp:
        brain = Brain(str(Path(tmp) / "brain.db"))
        t0 = time.perf_counter()
        with brain.db:  # one transaction for the fill; add() is one transaction per entry
            for _ in range(entries):
                brain.db.execute(
                    "INSERT INTO entries (title, content, author, category, tags, created_at) "
                    "VALUES (?, ?, 'bench', 'learning', '', 0)",
                    (" ".join(rng.choices(vocab, k=5)), " ".join(rng.choices(vocab, k=40))))
        fill_s = time.perf_counter() - t0
        terms = [" ".join(rng.choices(vocab, k=rng.choice((1, 2)))) for _ in range(queries)]
        fts, like, hits = [], [], 0
        for query in terms:
            t = time.perf_counter()
            hits += len(brain.search(query, limit=10))
            fts.append(time.perf_counter() - t)
            words = query.split()
            t = time.perf_counter()
            brain.db.execute("SELECT id, title FROM entries WHERE " + " AND ".join(
                ["(title LIKE ? OR content LIKE ?)"] * len(words)) + " LIMIT 10",
                [p for w in words for p in (f"%{w}%", f"%{w}%")]).fetchall()
            like.append(time.perf_counter() - t)
        t0 = time.perf_counter()
        for i in range(adds):
            brain.add(" ".join(rng.choices(vocab, k=5)), " ".join(rng.choices(vocab, k=40)),
                      category="learning", tags=["bench", f"t{i % 7}"], author="bench")
        add_s = time.perf_counter() - t0
        brain.close()
    return {"entries": entries, "queries": queries, "fill_s": round(fill_s, 2),
            "adds": adds, "add_per_s": round(adds / add_s),
            "fts_median_ms": median_ms(fts), "fts_p95_ms": p95_ms(fts),
            "like_median_ms": median_ms(like), "like_p95_ms": p95_ms(like),
            "speedup_median": round(median_ms(like) / median_ms(fts), 1),
            "mean_hits": round(hits / queries, 1)}


def main() -> None:
    args = parser(__doc__).parse_args()
    r = run(100_000, 50 if args.quick else 200, 1_000 if args.quick else 5_000)
    emit(args, r, [
        ("entries / queries", f"{r['entries']} / {r['queries']}"),
        ("brain search (FTS5, ranked, snippets)", (f"median {r['fts_median_ms']} ms, "
                                                    f"p95 {r['fts_p95_ms']} ms")),
        ("peer: LIKE scan of the same rows", (f"median {r['like_median_ms']} ms, "
                                              f"p95 {r['like_p95_ms']} ms")),
        ("brain vs LIKE (median)", f"{r['speedup_median']}x faster"),
        ("brain add (one transaction each)", f"{r['add_per_s']} entries/s over {r['adds']}"),
    ])


if __name__ == "__main__":
    main()
