"""``swarm demo`` end to end: wall time (target <= 90 s for the 60 s timeline) and the peak
memory of everything it runs (target <= 300 MiB USS: the harness process with both simulated
platforms, plus every process of its swarm), sampled every 0.5 s with psutil; and the
latencies the demo reports itself (``--json``): chat command -> reply, threshold written ->
gas in the inbox, SIGKILL -> running again. With ``--runs N`` the medians over N runs.

Peer in the same run: a bare Python process that only imports discord.py and twitchio (the
floor any process running both clients pays), and the swarm's own processes on their own.

    python -m bench.demo [--json] [--quick] [--runs N]     # --quick: a 20 s timeline
"""
from __future__ import annotations

import contextlib
import json
import re
import statistics
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
            "failed_checks": [c for c in report.get("checks", []) if not c["ok"]],
            "latency_ms": _latencies(report.get("summary") or {})}


def _latencies(summary: dict) -> dict:
    chat = summary.get("chat") or {}
    gas, back = summary.get("gas_latency_ms") or {}, summary.get("recovery_ms") or {}
    return {"chat_p50": chat.get("p50_ms"), "chat_p95": chat.get("p95_ms"),
            "gas_p50": gas.get("p50"), "gas_p95": gas.get("p95"),
            "kill_to_running_p50": back.get("p50"), "kill_to_running_p95": back.get("p95")}


def medians(runs: list[dict]) -> dict:
    """The median of each number over the runs (lists of failed checks: all of them)."""
    out: dict = {"runs": len(runs), "ok": all(r["ok"] for r in runs),
                 "failed_checks": [c for r in runs for c in r["failed_checks"]]}
    for key in ("wall_s", "timeline_s", "peak_total_mib", "peak_swarm_mib", "peak_harness_mib"):
        out[key] = statistics.median(r[key] or 0 for r in runs)
    out["latency_ms"] = {k: statistics.median(v) if (v := [r["latency_ms"][k] for r in runs
                                                          if r["latency_ms"][k] is not None])
                         else None for k in runs[0]["latency_ms"]}
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--runs", type=int, default=1, help="runs; medians are reported")
    args = p.parse_args()
    r = medians([run_demo(20 if args.quick else None) for _ in range(max(1, args.runs))])
    r["library_floor_mib"] = round(library_floor() / MIB, 1)
    r["target_s"], r["target_mib"] = TARGET_S, TARGET_MIB
    emit(args, r, [
        ("demo", (f"{'all checks held' if r['ok'] else 'FAILED'} ({r['runs']} run(s), "
                  f"medians), {r['wall_s']} s wall for a "
                 f"{r['timeline_s']} s timeline (target <= {TARGET_S:g} s)")),
        ("peak memory (USS)", (f"{r['peak_total_mib']} MiB: harness {r['peak_harness_mib']}, "
                              f"swarm {r['peak_swarm_mib']} (target <= {TARGET_MIB:g})")),
        ("peer: python + discord.py + twitchio imported", f"{r['library_floor_mib']} MiB"),
        ("latency (ms, p50 / p95)", ", ".join(
            f"{what} {r['latency_ms'][k + '_p50']} / {r['latency_ms'][k + '_p95']}" for what, k in
            (("chat", "chat"), ("gas", "gas"), ("kill -> running", "kill_to_running")))),
    ])


if __name__ == "__main__":
    main()
