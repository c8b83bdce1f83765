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
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from _machine import Floor, Timing, describe_machine, interleaved, measure_floor, measure_fma_peak, one_thread, table, timed

from physlens.models.mlp import EnsembleConfig, MLPConfig, MLPEnsemble, TinyMLP
from physlens.systems.fma import fma_split, fma_splits
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
    args = parser.parse_args()
    one_thread()
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
