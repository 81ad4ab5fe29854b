"""``swarm demo`` end to end: wall time (target <= 90 s for the 60 s timeline) and the peak
memory of everything it runs (target <= 300 MiB USS: the harness process with both simulated
platforms, plus every process of its swarm), sampled every 0.5 s with psutil.

Peer in the same run: a bare Python process that only imports discord.py and twitchio (the
floor any process running both clients pays), and the swarm's own processes on their own.

    python -m bench.demo [--json] [--quick]     # --quick: a 20 s timeline
"""
from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

from bench.common import ROOT, emit, parser
from system.launcher import swarm_processes

MIB = 1024 * 1024
TARGET_S, TARGET_MIB = 90.0, 300.0


def uss(procs) -> int:
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_full_info().uss
    return total


def library_floor() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ("import discord, twitchio, sys; "
                             "sys.stdout.write('ready\\n'); sys.stdout.flush(); input()")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        return psutil.Process(proc.pid).memory_full_info().uss
    finally:
        proc.communicate("\n", timeout=10)


def run_demo(duration: float | None) -> dict:
    args = [sys.executable, "-m", "system.cli", "demo", "--json"]
    if duration:
        args += ["--duration", str(duration)]
    t0 = time.monotonic()
    proc = subprocess.Popen(args, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    port: list[int] = []

    def watch_stderr() -> None:
        for line in proc.stderr:
            if m := re.search(r"starting the swarm in (\S+)", line):
                with contextlib.suppress(OSError, KeyError, TypeError):
                    time.sleep(0.2)
                    cfg = yaml.safe_load((Path(m.group(1)) / "swarm.yaml").read_text())
                    port.append(int(cfg["system"]["admin_port"]))
    threading.Thread(target=watch_stderr, daemon=True).start()
    peak = peak_swarm = peak_harness = 0
    while proc.poll() is None:
        harness = uss([psutil.Process(proc.pid)])
        swarm = uss(swarm_processes(port[0])) if port else 0
        peak, peak_swarm, peak_harness = (max(peak, harness + swarm), max(peak_swarm, swarm),
                                          max(peak_harness, harness))
        time.sleep(0.5)
    wall = time.monotonic() - t0
    report = json.loads(proc.stdout.read() or "{}")
    return {"wall_s": round(wall, 1), "timeline_s": report.get("duration_s"),
            "ok": report.get("ok"), "peak_total_mib": round(peak / MIB, 1),
            "peak_swarm_mib": round(peak_swarm / MIB, 1),
            "peak_harness_mib": round(peak_harness / MIB, 1),
            "failed_checks": [c for c in report.get("checks", []) if not c["ok"]]}


def main() -> None:
    args = parser(__doc__).parse_args()
    r = run_demo(20 if args.quick else None)
    r["library_floor_mib"] = round(library_floor() / MIB, 1)
    r["target_s"], r["target_mib"] = TARGET_S, TARGET_MIB
    emit(args, r, [
        ("demo", (f"{'all checks held' if r['ok'] else 'FAILED'}, {r['wall_s']} s wall for a "
                 f"{r['timeline_s']} s timeline (target <= {TARGET_S:g} s)")),
        ("peak memory (USS)", (f"{r['peak_total_mib']} MiB: harness {r['peak_harness_mib']}, "
                              f"swarm {r['peak_swarm_mib']} (target <= {TARGET_MIB:g})")),
        ("peer: python + discord.py + twitchio imported", f"{r['library_floor_mib']} MiB"),
    ])


if __name__ == "__main__":
    main()
