"""Round trip of an admin request through the msgpack envelope, against a raw Thespian ask.

Admin: ``AdminClient.call(health.ping)`` to the admin actor, the cheapest request it answers
itself: the client encodes an envelope, asks in a private context and correlates the reply by
id; the admin decodes, dispatches, runs ``health()`` and encodes a ``health.pong``.
``admin.lookup`` and ``admin.status`` (forwarded: admin -> registry, which answers the client,
with one entry or the whole snapshot) are reported beside it.
Peer, same run: a plain Thespian ``ask`` of the same envelope bytes to a trivial echo actor
(``bench.common.RawEcho``) in a stock Thespian system (``bench.common.raw_system``), both with
its shared handle and in a new private context per call (what the client does, to isolate that
cost).
Requests are interleaved in rounds, rotating the order, to spread machine noise evenly.

    python -m bench.admin [--json] [--quick]
"""
from __future__ import annotations

import time

from bench.common import (
    FAST_HEALTH,
    PROBE_SERVICES,
    BenchSwarm,
    RawEcho,
    emit,
    median_ms,
    p95_ms,
    parser,
    raw_system,
)
from system import protocol
from system.admin import AdminClient

TARGET_RATIO = 1.2
TIMEOUT_S = 5.0


def run(n: int) -> dict:
    with raw_system() as asys, BenchSwarm({"health": FAST_HEALTH, "services": PROBE_SERVICES}
                                          ) as swarm:
        swarm.start()
        client, echo = AdminClient(swarm.config), asys.createActor(RawEcho)
        payload = protocol.HEALTH_PING.encode()

        def raw_ask():
            if asys.ask(echo, payload, TIMEOUT_S) != payload:
                raise RuntimeError("the raw echo actor did not answer")

        def raw_private_ask():
            with asys.private() as ctx:
                if ctx.ask(echo, payload, TIMEOUT_S) != payload:
                    raise RuntimeError("the raw echo actor did not answer")

        cases = {
            "admin": lambda: client.call(protocol.HEALTH_PING),
            "raw_ask": raw_ask,
            "raw_private_ask": raw_private_ask,
            "lookup": lambda: client.call(protocol.ADMIN_LOOKUP, {"name": "probe"}),
            "status": lambda: client.call(protocol.ADMIN_STATUS),
        }
        for fn in cases.values():  # warm-up: connections, caches, the admin address
            fn()
        times: dict[str, list[float]] = {name: [] for name in cases}
        names = list(cases)
        for i in range(n):
            for name in names[i % len(names):] + names[:i % len(names)]:
                t0 = time.perf_counter()
                cases[name]()
                times[name].append(time.perf_counter() - t0)
    r: dict = {"n": n, "admin_request": "health.ping to the admin actor (AdminClient.call)",
               "payload_bytes": len(payload), "target_ratio": TARGET_RATIO}
    for name, xs in times.items():
        r[f"{name}_median_ms"], r[f"{name}_p95_ms"] = median_ms(xs), p95_ms(xs)
    r["ratio_vs_raw_ask"] = round(r["admin_median_ms"] / r["raw_ask_median_ms"], 2)
    r["ratio_p95_vs_raw_ask"] = round(r["admin_p95_ms"] / r["raw_ask_p95_ms"], 2)
    r["ratio_vs_raw_private_ask"] = round(r["admin_median_ms"] / r["raw_private_ask_median_ms"], 2)
    return r


def main() -> None:
    args = parser(__doc__).parse_args()
    r = run(300 if args.quick else 2000)

    def line(name: str) -> str:
        ratio = r[f"{name}_median_ms"] / r["raw_ask_median_ms"]
        return f"{r[f'{name}_median_ms']} / {r[f'{name}_p95_ms']}  ({ratio:.2f}x raw ask)"

    emit(args, r, [
        ("requests per case", r["n"]),
        ("median / p95 (ms)", ""),
        ("admin health.ping (envelope)", line("admin") + f"  target <= {TARGET_RATIO}x"),
        ("raw Thespian ask", line("raw_ask")),
        ("raw ask, private context per call", line("raw_private_ask")),
        ("admin.lookup (2 extra hops)", line("lookup")),
        ("admin.status (2 extra hops)", line("status")),
    ])


if __name__ == "__main__":
    main()
