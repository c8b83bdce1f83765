"""Ensemble training of F = m·a MLPs: the fused kernel, the eager step and a train_mlp loop, against the floor.

For each data size, in interleaved rounds on one thread, it times a network-epoch (one full-batch
Adam step of one network) of

* ``train_ensemble`` with the fused CPU kernel (``backend="fused"``) on N networks,
* ``train_ensemble`` with the eager torch step (``backend="eager"``), the reference,
* optionally the eager step compiled with ``torch.compile`` (``--compile``; the GPU path),
* a Python loop of ``train_mlp`` (autograd + ``torch.optim.Adam``, one network after another),

and the floor: the step's arithmetic at this core's peak multiply-add rate, measured by a minimal
numba loop (``_machine.measure_fma_peak``). Not the read bandwidth: the fused kernel runs every epoch
of a network while its data (96 kB at 8000 points) sit in cache, so it never streams them from
memory; and not the sgemm rate, which the fused kernel's vectorised loop exceeds. Ensemble times are the epochs alone
(``EnsembleTrainResult.train_seconds``: no set-up, compilation or final evaluation); the loop's
include its two closing evaluations, under 3 % of it at the epochs used. Medians over rounds, wall
and CPU time.

    python benchmarks/bench_ensemble.py                     # N = 1024, 8000 and 512 points, CPU
    python benchmarks/bench_ensemble.py --compile           # also torch.compile'd eager step
    python benchmarks/bench_ensemble.py --device cuda       # eager and compiled steps on a GPU
    python benchmarks/bench_ensemble.py --widths 2 4 8 16   # the fused kernel per width: one pass or a pass per group of units

``--widths`` times the fused kernel alone (``_fused.train_networks`` on F = m·a data, float32, 8000
points) for each hidden width, as the single pass over the points and as the grouped passes that
widths above ``_fused.ONE_PASS_MAX_HIDDEN`` use, in µs of the thread's CPU per network-epoch: the
minimum over interleaved rounds, since the CPU time of a shared machine only ever grows.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from _machine import Floor, Timing, describe_machine, interleaved, measure_floor, measure_fma_peak, one_thread, table, timed

from physlens.models.mlp import PARAM_NAMES, EnsembleConfig, MLPConfig, MLPEnsemble, TinyMLP
from physlens.systems.fma import fma_split, fma_splits
from physlens.training import _fused
from physlens.training.ensemble import EnsembleTrainConfig, train_ensemble, train_mlp


def flops_per_point(d_in: int, width: int) -> int:
    """FLOPs of one point in one full-batch step: forward, loss, backward (Adam on the few weights is negligible).

    Per hidden unit: pre-activation with its bias 2·d_in, ReLU 1, output 2; gradient of W_out 2, of
    the pre-activation 2 (scale, mask), of W_in 2·d_in, of b_in 1. Per point: output bias and error 2,
    squared loss 2, gradient of b_out 1. For d_in = h = 2 that is 37.
    """
    return width * (4 * d_in + 8) + 5


def ensemble_path(n_models: int, n_train: int, epochs: int, device: str, **config: object) -> Callable[[], Timing]:
    """A callable that trains a fresh ensemble for ``epochs`` and returns the seconds of the epochs alone."""
    seeds = list(range(n_models))
    data = fma_splits(seeds, n_train=n_train, n_val=16, device=device)

    def run() -> Timing:
        ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds, device=device))
        result = train_ensemble(ensemble, data, EnsembleTrainConfig(epochs=epochs, **config), progress=False)
        return Timing(result.train_seconds, result.train_cpu_seconds)

    run()  # compile, load caches, touch the data
    return run


def loop_path(n_models: int, n_train: int, epochs: int, device: str) -> Callable[[], Timing]:
    """A callable that trains ``n_models`` networks one after another with ``train_mlp``."""
    splits = [fma_split(s, n_train=n_train, n_val=16, device=device) for s in range(n_models)]
    config = EnsembleTrainConfig(epochs=epochs)

    def run() -> Timing:
        clock, _ = timed(lambda: [train_mlp(TinyMLP(MLPConfig(seed=s, device=device)), split, config) for s, split in enumerate(splits)])
        return clock

    run()
    return run


def kernel_path(width: int, n_models: int, n_train: int, epochs: int, group: int) -> Callable[[], float]:
    """A callable that trains ``n_models`` fresh float32 networks of this width for ``epochs`` with the fused
    kernel, ``group`` hidden units per pass (the width itself: one pass), and returns the thread's CPU seconds."""
    seeds = list(range(n_models))
    data = fma_splits(seeds, n_train=n_train, n_val=16)
    x, y = data.train_inputs.transpose(1, 2).contiguous().numpy(), data.train_targets[..., 0].contiguous().numpy()
    ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds, d_hidden=width))
    start = torch.cat([getattr(ensemble, name).detach().reshape(n_models, -1) for name in PARAM_NAMES], dim=1).numpy()
    n_params = start.shape[1]
    _fused.prepare(2, width, np.float32, group=group)

    def run() -> float:
        theta = start.copy()
        clock = time.thread_time()
        _fused.train_networks(
            theta, x, y, d_in=2, d_hidden=width, epochs=epochs, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
            snap_at=np.full(epochs, -1, dtype=np.int64), losses=np.empty((n_models, epochs), np.float32),
            snaps=np.empty((n_models, 0, n_params), np.float32), exp_avg=np.zeros_like(theta), exp_avg_sq=np.zeros_like(theta),
            group=group,
        )  # fmt: skip
        return time.thread_time() - clock

    return run


def compare_widths(widths: list[int], n_train: int, rounds: int, work: float) -> None:
    """Print µs of CPU per network-epoch of the fused kernel at each width, one pass against grouped passes."""
    n_models = 16
    epochs = max(2, int(work / (n_models * n_train)))
    paths: dict[tuple[int, str], Callable[[], float]] = {}
    for width in widths:
        paths[width, "one pass"] = kernel_path(width, n_models, n_train, epochs, group=width)
        if width > _fused.ONE_PASS_MAX_HIDDEN:
            paths[width, "grouped"] = kernel_path(width, n_models, n_train, epochs, group=_fused.GROUP_UNITS)
    best = {key: float("inf") for key in paths}
    for _ in range(rounds):
        for key, run in paths.items():
            best[key] = min(best[key], run() / (n_models * epochs))
    base = best[widths[0], "one pass"] / widths[0]
    print(
        f"\nfused kernel, float32, {n_train} points, {n_models} networks × {epochs} epochs, minimum of {rounds} rounds; "
        f"grouped: {_fused.GROUP_UNITS} units per pass; per unit: µs per hidden unit against width {widths[0]}'s one pass\n"
    )
    rows = []
    for width in widths:
        one = best[width, "one pass"]
        grouped = best.get((width, "grouped"))
        rows.append([
            str(width),
            f"{one * 1e6:.3g}",
            f"{one / width / base:.2f}×",
            "—" if grouped is None else f"{grouped * 1e6:.3g}",
            "—" if grouped is None else f"{grouped / width / base:.2f}×",
            "—" if grouped is None else f"{one / grouped:.2f}×",
        ])  # fmt: skip
    print(table(["width", "one pass µs (CPU)", "per unit", "grouped µs (CPU)", "per unit", "one pass / grouped"], rows))


def main() -> None:
    """Parse arguments, measure the floor, time every path for each data size, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-models", type=int, default=1024, help="networks in the ensemble")
    parser.add_argument("--n-train", type=int, nargs="+", default=[8000, 512], help="training points per network")
    parser.add_argument("--loop-models", type=int, default=8, help="networks the train_mlp loop is timed on")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--work", type=float, default=2e8, help="point-epochs per timed ensemble call (sets the epochs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd eager step")
    parser.add_argument("--widths", type=int, nargs="+", help="time only the fused kernel at these hidden widths (see above)")
    args = parser.parse_args()
    one_thread()
    if args.widths:
        compare_widths(args.widths, args.n_train[0], args.rounds, args.work)
        return
    floor: Floor = measure_floor(args.device)
    print(describe_machine(floor))
    on_cpu = torch.device(args.device).type == "cpu"
    if on_cpu:
        rate, rate_name = measure_fma_peak(torch.float32), "the peak multiply-add rate of a numba loop"
    else:  # no numba loop on a GPU: its matmul rate is the nearest measured ceiling
        rate, rate_name = floor.sgemm, "the sgemm rate"
    print(f"floor rate: {rate / 1e9:.0f} GFLOP/s float32, {rate_name}")
    for n_train in args.n_train:
        n = args.n_models
        fused_epochs = max(2, int(args.work / (n * n_train)))
        eager_epochs = max(2, fused_epochs // 20)
        loop_epochs = max(20, eager_epochs)
        paths = {}
        if on_cpu:
            paths["ensemble, fused kernel"] = ensemble_path(n, n_train, fused_epochs, args.device, backend="fused")
        paths["ensemble, eager step"] = ensemble_path(n, n_train, eager_epochs, args.device, backend="eager")
        if args.compile:
            paths["ensemble, torch.compile"] = ensemble_path(n, n_train, eager_epochs, args.device, compile=True)
        paths["train_mlp loop"] = loop_path(args.loop_models, n_train, loop_epochs, args.device)
        per_call = {
            "ensemble, fused kernel": n * fused_epochs,
            "ensemble, eager step": n * eager_epochs,
            "ensemble, torch.compile": n * eager_epochs,
            "train_mlp loop": args.loop_models * loop_epochs,
        }
        medians = interleaved(paths, args.rounds)
        per_net_epoch = {name: Timing(t.wall / per_call[name], t.cpu / per_call[name]) for name, t in medians.items()}
        floor_s = n_train * flops_per_point(2, 2) / rate
        loop = per_net_epoch["train_mlp loop"]
        rows = []
        for name, t in per_net_epoch.items():
            rows.append([
                name,
                f"{t.wall * 1e6:.3g}",
                f"{t.cpu * 1e6:.3g}",
                f"{t.cpu / floor_s:.2g}×",
                "—" if name == "train_mlp loop" else f"**{loop.cpu / t.cpu:.0f}×**",
                f"{t.cpu * n * 4000:.3g} s",
            ])  # fmt: skip
        print(
            f"\n{n_train} points per network, N = {n} (fused {fused_epochs} epochs, eager {eager_epochs}, loop "
            f"{args.loop_models} networks × {loop_epochs}); floor {floor_s * 1e6:.3g} µs per network-epoch "
            f"({flops_per_point(2, 2) * n_train / 1e3:.0f} kFLOP at {rate / 1e9:.0f} GFLOP/s)\n"
        )
        print(table(
            ["path", "µs / network-epoch (wall)", "µs (CPU)", "CPU / floor", "train_mlp loop / path (CPU)", f"{n} nets × 4000 epochs (CPU)"],
            rows,
        ))  # fmt: skip


if __name__ == "__main__":
    main()
