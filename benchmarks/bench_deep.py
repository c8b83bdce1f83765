"""Ensemble training of F = m·a networks with several hidden layers: the fused kernel against the eager step
and the floor.

For each data size, in interleaved rounds on one thread, it times a network-epoch (one full-batch
Adam step of one network) of ``train_deep_ensemble`` with

* the fused CPU kernel (``backend="fused"``),
* the eager torch step (``backend="eager"``: hand-written gradients, one ``torch.optim.Adam``),

and the floor: the step's arithmetic (:func:`flops_per_point`) at this core's peak multiply-add rate,
measured by a minimal numba loop (``_machine.measure_fma_peak``). Times are the epochs alone
(``DeepTrainResult.train_seconds``: no set-up, compilation or final evaluation); medians over
rounds, wall and CPU time. The default shape is the F = m·a study's (``probes/fma.toml``): 128
networks with two hidden layers of width 2.

    python benchmarks/bench_deep.py                        # hidden [2, 2], N = 128, 8000 and 512 points
    python benchmarks/bench_deep.py --hidden 4 4 --n-models 64
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch
from _machine import Timing, describe_machine, interleaved, measure_floor, measure_fma_peak, one_thread, table

from physlens.models.mlp import DeepEnsembleConfig, DeepMLPEnsemble
from physlens.systems.fma import fma_splits
from physlens.training.deep import train_deep_ensemble
from physlens.training.ensemble import EnsembleTrainConfig


def flops_per_point(widths: Sequence[int]) -> int:
    """FLOPs of one point in one full-batch step of a ReLU network of these widths: forward, loss, backward.

    Forward: per unit of a layer with fan-in k, 2k (its weights and bias), plus 1 for a hidden unit's
    ReLU; the output's error 1 and the squared loss 2. Backward, per layer: per output unit, 1 for its
    bias's sum and 2 per weight's; into a hidden layer, per unit, 2 per outgoing weight (a product and
    a sum, the first one's add standing for the ReLU's select). Adam on the few weights is negligible.
    """
    layers = list(zip(widths[:-1], widths[1:]))
    forward = sum(fan_out * 2 * fan_in for fan_in, fan_out in layers) + sum(widths[1:-1]) + 3
    backward = sum(fan_out * (1 + 2 * fan_in) for fan_in, fan_out in layers)
    backward += sum(fan_in * 2 * fan_out for fan_in, fan_out in layers[1:])
    return forward + backward


def deep_path(seeds: list[int], hidden: list[int], n_train: int, epochs: int, backend: str) -> Callable[[], Timing]:
    """A callable that trains a fresh deep ensemble for ``epochs`` and returns the seconds of the epochs alone."""
    data = fma_splits(seeds, n_train=n_train, n_val=16)

    def run() -> Timing:
        ensemble = DeepMLPEnsemble(DeepEnsembleConfig(seeds=seeds, d_hidden=hidden))
        result = train_deep_ensemble(ensemble, data, EnsembleTrainConfig(epochs=epochs, backend=backend), progress=False)
        assert result.backend == backend
        return Timing(result.train_seconds, result.train_cpu_seconds)

    run()  # compile, load caches, touch the data
    return run


def main() -> None:
    """Parse arguments, measure the floor, time both paths for each data size, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[2, 2], help="widths of the hidden layers")
    parser.add_argument("--n-models", type=int, default=128, help="networks in the ensemble")
    parser.add_argument("--n-train", type=int, nargs="+", default=[8000, 512], help="training points per network")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--work", type=float, default=2e8, help="point-epochs per timed fused call (sets the epochs)")
    args = parser.parse_args()
    one_thread()
    print(describe_machine(measure_floor()))
    rate = measure_fma_peak(torch.float32)
    widths = [2, *args.hidden, 1]
    flops = flops_per_point(widths)
    print(f"floor rate: {rate / 1e9:.0f} GFLOP/s float32, the peak multiply-add rate of a numba loop; widths {widths}, {flops} FLOPs per point")
    seeds = list(range(args.n_models))
    for n_train in args.n_train:
        n = args.n_models
        fused_epochs = max(2, int(args.work / (n * n_train)))
        eager_epochs = max(2, fused_epochs // 20)
        paths = {
            "deep ensemble, fused kernel": deep_path(seeds, args.hidden, n_train, fused_epochs, "fused"),
            "deep ensemble, eager step": deep_path(seeds, args.hidden, n_train, eager_epochs, "eager"),
        }
        per_call = {"deep ensemble, fused kernel": n * fused_epochs, "deep ensemble, eager step": n * eager_epochs}
        medians = interleaved(paths, args.rounds)
        per_net_epoch = {name: Timing(t.wall / per_call[name], t.cpu / per_call[name]) for name, t in medians.items()}
        floor_s = n_train * flops / rate
        eager = per_net_epoch["deep ensemble, eager step"]
        rows = [
            [name, f"{t.wall * 1e6:.3g}", f"{t.cpu * 1e6:.3g}", f"{t.cpu / floor_s:.2g}×",
             "—" if t is eager else f"**{eager.cpu / t.cpu:.0f}×**", f"{t.cpu * n * 4000:.3g} s"]
            for name, t in per_net_epoch.items()
        ]  # fmt: skip
        print(
            f"\n{n_train} points per network, N = {n} (fused {fused_epochs} epochs, eager {eager_epochs}); floor "
            f"{floor_s * 1e6:.3g} µs per network-epoch ({flops * n_train / 1e3:.0f} kFLOP at {rate / 1e9:.0f} GFLOP/s); "
            f"medians of {args.rounds} interleaved rounds\n"
        )
        print(table(["path", "µs / network-epoch (wall)", "µs (CPU)", "CPU / floor", "eager / path (CPU)", f"{n} nets × 4000 epochs (CPU)"], rows))


if __name__ == "__main__":
    main()
