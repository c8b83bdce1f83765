"""Time the F = m·a study section by section on one thread, and optionally profile it.

Runs ``probes/fma.toml`` (or ``--spec``) with one torch thread, then prints the study's own timings
(``timings.json``: wall, process CPU and main-thread CPU seconds per stage) and the process's CPU
time for the whole run, figures included. ``--profile FILE`` also writes cProfile statistics, which
slow the run down. Compare two versions' ``metrics.json`` with ``diff`` to check that they agree.

    PYTHONPATH=src python benchmarks/bench_fma_study.py --output /tmp/fma-bench
"""

from __future__ import annotations

import argparse
import cProfile
import json
import resource
import time
from pathlib import Path

from physlens.studies import run_study


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="probes/fma.toml", help="the study file (default: probes/fma.toml)")
    parser.add_argument("--output", default="runs/bench-fma", help="where the run directory goes")
    parser.add_argument("--profile", default=None, help="write cProfile statistics to this file")
    args = parser.parse_args()

    profiler = cProfile.Profile() if args.profile else None
    cpu, wall = _process_cpu(), time.perf_counter()
    if profiler:
        profiler.enable()
    out = run_study(args.spec, output_root=args.output, progress=False, threads=1)
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    cpu, wall = _process_cpu() - cpu, time.perf_counter() - wall

    timings = json.loads((out / "timings.json").read_text())
    timings.setdefault("thread_cpu_seconds", {stage: float("nan") for stage in timings["seconds"]})  # runs before it was recorded
    stages = timings["seconds"]
    print(f"{'stage':62s} {'wall s':>8s} {'CPU s':>8s} {'thread s':>8s}")
    for stage in stages:
        print(f"{stage:62s} {stages[stage]:8.1f} {timings['cpu_seconds'][stage]:8.1f} {timings['thread_cpu_seconds'][stage]:8.1f}")
    totals = [sum(timings[key].values()) for key in ("seconds", "cpu_seconds", "thread_cpu_seconds")]
    print(f"{'stages, total':62s} {totals[0]:8.1f} {totals[1]:8.1f} {totals[2]:8.1f}")
    print(f"{'whole run (writing the report and figures included)':62s} {wall:8.1f} {cpu:8.1f}")
    print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    main()
