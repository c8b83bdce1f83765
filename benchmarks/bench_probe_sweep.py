"""Batched ridge probe sweep vs a per-site scikit-learn RidgeCV loop on the same activations.

Both choose α per site and target from the same grid by the same grouped 5-fold split (a
``PredefinedSplit``), so they solve the same problem; the script checks that the chosen α and the
coefficients agree, and prints the wall-time ratio.

    python benchmarks/bench_probe_sweep.py                      # 20 000 × 64 sites × d 32, 3 targets
    python benchmarks/bench_probe_sweep.py --device cuda        # the batched sweep on a GPU
    python benchmarks/bench_probe_sweep.py --sklearn-sites 16   # time scikit-learn on 16 sites, scale up
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import PredefinedSplit

from physlens.probes.linear_probe import DEFAULT_ALPHAS, RidgeProbeSweep, grouped_folds


def synthetic_activations(n: int, n_sites: int, d: int, n_targets: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated float32 features per site and targets that are partly linear in them, partly not."""
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 8, generator=generator)
    mixing = torch.randn(n_sites, 8, d, generator=generator)
    features = torch.einsum("nk,skd->nsd", latent, mixing) + 0.3 * torch.randn(n, n_sites, d, generator=generator)
    targets = torch.stack(
        [latent[:, 0], latent[:, 1] ** 2, torch.sin(latent[:, 2]) + 0.5 * latent[:, 3]][:n_targets]
        + [torch.randn(n, generator=generator) for _ in range(max(0, n_targets - 3))],
        dim=1,
    )
    return features.float(), targets.double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-traj", type=int, default=20_000)
    parser.add_argument("--n-sites", type=int, default=64)
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="where the batched sweep runs (cpu, cuda, ...)")
    parser.add_argument("--sklearn-sites", type=int, default=None, help="time scikit-learn on this many sites and scale to all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    X, y = synthetic_activations(args.n_traj, args.n_sites, args.d, args.targets, args.seed)
    folds = grouped_folds(torch.arange(args.n_traj), args.folds, seed=args.seed)
    print(f"activations: {args.n_traj} trajectories × {args.n_sites} sites × d {args.d}, {args.targets} targets, "
          f"{len(DEFAULT_ALPHAS)} alphas, {args.folds} folds; torch threads {torch.get_num_threads()}")

    device = torch.device(args.device)
    X_device, y_device = X.to(device), y.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    sweep = RidgeProbeSweep(alphas=DEFAULT_ALPHAS, n_folds=args.folds, device=str(device)).fit(X_device, y_device, folds=folds.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    ours = time.perf_counter() - start
    print(f"batched sweep ({device}): {ours:.2f} s")

    sites = args.n_sites if args.sklearn_sites is None else min(args.sklearn_sites, args.n_sites)
    X_np, y_np, split = X.double().numpy(), y.numpy(), PredefinedSplit(folds.numpy())
    alpha_agree, coef_gap = 0, 0.0
    start = time.perf_counter()
    for s in range(sites):
        for t in range(args.targets):
            reference = RidgeCV(alphas=DEFAULT_ALPHAS, cv=split).fit(X_np[:, s], y_np[:, t])
            alpha_agree += float(sweep.alpha_[s, t]) == reference.alpha_
            coef_gap = max(coef_gap, float(np.abs(sweep.coef_[s, :, t].cpu().numpy() - reference.coef_).max()))
    theirs = (time.perf_counter() - start) * args.n_sites / sites
    scaled = "" if sites == args.n_sites else f" (timed on {sites} sites, scaled to {args.n_sites})"
    print(f"scikit-learn RidgeCV loop over sites × targets: {theirs:.2f} s{scaled}")
    print(f"chosen alpha agrees on {alpha_agree}/{sites * args.targets} site-targets; max |coef difference| {coef_gap:.2e}")
    print(f"speed-up (scikit-learn / batched): {theirs / ours:.1f}x")


if __name__ == "__main__":
    main()
