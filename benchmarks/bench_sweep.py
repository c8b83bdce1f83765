"""Sweeps: speed-up of 2 local worker processes over 1, and the Ray backend's overhead per trial.

Runs one sweep of N small trials (a window-1 OLA on the oscillator, each a complete study with its
report, figures and checkpoints) several ways, every run into a fresh directory so nothing is
skipped, and prints wall and CPU seconds with the machine's load average around each run:

1. local, 1 worker vs 2 workers, interleaved A/B/B/A… so a change in the machine's load hits both
   alike; the speed-up is the ratio of medians. Just before each run, the same number of plain
   Python busy loops measure what the machine gives that many processes at that moment (on a
   shared machine two processes may get no more CPU than one); the sweep's speed-up is reported
   against that, and against the floor on idle cores: the trials' own run times (measured inside
   the 1-worker runs) divided over 2 workers, plus what the sweep spends outside its trials.
2. Ray (embedded, 2 CPUs) against the local 2-worker pool on the same trials: ``ray.init`` once
   (timed on its own), a first sweep on cold Ray workers (timed on its own), then Ray and local
   interleaved; the overhead per trial is (median Ray − median local) / N, in wall and CPU seconds.

CPU seconds cover this process and everything below it (fork server, workers, Ray's daemons and
workers), sampled with psutil. The first local pool of a process starts a fork server that imports
torch and the study once; it is timed on its own, before the A/B runs.

    python benchmarks/bench_sweep.py                        # 8 trials, 2 repeats, local and Ray
    python benchmarks/bench_sweep.py --trials 8 --steps 400 --repeats 3 --no-ray
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

STUDY = """
[study]
name = "bench"
kind = "oscillator"
seed = 0

[system]
omega0 = 2.0
gamma = 0.1
dtype = "float64"

[model]
preset = "OLA"
attn_window = 1
n_ctx = 8
dtype = "float64"

[training]
steps = {steps}
seq_len = 8
lr = 1e-2
schedule = "cosine"
loss_positions = "all"
checkpoint_every = {checkpoint}

[evaluation]
rollout_steps = 100
n_trajectories = 32
context_len = 1
energy_range = [1.0, 5.0]
"""


class TreeCPU:
    """CPU seconds of this process and every process below it (fork server, workers, Ray's daemons
    and workers), sampled every 0.1 s by a thread with psutil; processes that end between samples
    lose at most their last 0.1 s. None where psutil is missing."""

    def __init__(self) -> None:
        try:
            import psutil
        except ImportError:
            self.psutil = None
            return
        self.psutil, self.seen, self.running = psutil, {}, False

    def _sample(self) -> None:
        me = self.psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            try:
                times = process.cpu_times()
                self.seen[(process.pid, process.create_time())] = times.user + times.system
            except self.psutil.Error:
                pass

    def _loop(self) -> None:
        while self.running:
            self._sample()
            time.sleep(0.1)

    def __enter__(self) -> TreeCPU:
        if self.psutil is not None:
            import threading

            self._sample()
            self.start = dict(self.seen)
            self.running = True
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.psutil is not None:
            self.running = False
            self.thread.join()
            self._sample()

    @property
    def seconds(self) -> float | None:
        if self.psutil is None:
            return None
        return sum(v - self.start.get(k, 0.0) for k, v in self.seen.items())


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def timed_sweep(sweep, scratch: Path, **options) -> dict:
    """Run ``sweep`` into a fresh directory; wall and CPU seconds, the trials' own run times, the load."""
    from physlens.sweeps import run_sweep

    out = Path(tempfile.mkdtemp(dir=scratch))
    before_load = _load()
    with TreeCPU() as cpu:
        wall = time.perf_counter()
        result = run_sweep(sweep, output_root=out, progress=False, **options)
        wall = time.perf_counter() - wall
    if result.failures:
        raise RuntimeError(f"benchmark trials failed: {result.failures}")
    return {"wall": wall, "cpu": cpu.seconds, "trial_seconds": float(result.table["run_time_s"].sum()),
            "load": f"{before_load} → {_load()}"}


BURN = "x = 0\nfor i in range({n}):\n    x += i\n"


def machine_capacity(processes: int, iterations: int = 10_000_000) -> float:
    """Wall seconds for ``processes`` separate Pythons each running the same pure-Python loop at once:
    what this machine gives that many processes right now, with no library involved. The speed-up
    of a perfectly parallel job is ``processes × t(1) / t(processes)``."""
    import subprocess
    import sys

    start = time.perf_counter()
    running = [subprocess.Popen([sys.executable, "-c", BURN.format(n=iterations)]) for _ in range(processes)]
    for process in running:
        process.wait()
    return time.perf_counter() - start


def _cpu_text(seconds: float | None) -> str:
    return "   n/a" if seconds is None else f"{seconds:6.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="trials in the sweep (seeds)")
    parser.add_argument("--steps", type=int, default=400, help="training steps per trial")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each local configuration")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray measurements")
    args = parser.parse_args()

    from physlens.sweeps import load_sweep

    scratch = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    study = scratch / "study.toml"
    study.write_text(STUDY.format(steps=args.steps, checkpoint=max(1, args.steps // 2)))
    sweep = load_sweep(study, seeds=args.trials)
    print(f"{args.trials} trials of a window-1 OLA study ({args.steps} steps each, report + figures + checkpoints); "
          f"{os.cpu_count()} cores, load average {_load()} (1/5/15 min)")

    # The first local sweep of a process starts its fork server, which imports torch and the study
    # module once; later pools fork from it in milliseconds. Timed here on its own (one trial).
    first = timed_sweep(load_sweep(study, seeds=1), scratch, workers=1)
    print(f"  first pool of the process (fork server start) + 1 trial: {first['wall']:.1f} s wall, "
          f"trial {first['trial_seconds']:.1f} s, load {first['load']}")
    runs: dict[int, list[dict]] = {1: [], 2: []}
    burns: dict[int, list[float]] = {1: [], 2: []}
    order = [1, 2, 2, 1] * ((args.repeats + 1) // 2)
    for workers in order[: 2 * args.repeats]:
        burns[workers].append(machine_capacity(workers))  # the same number of plain processes, just before
        run = timed_sweep(sweep, scratch, workers=workers)
        runs[workers].append(run)
        print(f"  local, {workers} worker(s): {run['wall']:6.1f} s wall, {_cpu_text(run['cpu'])} s CPU, "
              f"trials' own time {run['trial_seconds']:6.1f} s, load {run['load']}; "
              f"{workers} plain busy loop(s) just before: {burns[workers][-1]:.2f} s")
    one = statistics.median(r["wall"] for r in runs[1])
    two = statistics.median(r["wall"] for r in runs[2])
    capacity = 2 * statistics.median(burns[1]) / statistics.median(burns[2])
    trial_time = statistics.median(r["trial_seconds"] for r in runs[1])
    outside = max(0.0, one - trial_time)  # what the 1-worker sweep spends outside its trials (pool, aggregation)
    floor = trial_time / 2 + outside
    start_cost = max(0.0, first["wall"] - first["trial_seconds"] - outside)
    print(f"speed-up of 2 workers over 1: {one / two:.2f}x (median wall {one:.1f} s → {two:.1f} s)")
    print(f"  what the machine gave 2 plain busy loops over 1 at the same times: {capacity:.2f}x "
          f"(2 on idle cores); the sweep reaches {one / two / capacity:.0%} of that")
    print(f"  floor on idle cores: {floor:.1f} s = trials {trial_time:.1f} s / 2 + {outside:.1f} s outside them "
          f"→ at best {one / floor:.2f}x")
    print(f"from a fresh process (a CLI call) add the fork server's start, ≈ {start_cost:.1f} s, to both: "
          f"{(one + start_cost) / (two + start_cost):.2f}x")

    if args.no_ray:
        return
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    init = time.perf_counter() - start
    print(f"ray.init() (embedded, 2 CPUs): {init:.1f} s, load {_load()}")
    backends: dict[str, list[dict]] = {"ray": [], "local": []}
    try:
        cold = timed_sweep(sweep, scratch, backend="ray")  # Ray's workers import torch and the study on their first task
        print(f"  Ray, cold workers     : {cold['wall']:6.1f} s wall, {_cpu_text(cold['cpu'])} s CPU, load {cold['load']}")
        for backend in ["local", "ray", "ray", "local"] * ((args.repeats + 1) // 2):
            run = timed_sweep(sweep, scratch, backend=backend, **({"workers": 2} if backend == "local" else {}))
            backends[backend].append(run)
            label = "Ray, warm workers" if backend == "ray" else "local pool, 2 workers"
            print(f"  {label:22s}: {run['wall']:6.1f} s wall, {_cpu_text(run['cpu'])} s CPU, "
                  f"trials' own time {run['trial_seconds']:6.1f} s, load {run['load']}")
    finally:
        ray.shutdown()
    n = args.trials
    wall = {b: statistics.median(r["wall"] for r in runs) for b, runs in backends.items()}
    line = (f"Ray overhead per trial against the local pool (medians, warm workers): wall {(wall['ray'] - wall['local']) / n:+.2f} s"
            f" ({wall['local']:.1f} s → {wall['ray']:.1f} s for {n} trials)")
    if all(r["cpu"] is not None for runs in backends.values() for r in runs):
        cpu = {b: statistics.median(r["cpu"] for r in runs) for b, runs in backends.items()}
        line += f", CPU {(cpu['ray'] - cpu['local']) / n:+.2f} s ({cpu['local']:.1f} s → {cpu['ray']:.1f} s)"
    print(line)
    print(f"once per sweep when physlens starts Ray itself: ray.init {init:.1f} s; on cold workers the first sweep took "
          f"{cold['wall'] - wall['ray']:+.1f} s more than on warm ones")


if __name__ == "__main__":
    main()
