"""Transformer training steps and rollouts, eager against ``torch.compile``, and against the floor.

The model, the system and the training recipe are read from a study file
(``probes/oscillator_variable.toml`` by default) through the library's own study parser, so the
benchmark times the model that study trains and cannot drift from it; only the number of steps per
timed call is changed. Timed in interleaved rounds on one thread (medians, wall and CPU):

* ``train`` for a few steps with ``TrainConfig(compile=False)`` and ``compile=True`` (fresh batch
  sampling, forward, backward and AdamW: the whole step a study runs), after one untimed call that
  compiles;
* ``rollout`` of 64 trajectories for 100 steps from ``seq_len`` states of context, eager and ``compile=True``.

The floor is the step's matmul FLOPs (counted by ``torch.utils.flop_counter`` on the study's loss:
its batch size, sequence length and scored positions) at this machine's measured sgemm rate.

    python benchmarks/bench_transformer.py
    python benchmarks/bench_transformer.py --study probes/oscillator_variable_gamma.toml
    python benchmarks/bench_transformer.py --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from collections.abc import Callable

import torch
from _machine import Timing, describe_machine, interleaved, measure_floor, one_thread, table, timed
from torch.utils.flop_counter import FlopCounterMode

from physlens.studies import load_study
from physlens.studies.oscillator import parse_study
from physlens.training import rollout, train
from physlens.training.trainer import loss_slice

STUDY = Path(__file__).resolve().parents[1] / "probes" / "oscillator_variable.toml"


def main() -> None:
    """Parse arguments, compile, time eager and compiled training and rollout, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=STUDY, help="the oscillator study whose model and recipe are timed")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed call")
    parser.add_argument("--rollout-steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    one_thread()
    floor = measure_floor(args.device)
    print(describe_machine(floor))
    device = torch.device(args.device)
    spec = load_study(args.study)
    if args.device != "cpu":
        spec.setdefault("model", {})["device"] = args.device
    study = parse_study(spec)
    model, system, recipe = study.model, study.system, study.train_config
    dtype = next(model.parameters()).dtype
    seq_len, batch_size = recipe.seq_len, recipe.batch_size

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def training(compile_step: bool) -> Callable[[], Timing]:
        config = dataclasses.replace(recipe, steps=args.steps, compile=compile_step, checkpoint_every=None)

        def run() -> Timing:
            clock, _ = timed(lambda: (train(model, system, config, progress=False), sync()))
            return Timing(clock.wall / args.steps, clock.cpu / args.steps)

        return run

    context = system.sample(64, seq_len, seed=1).to(device=device, dtype=dtype).states

    # FLOPs first, on the untouched eager model (the counter's module hooks and compiled frames do not mix)
    batch = system.sample(batch_size, seq_len + 1, seed=0).to(device=device, dtype=dtype)
    inputs, targets = batch.inputs_targets()
    scored = loss_slice(recipe.loss_positions, seq_len)
    with FlopCounterMode(display=False) as counter:
        loss = (model(inputs)[:, scored] - targets[:, scored]).pow(2).mean()
        loss.backward()
    train_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:  # with grad: the counter fails under no_grad (torch 2.13)
        model(context)
    rollout_flops = counter.get_total_flops()
    model.zero_grad(set_to_none=True)

    def rolling(compile_step: bool) -> Callable[[], Timing]:
        def run() -> Timing:
            clock, _ = timed(lambda: (rollout(model, context, args.rollout_steps, compile=compile_step), sync()))
            return Timing(clock.wall / args.rollout_steps, clock.cpu / args.rollout_steps)

        return run

    paths = {
        "training step, eager": training(False),
        "training step, torch.compile": training(True),
        "rollout step, eager": rolling(False),
        "rollout step, torch.compile": rolling(True),
    }
    started = time.perf_counter()
    for path in paths.values():  # compiles the two compiled paths
        path()
    print(f"first calls (compiling) took {time.perf_counter() - started:.0f} s")
    medians = interleaved(paths, args.rounds)

    floors = {"training": floor.seconds(train_flops, 0, dtype), "rollout": floor.seconds(rollout_flops, 0, dtype)}
    cfg = model.cfg
    print(
        f"\nstudy {args.study.name}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads of {cfg.d_head}, "
        f"MLP width {0 if cfg.attn_only else cfg.d_mlp}, causal {cfg.causal}, scale_by_first_state "
        f"{getattr(cfg, 'scale_by_first_state', False)}, {cfg.dtype}; training batch {batch_size} × {seq_len}, loss on "
        f"positions {scored.start}..{seq_len - 1} "
        f"({train_flops / 1e9:.2f} GFLOP of matmuls per step, floor {floors['training'] * 1e3:.1f} ms); rollout "
        f"64 × {seq_len} window ({rollout_flops / 1e6:.0f} MFLOP per step, floor {floors['rollout'] * 1e3:.2f} ms); "
        f"medians of {args.rounds} interleaved rounds\n"
    )
    rows = []
    for name, t in medians.items():
        kind = name.split()[0]
        eager = medians[f"{kind} step, eager"]
        rows.append([
            name, f"{t.wall * 1e3:.3g}", f"{t.cpu * 1e3:.3g}", f"{t.cpu / floors[kind]:.2g}×",
            "—" if t is eager else f"**{eager.cpu / t.cpu:.2f}×**",
        ])  # fmt: skip
    print(table(["path", "ms per step (wall)", "ms (CPU)", "CPU / floor", "eager / compiled (CPU)"], rows))


if __name__ == "__main__":
    main()
