"""Batched ensemble training vs a Python loop over single networks (F = m·a, full-batch Adam).

Times `train_ensemble` on N networks and the plain loop (one `TinyMLP` after another with
`train_mlp`: autograd + torch.optim.Adam; and a bare `nn.Sequential` loop with no hooks) for a
few epochs, then extrapolates both to the full recipe. Both costs grow linearly in epochs, and the
loop's linearly in models, so the loop is timed on a subset of models and scaled up; the output
says which numbers are measured and which are extrapolated.

    python benchmarks/bench_ensemble.py                  # N = 1024, 8000 points, CPU
    python benchmarks/bench_ensemble.py --compile        # fuse the batched step with torch.compile
    python benchmarks/bench_ensemble.py --device cuda    # on a GPU
"""

from __future__ import annotations

import argparse
import time

import torch

from physlens.models.mlp import EnsembleConfig, MLPConfig, MLPEnsemble, TinyMLP
from physlens.systems.fma import fma_split, fma_splits
from physlens.training.ensemble import EnsembleTrainConfig, train_ensemble, train_mlp


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _Clock:
    """Wall-clock and process CPU seconds of a block (CPU time is fairer on a busy shared machine)."""

    def __enter__(self) -> _Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def time_ensemble(n_models: int, n_train: int, epochs: int, device: str, compile_step: bool) -> tuple[float, float]:
    """Seconds per epoch for the whole ensemble (after one untimed warm-up call)."""
    seeds = list(range(n_models))
    data = fma_splits(seeds, n_train=n_train, n_val=16, device=device)
    warm = MLPEnsemble(EnsembleConfig(seeds=seeds, device=device))
    train_ensemble(warm, data, EnsembleTrainConfig(epochs=2, compile=compile_step), progress=False)
    ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds, device=device))
    _sync(device)
    with _Clock() as clock:
        train_ensemble(ensemble, data, EnsembleTrainConfig(epochs=epochs, compile=compile_step), progress=False)
        _sync(device)
    return clock.wall / epochs, clock.cpu / epochs


def time_loop(n_models: int, n_train: int, epochs: int, device: str) -> tuple[float, float]:
    """Seconds per epoch per network for one TinyMLP after another (train_mlp)."""
    train_mlp(TinyMLP(MLPConfig(seed=0, device=device)), fma_split(0, n_train=n_train, n_val=16, device=device),
              EnsembleTrainConfig(epochs=2))
    splits = [fma_split(s, n_train=n_train, n_val=16, device=device) for s in range(n_models)]
    _sync(device)
    with _Clock() as clock:
        for s, split in enumerate(splits):
            train_mlp(TinyMLP(MLPConfig(seed=s, device=device)), split, EnsembleTrainConfig(epochs=epochs))
        _sync(device)
    return clock.wall / epochs / n_models, clock.cpu / epochs / n_models


def time_bare_loop(n_models: int, n_train: int, epochs: int, device: str) -> tuple[float, float]:
    """Seconds per epoch per network for the most plain PyTorch: nn.Sequential + Adam, no hooks."""
    splits = [fma_split(s, n_train=n_train, n_val=16, device=device) for s in range(n_models)]
    _sync(device)
    clock = _Clock().__enter__()
    for split in splits:
        net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1)).to(device)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = (net(split.train_inputs) - split.train_targets).square().mean()
            loss.backward()
            optimizer.step()
    _sync(device)
    clock.__exit__()
    return clock.wall / epochs / n_models, clock.cpu / epochs / n_models


def main() -> None:
    """Parse arguments, time both ways, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-models", type=int, default=1024)
    parser.add_argument("--n-train", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=20, help="epochs actually timed")
    parser.add_argument("--full-epochs", type=int, default=4000, help="epochs of the recipe extrapolated to")
    parser.add_argument("--loop-models", type=int, default=16, help="networks the loop is actually timed on")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the batched step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {args.n_train} training points per network")
    ensemble = time_ensemble(args.n_models, args.n_train, args.epochs, args.device, args.compile)
    loop = time_loop(args.loop_models, args.n_train, args.epochs, args.device)
    bare = time_bare_loop(args.loop_models, args.n_train, args.epochs, args.device)
    full, n = args.full_epochs, args.n_models
    step = "compiled" if args.compile else "eager"
    for k, clock in enumerate(("wall-clock", "CPU")):
        print(f"[{clock} time] measured over {args.epochs} epochs: ensemble ({step}) of {n} networks "
              f"{ensemble[k] * 1e3:.1f} ms per epoch ({ensemble[k] / n * 1e6:.1f} µs per network-epoch); "
              f"train_mlp loop over {args.loop_models} networks {loop[k] * 1e6:.1f} µs per network-epoch; "
              f"bare nn.Sequential loop {bare[k] * 1e6:.1f} µs per network-epoch")
        print(f"[{clock} time] extrapolated to {n} networks x {full} epochs: ensemble {ensemble[k] * full:.0f} s, "
              f"train_mlp loop {loop[k] * full * n:.0f} s, bare loop {bare[k] * full * n:.0f} s")
        print(f"[{clock} time] ratio loop / ensemble: {loop[k] * n / ensemble[k]:.1f}x vs train_mlp, "
              f"{bare[k] * n / ensemble[k]:.1f}x vs bare loop")


if __name__ == "__main__":
    main()
