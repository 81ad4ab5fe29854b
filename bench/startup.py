"""Wall time of ``swarm start -d`` (until it returns healthy) and ``swarm stop``, and the memory
(USS) of the default tree, measured with the real CLI as subprocesses.

The tree is the packaged default with only the admin port, data_dir and agents.workspace_root
moved to a temp dir (and the queue service disabled while ``actors/queue/service.py`` does not
exist yet). USS per actor comes from ``swarm status --json`` once the health monitor has
sampled every running actor; ``all_processes_uss_bytes`` adds what status does not list (the
Thespian admin and logger processes and the root supervisor), measured here with psutil.
Peer baseline (THESPIAN_NOTES.md): a bare multiprocTCPBase system starts in ~46 ms, stops in
~23 ms, and costs ~4.0 MiB USS per actor process.

    python -m bench.startup [--json] [--quick]
"""
from __future__ import annotations

import contextlib
import statistics
import time

import psutil

from bench.common import ROOT, BenchSwarm, emit, parser
from system import protocol
from system.admin import AdminClient
from system.launcher import swarm_processes

TARGET_START_S = 1.5
SAMPLE_WAIT_S = 30.0
MIB = 1024 * 1024


def memory(swarm: BenchSwarm) -> dict:
    """USS per running actor once every one has been sampled, plus all swarm processes."""
    client = AdminClient(swarm.config)
    deadline = time.monotonic() + SAMPLE_WAIT_S
    while True:
        status = client.call(protocol.ADMIN_STATUS)
        running = {n: v for n, v in status["services"].items() if v["state"] == "running"}
        if running and all(v["uss_bytes"] > 0 for v in running.values()):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"no USS samples within {SAMPLE_WAIT_S:g}s")
        time.sleep(0.2)
    procs = swarm_processes(swarm.port)
    total_all = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total_all += proc.memory_full_info().uss
    return {"uss_per_actor_bytes": {n: v["uss_bytes"] for n, v in sorted(running.items())},
            "total_uss_bytes": status["total_uss_bytes"],
            "all_processes_uss_bytes": total_all, "processes": len(procs)}


def run(rounds: int) -> dict:
    queue = (ROOT / "actors" / "queue" / "service.py").exists()
    overrides = {} if queue else {"services": {"queue": {"enabled": False}}}
    starts, stops, mem = [], [], {}
    with BenchSwarm(overrides) as swarm:
        for i in range(rounds):
            starts.append(swarm.start())
            if i == 0:
                mem = memory(swarm)
            stops.append(swarm.cli("stop"))
            if swarm_processes(swarm.port):
                raise RuntimeError("swarm stop left processes behind")
    return {"rounds": rounds, "start_s": round(statistics.median(starts), 3),
            "stop_s": round(statistics.median(stops), 3),
            "start_all_s": [round(s, 3) for s in starts],
            "stop_all_s": [round(s, 3) for s in stops], **mem,
            "queue_service": "enabled" if queue else "disabled (actors/queue/service.py absent)",
            "target_start_s": TARGET_START_S}


def main() -> None:
    args = parser(__doc__).parse_args()
    r = run(2 if args.quick else 5)
    per, total = r["uss_per_actor_bytes"], r["total_uss_bytes"] / MIB
    start = r["start_s"]
    rows = [("rounds", r["rounds"]),
            ("swarm start -d (median s)",
             f"{start}  (target <= {TARGET_START_S}: {start / TARGET_START_S:.2f}x the target)"),
            ("swarm stop (median s)", r["stop_s"]),
            ("start, every round (s)", r["start_all_s"]),
            ("queue service", r["queue_service"])]
    rows += [(f"USS {name} (MiB)", f"{uss / MIB:.1f}") for name, uss in per.items()]
    rows += [("USS total in status (MiB)",
              f"{total:.1f}  ({total / len(per):.1f} per actor; raw Thespian ~4.0)"),
             (f"USS all {r['processes']} swarm processes (MiB)",
              f"{r['all_processes_uss_bytes'] / MIB:.1f}")]
    emit(args, r, rows)


if __name__ == "__main__":
    main()
