"""The queue's CLI commands without the I/O: building items, reading ``send --file`` lines,
merging batch replies into one report, and human rendering of stats and dead letters.

    >>> items, bad = parse_jsonl(['{"recipient": "Agent-1", "text": "hi", "id": "m1"}', 'nope'])
    >>> [(n, i["id"]) for n, i in items], bad
    ([(1, 'm1')], [(2, 'invalid JSON: Expecting value')])
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

import msgpack

from actors.queue.inbox import _jsonable
from actors.queue.model import IdGenerator

CLI_SENDER = "cli"
_new_id = IdGenerator(time.time)


def text_item(recipient: str, text: str, *, priority: str | None = None,
              type: str | None = None, id: str | None = None,
              sender: str | None = None) -> dict:
    """One ``swarm send`` item. The CLI assigns the id when none is given, so that a retried
    admin call is deduplicated instead of enqueued twice."""
    item = {"recipient": recipient, "payload": msgpack.packb({"text": text}),
            "id": id or _new_id(), "sender": sender or CLI_SENDER}
    if priority is not None:
        item["priority"] = priority
    if type is not None:
        item["type"] = type
    return item


def parse_jsonl(lines: Iterable[str]) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
    """``send --file`` lines -> ([(line number, item)], [(line number, reason)]).

    One JSON object per line: recipient, text or payload (any JSON value, sent as msgpack),
    priority, type, id, sender, headers, delay_s, max_attempts. Blank lines are skipped; other
    fields are left for the queue to reject."""
    items, rejected = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            rejected.append((number, f"invalid JSON: {getattr(exc, 'msg', exc)}"))
            continue
        if not isinstance(obj, dict):
            rejected.append((number, "not a JSON object"))
            continue
        if "text" in obj and "payload" in obj:
            rejected.append((number, "give text or payload, not both"))
            continue
        if "text" in obj:
            if not isinstance(obj["text"], str):
                rejected.append((number, "text must be a string"))
                continue
            obj["payload"] = {"text": obj.pop("text")}
        if "payload" in obj:
            obj["payload"] = msgpack.packb(obj["payload"])
        obj.setdefault("id", _new_id())
        obj.setdefault("sender", CLI_SENDER)
        items.append((number, obj))
    return items, rejected


def send_batches(call: Callable[[list[dict]], dict], items: list[tuple[int, dict]],
                 rejected: list[tuple[int, str]], batch_max: int) -> dict:
    """Send items in batches of ``batch_max`` and merge the replies into one report."""
    report = {"accepted": 0, "duplicates": 0, "rejected": 0, "ids": [],
              "duplicate_lines": [], "rejected_lines": [{"line": n, "reason": r}
                                                        for n, r in rejected]}
    for start in range(0, len(items), batch_max):
        chunk = items[start:start + batch_max]
        reply = call([item for _, item in chunk])
        accepted, dups = set(reply["accepted"]), list(reply["duplicates"])
        for index, reason in reply["rejected"]:
            report["rejected_lines"].append({"line": chunk[index][0], "reason": reason})
        for (number, _), mid in zip(chunk, reply["ids"], strict=True):
            if mid is None:
                continue
            if mid in accepted:
                accepted.discard(mid)
                report["ids"].append(mid)
            elif mid in dups:
                dups.remove(mid)
                report["duplicate_lines"].append({"line": number, "id": mid})
    report["rejected_lines"].sort(key=lambda r: r["line"])
    report["accepted"] = len(report["ids"])
    report["duplicates"] = len(report["duplicate_lines"])
    report["rejected"] = len(report["rejected_lines"])
    return report


def print_send_report(report: dict) -> None:
    print(f"accepted {report['accepted']}, duplicates {report['duplicates']}, "
          f"rejected {report['rejected']}")
    for dup in report["duplicate_lines"]:
        print(f"line {dup['line']}: duplicate {dup['id']}")
    for bad in report["rejected_lines"]:
        print(f"line {bad['line']}: rejected: {bad['reason']}")


def decode_payloads(messages: list[dict]) -> list[dict]:
    """Messages with their msgpack payload decoded for JSON output."""
    out = []
    for m in messages:
        m = dict(m)
        try:
            m["payload"] = _jsonable(msgpack.unpackb(m["payload"], raw=False))
        except Exception:  # noqa: BLE001 - show undecodable payloads as raw bytes
            m["payload"] = _jsonable(m["payload"])
        out.append(m)
    return out


def _num(value, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def print_stats(s: dict) -> None:
    d, prio = s["depth"], s["by_priority"]
    print(f"health:   {s['health']['status']}  {s['health']['detail']}")
    print(f"depth:    ready {d['ready']}, leased {d['leased']}, dead {d['dead']}, "
          f"total {d['total']}")
    for state in ("ready", "leased", "dead"):
        print(f"  {state:<7} " + ", ".join(f"{p} {n}" for p, n in prio[state].items()))
    print(f"oldest ready: {s['oldest_ready_age_s']:.1f}s")
    print("rates/s (last minute): " + ", ".join(f"{k} {v:g}" for k, v in s["rates"].items()))
    lat = s["latency_ms"]
    print(f"latency enqueue->ack: p50 {_num(lat['p50'], ' ms')}, p95 {_num(lat['p95'], ' ms')}, "
          f"p99 {_num(lat['p99'], ' ms')} ({lat['samples']} samples)")
    flight = ", ".join(f"{o} {n}" for o, n in s["in_flight"].items()) or "none"
    print(f"in flight: {flight}")
    for sub in s["subscriptions"]:
        print(f"  subscription {sub['sub']} {sub['recipient'] or 'topic ' + sub['topic']} "
              f"-> {sub['addr']}: {sub['in_flight']}/{sub['max_in_flight']}")
    inbox = s["inbox"]
    if inbox["enabled"]:
        print(f"inbox:    delivered {inbox['delivered']}, failed {inbox['failed']}")
    if s["ready_by_recipient"]:
        print("ready by recipient: " + ", ".join(
            f"{r} {n}" for r, n in s["ready_by_recipient"].items()))


def print_dlq(reply: dict) -> None:
    msgs = reply["messages"]
    if not msgs:
        print("no dead letters")
        return
    print(f"{'ID':<28} {'RECIPIENT':<16} {'TRIES':>5}  {'DIED':<19}  ERROR")
    for m in msgs:
        died = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.get("dead_at") or 0))
        print(f"{m['id']:<28} {m['recipient']:<16} {m['attempts']:>5}  {died:<19}  "
              f"{(m.get('last_error') or '')[:80]}")
    offset, total = reply.get("offset", 0), reply.get("total", len(msgs))
    if total > offset + len(msgs):
        print(f"({len(msgs)} of {total} shown from {offset}; more: --offset {offset + len(msgs)})")
