"""Batched ridge probe sweep against a plain numpy loop over sites, the previous accumulation, scikit-learn
``RidgeCV`` and the floor.

Every path chooses α per site and target from the same grid by the same grouped 5-fold split, so
they solve the same problem; the script checks that the chosen α and the coefficients agree. Timed
in interleaved rounds on one thread (medians, wall and CPU):

* physlens ``RidgeProbeSweep.fit`` (per-fold statistics from fold-sorted, site-major float64 blocks),
* the same with the accumulation physlens used before (an ``index_select`` and a strided ``bmm``
  per fold, separate float64 casts and finiteness passes), to measure the change,
* a plain numpy loop over sites: per fold its sums and Gram matrix, the training statistics by
  subtraction, one ``eigh``, every α's held-out predictions from it,
* scikit-learn ``RidgeCV`` with a ``PredefinedSplit``, timed on a few sites and scaled to all,

and the floor: the Gram products (2·n·sites·d·(d + t) FLOPs) at this machine's measured float64
matmul rate, or reading the float32 activations once at its read bandwidth, whichever is slower.

    python benchmarks/bench_probe_sweep.py                  # 20 000 × 64 sites × d 32, 3 targets
    python benchmarks/bench_probe_sweep.py --memory         # also the memory streaming 5k vs 80k adds
    python benchmarks/bench_probe_sweep.py --device cuda    # the batched sweep on a GPU
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import torch
from _machine import Timing, describe_machine, interleaved, measure_floor, one_thread, table, timed
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import PredefinedSplit

from physlens.probes import linear_probe
from physlens.probes.linear_probe import DEFAULT_ALPHAS, ProbeStatistics, RidgeProbeSweep, grouped_folds


def synthetic_activations(n: int, n_sites: int, d: int, n_targets: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated float32 features per site and targets that are partly linear in them, partly not."""
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 8, generator=generator)
    mixing = torch.randn(n_sites, 8, d, generator=torch.Generator().manual_seed(10_000))
    features = torch.einsum("nk,skd->nsd", latent, mixing) + 0.3 * torch.randn(n, n_sites, d, generator=generator)
    targets = torch.stack(
        [latent[:, 0], latent[:, 1] ** 2, torch.sin(latent[:, 2]) + 0.5 * latent[:, 3]][:n_targets]
        + [torch.randn(n, generator=generator) for _ in range(max(0, n_targets - 3))],
        dim=1,
    )
    return features.float(), targets.double()


class PreviousStatistics(ProbeStatistics):
    """The accumulation physlens used before: float64 copy, shift, and an index_select + bmm per fold."""

    def update(self, X: torch.Tensor, y: torch.Tensor, folds: torch.Tensor) -> None:  # noqa: D102
        for name, value in (("X", X), ("y", y)):  # the checks RidgeProbeSweep made on every chunk
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} must contain only finite values")
        X, y = X.to(self.xx), y.to(self.xx)
        if self.shift_x is None:
            self.shift_x, self.shift_y = X.mean(dim=0), y.mean(dim=0)
        X, y = X - self.shift_x, y - self.shift_y
        folds = folds.to(self.xx.device)
        for k in range(self.n_folds):
            rows = (folds == k).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            xk, yk = X.index_select(0, rows).transpose(0, 1), y.index_select(0, rows).transpose(0, 1)
            self.count[k] += len(rows)
            self.sum_x[k] += xk.sum(dim=1)
            self.sum_y[k] += yk.sum(dim=1)
            self.xx[k] += xk.transpose(1, 2) @ xk
            self.xy[k] += xk.transpose(1, 2) @ yk
            self.yy[k] += (yk**2).sum(dim=1)


def previous_fit(X: torch.Tensor, y: torch.Tensor, folds: torch.Tensor, device: str) -> RidgeProbeSweep:
    """``RidgeProbeSweep.fit`` with the previous accumulation swapped in."""
    current = linear_probe.ProbeStatistics
    linear_probe.ProbeStatistics = PreviousStatistics
    try:
        return RidgeProbeSweep(alphas=DEFAULT_ALPHAS, device=device).fit(X, y, folds=folds)
    finally:
        linear_probe.ProbeStatistics = current


def numpy_loop(X: np.ndarray, y: np.ndarray, folds: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with grouped-CV α per site and target, one site at a time: α [site, t], coef [site, d, t].

    What a careful numpy user writes: per site, each fold's sums and Gram matrix once; per fold, the
    training statistics by subtraction, one ``eigh``, and every α's held-out predictions from it.
    """
    n, n_sites, d = X.shape
    n_folds, n_targets = int(folds.max()) + 1, y.shape[1]
    rows = [np.flatnonzero(folds == k) for k in range(n_folds)]
    y_parts = [y[r] for r in rows]
    chosen, coef = np.empty((n_sites, n_targets)), np.empty((n_sites, d, n_targets))
    for s in range(n_sites):
        Xs = X[:, s].astype(np.float64)
        parts = [Xs[r] for r in rows]
        stats = [(len(r), p.sum(axis=0), q.sum(axis=0), p.T @ p, p.T @ q) for r, p, q in zip(rows, parts, y_parts)]
        total = [sum(values) for values in zip(*stats)]
        sse = np.zeros((len(alphas), n_targets))
        for k in range(n_folds):
            count, sum_x, sum_y, gram, cross = (t - f for t, f in zip(total, stats[k]))
            mean_x, mean_y = sum_x / count, sum_y / count
            evals, evecs = np.linalg.eigh(gram - count * np.outer(mean_x, mean_x))
            rotated_cross = evecs.T @ (cross - count * np.outer(mean_x, mean_y))  # [d, t]
            rotated_test = (parts[k] - mean_x) @ evecs
            for a, alpha in enumerate(alphas):
                prediction = rotated_test @ (rotated_cross / (evals + alpha)[:, None]) + mean_y
                sse[a] += ((y_parts[k] - prediction) ** 2).sum(axis=0)
        best = sse.argmin(axis=0)
        count, sum_x, sum_y, gram, cross = total
        mean_x, mean_y = sum_x / count, sum_y / count
        evals, evecs = np.linalg.eigh(gram - count * np.outer(mean_x, mean_x))
        rotated_cross = evecs.T @ (cross - count * np.outer(mean_x, mean_y))
        coef[s] = evecs @ (rotated_cross / (evals[:, None] + alphas[best][None, :]))
        chosen[s] = alphas[best]
    return chosen, coef


def _status_kib(field: str) -> int:
    """A field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def stream_peak_rss(n_traj: int, n_sites: int, d: int, chunk: int) -> None:
    """Stream ``n_traj`` synthetic trajectories through partial_fit in chunks; print the resident memory in
    MiB before the sweep (the baseline) and its peak during the sweep.

    Run in a fresh process: ``getrusage``'s ``ru_maxrss`` would not do, because Linux carries it over
    fork and exec from the parent (about 1 GiB here, after the timed paths). Instead the peak is the
    kernel's high-water mark of this process's resident set, reset once the imports, a warm-up fit and
    the data are in memory (writing 5 to /proc/self/clear_refs), so it covers the sweep alone. The data
    are four chunks generated before the baseline and streamed in turn (with fresh folds each time):
    generating every chunk afresh would add the allocator's growth from the generator's temporaries,
    which is not the sweep's.
    """
    X, y = synthetic_activations(8, n_sites, d, 3, seed=0)  # warm-up: torch's first calls allocate their pools
    RidgeProbeSweep(alphas=DEFAULT_ALPHAS).fit(X, y, folds=torch.arange(8) % 5)
    chunks = [synthetic_activations(chunk, n_sites, d, 3, seed=k) for k in range(4)]
    sweep = RidgeProbeSweep(alphas=DEFAULT_ALPHAS)
    baseline = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:  # resets VmHWM to the current resident set
        refs.write("5")
    for k, start in enumerate(range(0, n_traj, chunk)):
        X, y = chunks[k % len(chunks)]
        rows = min(chunk, n_traj - start)
        sweep.partial_fit(X[:rows], y[:rows], grouped_folds(torch.arange(rows), 5, seed=start))
    sweep.finalize()
    print(baseline / 1024, _status_kib("VmHWM") / 1024)


def main() -> None:
    """Parse arguments, measure the floor, time every path, check they agree, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-traj", type=int, default=20_000)
    parser.add_argument("--n-sites", type=int, default=64)
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--device", default="cpu", help="where the batched sweep runs (cpu, cuda, ...)")
    parser.add_argument("--sklearn-sites", type=int, default=2, help="sites scikit-learn is timed on (0: skip it)")
    parser.add_argument("--memory", action="store_true", help="peak memory when streaming 5k and 80k trajectories")
    parser.add_argument("--stream-rss", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    one_thread()
    if args.stream_rss:
        stream_peak_rss(args.stream_rss, args.n_sites, args.d, 1024)
        return
    floor = measure_floor(args.device)
    print(describe_machine(floor))
    X, y = synthetic_activations(args.n_traj, args.n_sites, args.d, args.targets, args.seed)
    folds = grouped_folds(torch.arange(args.n_traj), args.folds, seed=args.seed)
    alphas = np.array(DEFAULT_ALPHAS)
    X_np, y_np, folds_np = X.numpy(), y.numpy(), folds.numpy()
    device = torch.device(args.device)
    X_dev, y_dev, folds_dev = X.to(device), y.to(device), folds.to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    results: dict[str, object] = {}

    def path(name: str, fit: Callable[[], object]) -> Callable[[], Timing]:
        def run() -> Timing:
            sync()
            clock, results[name] = timed(lambda: (fit(), sync())[0])
            return clock

        return run

    paths = {
        "physlens RidgeProbeSweep.fit": path(
            "physlens", lambda: RidgeProbeSweep(alphas=DEFAULT_ALPHAS, device=str(device)).fit(X_dev, y_dev, folds=folds_dev)
        ),
        "physlens, previous accumulation": path("previous", lambda: previous_fit(X_dev, y_dev, folds_dev, str(device))),
        "numpy loop over sites (one eigh per fold)": path("numpy", lambda: numpy_loop(X_np, y_np, folds_np, alphas)),
    }
    medians = interleaved(paths, args.rounds)
    sweep, previous = results["physlens"], results["previous"]
    numpy_alpha, numpy_coef = results["numpy"]
    checks = [
        f"previous accumulation: α agrees on {int((previous.alpha_ == sweep.alpha_).sum())}/{sweep.alpha_.numel()}, "
        f"max |coef difference| {float((previous.coef_ - sweep.coef_).abs().max()):.1e}",
        f"numpy loop: α agrees on {int((numpy_alpha == sweep.alpha_.cpu().numpy()).sum())}/{numpy_alpha.size}, "
        f"max |coef difference| {np.abs(numpy_coef - sweep.coef_.cpu().numpy()).max():.1e}",
    ]
    if args.sklearn_sites:
        sites = min(args.sklearn_sites, args.n_sites)
        X64, split, agree, gap = X_np.astype(np.float64), PredefinedSplit(folds_np), 0, 0.0

        def sklearn_loop() -> None:
            nonlocal agree, gap
            for s in range(sites):
                for t in range(args.targets):
                    reference = RidgeCV(alphas=DEFAULT_ALPHAS, cv=split).fit(X64[:, s], y_np[:, t])
                    agree += float(sweep.alpha_[s, t]) == reference.alpha_
                    gap = max(gap, float(np.abs(sweep.coef_[s, :, t].cpu().numpy() - reference.coef_).max()))

        clock, _ = timed(sklearn_loop)
        scale = args.n_sites / sites
        medians[f"scikit-learn RidgeCV loop (timed on {sites} sites, scaled)"] = Timing(clock.wall * scale, clock.cpu * scale)
        checks.append(f"scikit-learn: α agrees on {agree}/{sites * args.targets}, max |coef difference| {gap:.1e}")

    n, s, d, t = args.n_traj, args.n_sites, args.d, args.targets
    floor_s = floor.seconds(2 * n * s * d * (d + t), n * s * d * 4, torch.float64)
    ours = medians["physlens RidgeProbeSweep.fit"]
    print(
        f"\n{n} trajectories × {s} sites × d {d}, {t} targets, {len(DEFAULT_ALPHAS)} α, {args.folds} folds, "
        f"device {device}; floor {floor_s:.3f} s; medians of {args.rounds} interleaved rounds\n"
    )
    rows = [
        [name, f"{tm.wall:.3g} s", f"{tm.cpu:.3g} s", f"{tm.cpu / floor_s:.2g}×",
         "—" if tm is ours else f"**{tm.cpu / ours.cpu:.1f}×**"]
        for name, tm in medians.items()
    ]  # fmt: skip
    print(table(["path", "wall", "CPU", "CPU / floor", "CPU time / physlens"], rows))
    print()
    for line in checks:
        print(line)
    if args.memory:
        print()
        for n_traj in (5_000, 80_000):
            command = [sys.executable, __file__, "--stream-rss", str(n_traj), "--n-sites", str(s), "--d", str(d)]
            baseline, peak = map(float, subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[-2:])
            print(
                f"streaming {n_traj} trajectories in chunks of 1024 (fresh process): resident {baseline:.0f} MiB before "
                f"the sweep, peak {peak:.0f} MiB during it, so the sweep adds {peak - baseline:.1f} MiB"
            )


if __name__ == "__main__":
    main()
