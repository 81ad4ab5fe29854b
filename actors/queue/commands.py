"""The queue's CLI commands without the I/O: building items, reading ``send --file`` lines,
merging batch replies into one report, and human rendering of stats and dead letters.

    >>> items, bad = parse_jsonl(['{"recipient": "Agent-1", "text": "hi", "id": "m1"}', 'nope'])
    >>> [(n, i["id"]) for n, i in items], bad
    ([(1, 'm1')], [(2, 'invalid JSON: Expecting value')])
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO

import msgpack

from actors.queue.inbox import _jsonable
from actors.queue.model import IdGenerator

CLI_SENDER = "cli"
# A send batch stops at this many bytes of items (and at batch_max items): a request must stay
# well under what the queue decodes (protocol.MAX_MESSAGE_BYTES), whatever the lines' sizes.
BATCH_BYTES = 8 << 20
_new_id = IdGenerator(time.time)


def text_item(recipient: str, text: str, *, priority: str | None = None,
              type: str | None = None, id: str | None = None,
              sender: str | None = None, headers: Sequence[str] = ()) -> dict:
    """One ``swarm send`` item. The CLI assigns the id when none is given, so that a retried
    admin call is deduplicated instead of enqueued twice. ``headers``: ``KEY=VALUE`` strings.
    ValueError names an argument that cannot be sent (empty, not ``KEY=VALUE``, or not valid
    UTF-8: bytes the shell passed through undecoded)."""
    if any("=" not in h or not h.partition("=")[0].strip() for h in headers):
        raise ValueError("--header takes KEY=VALUE with a non-empty KEY")
    pairs = dict(h.partition("=")[::2] for h in headers)
    for name, value in (("RECIPIENT", recipient), ("TEXT", text), ("--type", type),
                        ("--id", id), ("--sender", sender),
                        *(("--header", h) for h in headers)):
        if value is None:
            continue
        if name not in ("TEXT", "RECIPIENT") and not value.strip():
            raise ValueError(f"{name} must not be empty")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{name} is not valid UTF-8") from None
    item = {"recipient": recipient, "payload": msgpack.packb({"text": text}),
            "id": _new_id() if id is None else id, "sender": sender or CLI_SENDER}
    if priority is not None:
        item["priority"] = priority
    if type is not None:
        item["type"] = type
    if pairs:
        item["headers"] = pairs
    return item


def read_lines(handle: BinaryIO) -> Iterator[str | None]:
    """The lines of a ``send --file`` opened in binary: split at "\n" only (a CR inside a
    line is JSON whitespace, not a line break), CRLF and a leading UTF-8 BOM accepted; None
    for a line that is not valid UTF-8 (rejected by its number, never altered)."""
    for number, raw in enumerate(handle, 1):
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            yield raw.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            yield None


def parse_jsonl(lines: Iterable[str | None]) -> tuple[list[tuple[int, dict]],
                                                      list[tuple[int, str]]]:
    """``send --file`` lines -> ([(line number, item)], [(line number, reason)]).

    One JSON object per line: recipient, text or payload (any JSON value, sent as msgpack),
    priority, type, id, sender, headers, delay_s, max_attempts. Blank lines are skipped; other
    fields are left for the queue to reject, but a line that cannot be sent at all (not
    UTF-8, a number msgpack cannot hold, a lone surrogate) is rejected here, so that it cannot
    stop the lines after it."""
    items, rejected = [], []
    for number, line in enumerate(lines, 1):
        if line is None:
            rejected.append((number, "not valid UTF-8"))
            continue
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
        obj.setdefault("id", _new_id())
        obj.setdefault("sender", CLI_SENDER)
        try:
            if "payload" in obj:
                obj["payload"] = msgpack.packb(obj["payload"])
            size = len(msgpack.packb(obj))
        except (OverflowError, UnicodeError, ValueError, TypeError) as exc:
            rejected.append((number, f"cannot be sent: {exc}"))
            continue
        if size > BATCH_BYTES:  # no request could carry it (and no queue accepts it)
            rejected.append((number, f"{size} bytes: larger than any message may be"))
            continue
        items.append((number, obj))
    return items, rejected


def batches(items: list[tuple[int, dict]], batch_max: int,
            max_bytes: int = BATCH_BYTES) -> Iterator[list[tuple[int, dict]]]:
    """Consecutive runs of at most ``batch_max`` items and ``max_bytes`` of encoded items (an
    item alone is never larger: :func:`parse_jsonl` rejects those)."""
    chunk, size = [], 0
    for entry in items:
        n = len(msgpack.packb(entry[1]))
        if chunk and (len(chunk) >= batch_max or size + n > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += n
    if chunk:
        yield chunk


def send_batches(call: Callable[[list[dict]], dict], items: list[tuple[int, dict]],
                 rejected: list[tuple[int, str]], batch_max: int,
                 max_bytes: int = BATCH_BYTES) -> dict:
    """Send items in batches and merge the replies into one report. If a batch fails (the
    swarm went away, a timeout), sending stops there: ``unsent`` says from which line on and
    why; ``uncertain`` is set when that batch got no answer (a timeout), so it may have been
    queued: its lines and the ids they were sent with, to check with the queue's stats or
    to re-send as duplicates."""
    report = {"accepted": 0, "duplicates": 0, "rejected": 0, "ids": [],
              "duplicate_lines": [], "rejected_lines": [{"line": n, "reason": r}
                                                        for n, r in rejected],
              "unsent": None}
    chunks = list(batches(items, batch_max, max_bytes))
    for k, chunk in enumerate(chunks):
        try:
            reply = call([item for _, item in chunk])
        except Exception as exc:  # noqa: BLE001 - reported, with the lines it concerns
            lines = [n for c in chunks[k:] for n, _ in c]
            report["unsent"] = {"reason": str(exc), "first_line": lines[0], "lines": len(lines)}
            if getattr(exc, "code", None) == "timeout":
                report["unsent"]["uncertain"] = [{"line": n, "id": i.get("id")}
                                                 for n, i in chunk]
            break
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


def recipient_note(recipient: str, agents: Iterable[str]) -> str | None:
    """A warning when ``recipient`` is not an agent but differs from one only in case: the
    queue keeps it for whichever consumer asks for that exact name."""
    if recipient in agents:
        return None
    near = [a for a in agents if a.casefold() == recipient.casefold()]
    if near:
        return (f"note: {recipient!r} is not an agent (did you mean {near[0]!r}?); it waits "
                "for a consumer of that exact name")
    return None


def print_send_report(report: dict) -> None:
    print(f"accepted {report['accepted']}, duplicates {report['duplicates']}, "
          f"rejected {report['rejected']}")
    if unsent := report.get("unsent"):
        print(f"not sent: {unsent['lines']} lines from line {unsent['first_line']} on "
              f"({unsent['reason']}); the lines before were handled as listed")
        if maybe := unsent.get("uncertain"):
            print(f"lines {maybe[0]['line']}-{maybe[-1]['line']} got no answer and may have been "
                  f"queued: re-send them with the same ids to be sure (--json lists the ids)")
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


def printable(text: str) -> str:
    """``text`` safe to print in a table: a control character (a newline in a consumer's
    nack error, an escape sequence) becomes ``?`` instead of forging lines or colours."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


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
    flight = ", ".join(f"{printable(o)} {n}" for o, n in s["in_flight"].items()) or "none"
    print(f"in flight: {flight}{_more(s['in_flight'], s.get('in_flight_owners'))}")
    for sub in s["subscriptions"]:
        target = sub["recipient"] or "topic " + sub["topic"]
        print(f"  subscription {sub['sub']} {printable(target)} -> {printable(sub['addr'])}: "
              f"{sub['in_flight']}/{sub['max_in_flight']}")
    if more := _more(s["subscriptions"], s.get("subscription_count")):
        print(f"  {more.strip()}")
    inbox = s["inbox"]
    if inbox["enabled"]:
        print(f"inbox:    delivered {inbox['delivered']}, failed {inbox['failed']}")
    if s.get("throttled"):
        print(f"throttled agent messages (agent_throttle): {s['throttled']}")
    if s["ready_by_recipient"]:
        print("ready by recipient: " + ", ".join(
            f"{printable(r)} {n}" for r, n in s["ready_by_recipient"].items())
            + _more(s["ready_by_recipient"], s.get("recipients_ready")))


def _more(shown, total: int | None) -> str:
    """" (N in all, not all shown)" when a stats list was cut short."""
    return f" ({total} in all, not all shown)" if total and total > len(shown) else ""


def print_dlq(reply: dict) -> None:
    msgs, offset, total = reply["messages"], reply.get("offset", 0), reply.get("total", 0)
    if not msgs:
        print(f"no dead letters at offset {offset} ({total} in all)" if offset and total
              else "no dead letters")
        return
    print(f"{'ID':<28} {'RECIPIENT':<16} {'TRIES':>5}  {'DIED':<19}  ERROR")
    for m in msgs:
        died = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.get("dead_at") or 0))
        print(f"{m['id']:<28} {printable(m['recipient']):<16} {m['attempts']:>5}  {died:<19}  "
              f"{printable((m.get('last_error') or '')[:80])}")
    if total > offset + len(msgs):
        print(f"({len(msgs)} of {total} shown from {offset}; more: --offset {offset + len(msgs)})")
