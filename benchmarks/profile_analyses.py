"""The analysis phase of the variable-ω0 study, section by section, on one thread: everything
``physlens run probes/oscillator_variable.toml`` does after training.

The study file is parsed as the CLI parses it, the shipped checkpoint (the model the study file
retrains exactly) takes the place of training, and :func:`~physlens.studies.oscillator.analyse_trained`
runs the task evaluation, its report section and every analysis, exactly as the study does. One torch
thread and one BLAS thread (``[study] threads = 1``; numpy's BLAS limited through threadpoolctl). The
table gives, per section, the CPU seconds of the calling thread (``time.thread_time``) and the wall
seconds, from the report's own ``timings``; the whole run's process CPU time is printed beside them.

    python benchmarks/profile_analyses.py                          # the table
    python benchmarks/profile_analyses.py --profile analyses.prof  # and a cProfile dump, its top functions printed
    python benchmarks/profile_analyses.py --out DIR                # and the report (report.md, metrics.json) in DIR
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

from _machine import one_thread, table

from physlens.studies import load_study
from physlens.studies.oscillator import analyse_trained, parse_study
from physlens.training import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(ROOT / "probes" / "oscillator_variable.toml"))
    parser.add_argument("--checkpoint", default=str(ROOT / "docs" / "tutorials" / "models" / "oscillator_variable"))
    parser.add_argument("--profile", metavar="FILE", help="also write a cProfile dump here and print its top functions")
    parser.add_argument("--out", metavar="DIR", help="also write the report here, to compare its numbers between versions")
    args = parser.parse_args()
    one_thread()
    study = parse_study(load_study(args.study))
    model, _ = load_checkpoint(args.checkpoint)
    if model.config_dict() != study.model.config_dict():
        sys.exit(f"the checkpoint's model differs from the one {args.study} trains")
    profiler = cProfile.Profile() if args.profile else None
    wall, cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    report = analyse_trained(study, model, None, progress=False)
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    timings = report.timings
    rows = [["task evaluation (references, model, report section)", f"{timings['evaluation_cpu_s']:.1f}", f"{timings['evaluation_s']:.1f}"]]
    rows += [[name, f"{timings['analyses_cpu_s'][name]:.1f}", f"{seconds:.1f}"] for name, seconds in timings["analyses"].items()]
    rows.append(["**analysis phase**", f"**{timings['analysis_phase_cpu_s']:.1f}**", f"**{timings['analysis_phase_s']:.1f}**"])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{study.name}: checkpoint {Path(args.checkpoint).name}; load average after the run {load}")
    print(table(["section", "CPU s (thread)", "wall s"], rows))
    print(f"\nprocess CPU {cpu:.1f} s, wall {wall:.1f} s" + (" (under cProfile)" if profiler else ""))
    if args.out:
        report.write(Path(args.out))
    if profiler is not None:
        profiler.dump_stats(args.profile)
        pstats.Stats(args.profile).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
