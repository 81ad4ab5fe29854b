"""Crash-to-healthy time of a supervised service, against raw Thespian and process managers.

The swarm: SIGKILL the probe service's pid, poll ``admin.lookup probe`` until a new pid and
address appear, then ``test.echo`` the new address; time from the kill to the echo reply.
Raw Thespian, same run, interleaved: a plain parent actor recreates its child on
ChildActorExited; kill the child, poll the parent for the new address, ask it; same clock.

Every kill is an isolated crash of a stable child: ``backoff.reset_after_s`` is lowered and
kills are spaced past it, so each restart is OTP's immediate first restart (consecutive crashes
are deliberately delayed by backoff and are not what this measures); restart intensity is raised
so 30 kills do not escalate. Reference, not measured here: supervisord restarts a killed program
in ~1,000 ms (median), circus in ~660 ms.

    python -m bench.restart [--json] [--quick]
"""
from __future__ import annotations

import os
import signal
import time

from thespian.actors import ActorAddress

from bench.common import (
    FAST_HEALTH,
    PROBE_SERVICES,
    BenchSwarm,
    emit,
    median_ms,
    p95_ms,
    parser,
    raw_system,
)
from system import protocol
from system.admin import AdminClient
from system.launcher import connect

RESET_AFTER_S = 0.5
SETTLE_S = 0.6  # > RESET_AFTER_S: the next kill hits a child that counts as stable again
DEADLINE_S = 10.0
REFERENCE_MS = {"supervisord_median": 1000, "circus_median": 660}
TARGET_P95_MS = 50


def swarm_restart(client: AdminClient, asys, old_pid: int, token: int) -> tuple[float, float, int]:
    """Kill the probe, wait for a reply from its replacement; (seconds to the reply, seconds
    until the lookup showed the new pid, new pid)."""
    t0 = time.perf_counter()
    os.kill(old_pid, signal.SIGKILL)
    while time.perf_counter() - t0 < DEADLINE_S:
        found = client.call(protocol.ADMIN_LOOKUP, {"name": "probe"})
        if found.get("state") != "running" or not found.get("addr") or found["pid"] == old_pid:
            continue
        visible = time.perf_counter() - t0
        data = protocol.TEST_ECHO.encode({"n": token})
        with asys.private() as ctx:
            reply = ctx.ask(protocol.address_from_wire(found["addr"]), data, DEADLINE_S)
        env = protocol.decode(reply) if reply is not None else None
        if isinstance(env, protocol.Envelope) and env.t == "ok" and env.b.get("n") == token:
            return time.perf_counter() - t0, visible, found["pid"]
    raise RuntimeError(f"the probe did not answer within {DEADLINE_S:g}s of kill {token}")


def raw_restart(rsys, parent, old_child, old_pid: int) -> tuple[float, object, int]:
    """Kill the raw child, wait for a reply from its replacement; (seconds, address, pid)."""
    t0 = time.perf_counter()
    os.kill(old_pid, signal.SIGKILL)
    while time.perf_counter() - t0 < DEADLINE_S:
        child = rsys.ask(parent, "child", DEADLINE_S)
        if not isinstance(child, ActorAddress) or child == old_child:
            continue
        pid = rsys.ask(child, "pid", DEADLINE_S)
        if isinstance(pid, int) and pid != old_pid:
            return time.perf_counter() - t0, child, pid
    raise RuntimeError(f"the raw child did not answer within {DEADLINE_S:g}s")


def run(kills: int) -> dict:
    overrides = {"health": FAST_HEALTH, "services": PROBE_SERVICES,
                 "supervision": {"backoff": {"reset_after_s": RESET_AFTER_S},
                                 "services": {"strategy": "one_for_one",
                                              "max_restarts": 10 * kills, "within_s": 60}}}
    swarm_times, visible_times, raw_times = [], [], []
    with raw_system() as rsys, BenchSwarm(overrides) as swarm:
        parent = rsys.createActor("bench.common.RawParent")
        child = rsys.ask(parent, "child", DEADLINE_S)
        raw_pid = rsys.ask(child, "pid", DEADLINE_S)
        swarm.start()
        client, asys = AdminClient(swarm.config), connect(swarm.config)
        pid = client.call(protocol.ADMIN_LOOKUP, {"name": "probe"})["pid"]
        for i in range(kills):
            time.sleep(SETTLE_S)
            elapsed, visible, pid = swarm_restart(client, asys, pid, i)
            swarm_times.append(elapsed)
            visible_times.append(visible)
            elapsed, child, raw_pid = raw_restart(rsys, parent, child, raw_pid)
            raw_times.append(elapsed)
        restarts = client.call(protocol.ADMIN_STATUS)["services"]["probe"]["restarts"]
    result = {
        "kills": kills,
        "restart_median_ms": median_ms(swarm_times),
        "restart_p95_ms": p95_ms(swarm_times),
        "restart_max_ms": round(max(swarm_times) * 1000, 3),
        "lookup_shows_new_pid_median_ms": median_ms(visible_times),
        "raw_thespian_median_ms": median_ms(raw_times),
        "raw_thespian_p95_ms": p95_ms(raw_times),
        "probe_restarts_reported": restarts,
        "target_p95_ms": TARGET_P95_MS,
        "reference_not_measured_ms": REFERENCE_MS,
        "method": "SIGKILL -> admin.lookup until new pid -> test.echo reply; isolated crashes "
                  f"(backoff.reset_after_s={RESET_AFTER_S}, kills {SETTLE_S}s apart)",
    }
    result["ratio_median_vs_raw"] = round(result["restart_median_ms"]
                                          / result["raw_thespian_median_ms"], 2)
    result["ratio_p95_vs_raw"] = round(result["restart_p95_ms"] / result["raw_thespian_p95_ms"], 2)
    return result


def main() -> None:
    args = parser(__doc__).parse_args()
    r = run(10 if args.quick else 30)
    sup, circus = REFERENCE_MS["supervisord_median"], REFERENCE_MS["circus_median"]
    med = r["restart_median_ms"]
    emit(args, r, [
        ("kills", r["kills"]),
        ("swarm restart median / p95 (ms)",
         f"{med} / {r['restart_p95_ms']}  (target p95 <= {TARGET_P95_MS})"),
        ("  of which: lookup shows new pid (ms)", r["lookup_shows_new_pid_median_ms"]),
        ("raw Thespian median / p95 (ms)",
         f"{r['raw_thespian_median_ms']} / {r['raw_thespian_p95_ms']}"),
        ("ratio vs raw: median / p95", f"{r['ratio_median_vs_raw']}x / {r['ratio_p95_vs_raw']}x"),
        ("supervisord median (reference)", f"{sup} ms = {sup / med:.0f}x the swarm's"),
        ("circus median (reference)", f"{circus} ms = {circus / med:.0f}x the swarm's"),
    ])


if __name__ == "__main__":
    main()
