"""Transformer training steps and rollouts, eager against ``torch.compile``, and against the floor.

The model is the variable-ω0 one that does the task: 4 layers, d_model 32, 2 heads of 16, MLP,
causal attention, learned positional embedding, float32; batches of 128 trajectories × 40
positions. Timed in interleaved rounds on one thread (medians, wall and CPU):

* ``train`` for a few steps with ``TrainConfig(compile=False)`` and ``compile=True`` (fresh batch
  sampling, forward, backward and AdamW: the whole step a study runs), after one untimed call that
  compiles;
* ``rollout`` of 64 trajectories for 100 steps from 40 states of context, eager and ``compile=True``.

The floor is the step's matmul FLOPs (counted by ``torch.utils.flop_counter``) at this machine's
measured sgemm rate.

    python benchmarks/bench_transformer.py
    python benchmarks/bench_transformer.py --device cuda
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from _machine import Timing, describe_machine, interleaved, measure_floor, one_thread, table, timed
from torch.utils.flop_counter import FlopCounterMode

from physlens.models.transformer import OscillatorTransformer, preset_config
from physlens.systems import OscillatorSystem, Uniform
from physlens.training import TrainConfig, rollout, train


def main() -> None:
    """Parse arguments, compile, time eager and compiled training and rollout, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed call")
    parser.add_argument("--rollout-steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    one_thread()
    floor = measure_floor(args.device)
    print(describe_machine(floor))
    device = torch.device(args.device)
    cfg = preset_config("nLA", n_layers=args.layers, attn_only=False, causal=True, positional_embedding=True, device=str(device))
    model = OscillatorTransformer(cfg)
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=0.1, dtype="float32")
    seq_len = 40

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def training(compile_step: bool) -> Callable[[], Timing]:
        config = TrainConfig(steps=args.steps, batch_size=args.batch, seq_len=seq_len, lr=1e-3, compile=compile_step)

        def run() -> Timing:
            clock, _ = timed(lambda: (train(model, system, config, progress=False), sync()))
            return Timing(clock.wall / args.steps, clock.cpu / args.steps)

        return run

    context = system.sample(64, seq_len, seed=1).to(device=device, dtype=torch.float32).states

    # FLOPs first, on the untouched eager model (the counter's module hooks and compiled frames do not mix)
    batch = system.sample(args.batch, seq_len + 1, seed=0).to(device=device, dtype=torch.float32)
    inputs, targets = batch.inputs_targets()
    with FlopCounterMode(display=False) as counter:
        loss = (model(inputs)[:, -1] - targets[:, -1]).pow(2).mean()
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

    floors = {"training": floor.seconds(train_flops, 0), "rollout": floor.seconds(rollout_flops, 0)}
    print(
        f"\n{args.layers} layers, d_model 32, MLP, causal, positional embedding; training batch {args.batch} × {seq_len} "
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
