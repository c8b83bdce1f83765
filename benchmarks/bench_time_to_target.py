"""Time to target of the variable-ω0 study: its own training recipe against a faster one, over seeds.

For every study seed (``[study] seed``, which seeds the model's initialisation and the batch stream)
and every recipe, in turn, it trains the study's model on one torch thread, measures the training's
CPU time (``time.thread_time``: one thread, so the machine's other load does not count), then judges
the trained model by the study's own pre-registered criteria on its own evaluation set (next-step MSE,
median error at the horizon, and the paired comparison with the float64 linear references). A recipe
reaches the target on a seed when the study's verdict is "works"; its time to target is then the
training CPU time.

* ``old``: the study's earlier recipe, the study file's ``[training]`` table with :data:`OLD` in place of
  its speed options (5500 steps of 128 trajectories on all 40 positions);
* ``new``: the study file's ``[training]`` table as it stands (the recipe the shipped checkpoint comes from).

    python benchmarks/bench_time_to_target.py                           # seeds 0 1 2, both recipes
    python benchmarks/bench_time_to_target.py --recipes new --seeds 0   # one recipe, one seed
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

from _machine import one_thread, table

from physlens.studies import load_study
from physlens.studies.oscillator import parse_study
from physlens.training import train
from physlens.training.evaluation import LINEAR_AR, evaluate_task, fit_linear_references

STUDY = Path(__file__).resolve().parents[1] / "probes" / "oscillator_variable.toml"

OLD = {
    "steps": 5500,
    "batch_size": 128,
    "warmup_steps": 200,
    "curriculum": [],  # every step on all 40 positions
    "presample_steps": 1,
    "fused_optimizer": False,
}
"""The study's earlier recipe: what it changes in the study file's ``[training]`` table."""


def run_one(spec: dict, seed: int, overrides: dict, n_traj: int) -> dict:
    """Train the study's model with its ``[training]`` table updated by ``overrides``; CPU seconds and verdict."""
    spec = copy.deepcopy(spec)
    spec["study"]["seed"] = seed
    spec["training"].update(overrides)
    study = parse_study(spec)
    options = study.evaluation
    cpu, wall = time.thread_time(), time.perf_counter()
    train(study.model, study.system, study.train_config, progress=False)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    study.model.eval()
    horizon = options.criteria.horizon
    references = fit_linear_references(study.system, options.context_len, seed=study.seeds["reference fits"])
    evaluation = evaluate_task(study.model, study.system, n_traj=n_traj, context_len=options.context_len, n_steps=horizon,
                               seed=study.seeds["evaluation"], references=references)
    verdict = evaluation.judge(options.criteria)
    return {
        "cpu": cpu, "wall": wall, "steps": study.train_config.steps, "works": verdict.works, "status": verdict.status,
        "mse": evaluation.next_step_mse().estimate, "error": evaluation.rollout_median(horizon=horizon).estimate,
        "ar_error": evaluation.rollout_median(LINEAR_AR, horizon=horizon).estimate, "horizon": horizon,
    }  # fmt: skip


def main() -> None:
    """Parse arguments, train every recipe on every seed in turn, print the table and the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=STUDY)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", choices=["old", "new"], default=["old", "new"])
    parser.add_argument("--n-traj", type=int, default=0, help="evaluation trajectories (0: the study's)")
    args = parser.parse_args()
    one_thread()
    spec = load_study(args.study)
    n_traj = args.n_traj or spec["evaluation"]["n_trajectories"]
    print(f"study {args.study.name}: new recipe its [training] table, old recipe that table with {OLD}; one torch thread, training CPU time (thread)")
    rows, results = [], {name: [] for name in args.recipes}
    for seed in args.seeds:
        for name in args.recipes:
            r = run_one(spec, seed, OLD if name == "old" else {}, n_traj)
            results[name].append(r)
            rows.append([name, str(seed), str(r["steps"]), f"{r['cpu']:.0f} s", f"{r['wall']:.0f} s", f"{r['mse']:.2e}",
                         f"{r['error']:.3f}", f"{r['ar_error']:.3f}", r["status"]])  # fmt: skip
            print(" | ".join(rows[-1]), flush=True)
    h = results[args.recipes[0]][0]["horizon"]
    print()
    print(table(["recipe", "seed", "steps", "training CPU", "wall", "next-step MSE", f"median error at {h}",
                 f"float64 AR at {h}", "study verdict"], rows))  # fmt: skip
    print()
    for name, runs in results.items():
        met = [r["cpu"] for r in runs if r["works"]]
        print(f"{name}: target met on {len(met)} of {len(runs)} seeds; training CPU median {statistics.median(r['cpu'] for r in runs):.0f} s"
              + (f", time to target where met {', '.join(f'{t:.0f} s' for t in met)}" if met else ""))


if __name__ == "__main__":
    main()
