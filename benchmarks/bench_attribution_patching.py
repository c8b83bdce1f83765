"""Attribution patching vs exact activation patching on a trained variable-ω0 transformer.

Trains a small causal transformer with MLPs on oscillators with ω0 ~ U[1, 4] (one thread, about a
minute), checks that it does its task (against persistence and a closed-form linear filter), then
patches every site of every layer and position on the same clean/corrupted pairs (same initial
state, ω0 at least 0.5 apart) two ways: exactly (one forward pass per cell) and by attribution
patching (one backward pass for everything). Prints, per site, the correlation of the per-cell mean
recoveries, the largest error, and the time ratio; the same comparison on the untrained
(random-init) model is the control.

    OMP_NUM_THREADS=1 python benchmarks/bench_attribution_patching.py
    OMP_NUM_THREADS=1 python benchmarks/bench_attribution_patching.py --steps 300 --pairs 16   # quick
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from physlens.models import LinearAutoregressive, OscillatorTransformer, TransformerConfig
from physlens.probes import attribution_patching_all_sites, patching_agreement, patching_pairs, patching_sweep
from physlens.probes.patching import SITES
from physlens.systems import OscillatorSystem, Uniform
from physlens.training import TrainConfig, train


def relative_errors(prediction: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """‖prediction − truth‖ / ‖truth‖ per example."""
    return (torch.linalg.vector_norm(prediction - truth, dim=-1) / torch.linalg.vector_norm(truth, dim=-1)).numpy()


def compare(model: OscillatorTransformer, clean: torch.Tensor, corrupted: torch.Tensor) -> list[dict]:
    """Exact and attribution patching at every site the model has; one row per site."""
    start = time.perf_counter()
    estimates = attribution_patching_all_sites(model, clean, corrupted)
    attribution_time = time.perf_counter() - start
    rows = []
    for site in [s for s in SITES if s in estimates]:
        start = time.perf_counter()
        exact = patching_sweep(model, clean, corrupted, site=site)
        exact_time = time.perf_counter() - start
        agreement = patching_agreement(exact, estimates[site])
        rows.append({"site": site, "exact_time": exact_time, **agreement.to_dict()})
    rows.append({"site": "all", "attribution_time": attribution_time})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = np.random.SeedSequence(args.seed).generate_state(4)  # model init, training batches, test data, pairs

    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=0.1, dt=0.1, energy_range=(0.0, 1.0), dtype="float64")
    cfg = TransformerConfig(
        d_model=16, n_layers=2, n_heads=2, d_head=8, n_ctx=args.seq_len, causal=True, attn_only=False,
        seed=int(seeds[0]) % 2**31, dtype="float64",
    )
    model = OscillatorTransformer(cfg)
    untrained = copy.deepcopy(model)
    config = TrainConfig(
        steps=args.steps, batch_size=128, lr=1e-2, seq_len=args.seq_len, loss_positions="all", schedule="cosine",
        warmup_steps=min(100, args.steps // 10), grad_clip=1.0, seed=int(seeds[1]) % 2**31,
    )
    start = time.perf_counter()
    result = train(model, system, config, progress=False)
    print(f"model: {cfg.n_layers} layers × {cfg.n_heads} heads, d_model {cfg.d_model}, causal, MLP; "
          f"{config.steps} steps in {time.perf_counter() - start:.0f} s, final training loss {result.final_loss:.2e}")

    # Does it do its task? Last-position next-step error on fresh trajectories.
    test = system.sample(512, args.seq_len + 1, seed=int(seeds[2]) % 2**31)
    inputs, truth = test.states[:, :-1], test.states[:, -1]
    with torch.no_grad():
        predicted = model(inputs)[:, -1]
    linear = LinearAutoregressive(window=args.seq_len).fit(system.sample(4096, args.seq_len + 1, seed=int(seeds[2]) % 2**31 + 1).states)
    baselines = {
        "transformer": relative_errors(predicted, truth),
        f"linear filter over {args.seq_len} states (closed form)": relative_errors(linear(inputs)[:, -1], truth),
        "persistence (next = current)": relative_errors(inputs[:, -1], truth),
    }
    print("median relative next-step error at the last position (exact propagator: 0):")
    for name, errors in baselines.items():
        print(f"  {name:<45} {np.median(errors):.2e}")

    clean, corrupted = patching_pairs(system, args.pairs, args.seq_len, vary="omega0", seed=int(seeds[3]) % 2**31)
    for label, subject in (("trained", model), ("random-init control", untrained)):
        rows = compare(subject, clean.states, corrupted.states)
        total = rows.pop()
        print(f"\n{label}: {args.pairs} pairs; attribution patching of all {len(rows)} sites took {total['attribution_time']:.2f} s")
        print(f"  {'site':<11}{'cells':>6}{'pearson [95% CI over pairs]':>29}{'spearman':>10}{'r (every example)':>19}"
              f"{'max |err|':>11}{'exact s':>9}{'time ratio':>12}")
        for row in rows:
            low, high = row["pearson_interval"]
            interval = f"{row['pearson']:.3f} [{low:.3f}, {high:.3f}]"
            print(f"  {row['site']:<11}{row['n_cells']:>6}{interval:>29}{row['spearman']:>10.3f}{row['pearson_examples']:>19.3f}"
                  f"{row['max_abs_error']:>11.3f}{row['exact_time']:>9.2f}{row['exact_time'] / total['attribution_time']:>11.1f}×")
        exact_total = sum(row["exact_time"] for row in rows)
        print(f"  {'all sites':<11}{sum(row['n_cells'] for row in rows):>6}{'':>69}{exact_total:>9.2f}"
              f"{exact_total / total['attribution_time']:>11.1f}×")


if __name__ == "__main__":
    main()
