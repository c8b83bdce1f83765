"""Where a training step of a study's recipe spends its time: drawing the batch, forward, backward,
clipping and AdamW (a loop over the parameters, or ``fused=True``), in CPU time of one thread.

    python benchmarks/profile_training_step.py
    python benchmarks/profile_training_step.py --study probes/oscillator_variable_gamma.toml
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _machine import one_thread, table

from physlens.studies import load_study
from physlens.studies.oscillator import parse_study
from physlens.training.trainer import loss_slice

STUDY = Path(__file__).resolve().parents[1] / "probes" / "oscillator_variable.toml"


def main() -> None:
    """Parse arguments, time each part of the study's training step with both optimisers, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=STUDY)
    parser.add_argument("--steps", type=int, default=25, help="steps averaged per optimiser")
    args = parser.parse_args()
    one_thread()
    study = parse_study(load_study(args.study))
    model, system, config = study.model, study.system, study.train_config
    dtype = next(model.parameters()).dtype
    generator = torch.Generator().manual_seed(0)
    rows = []
    for name, options in (("AdamW (loop over parameters)", {"foreach": False}), ("AdamW(fused=True)", {"fused": True})):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, **options)
        spent = dict.fromkeys(("batch", "forward", "backward", "clip", "optimizer"), 0.0)

        def clock(part: str, fn):  # noqa: ANN001, ANN202
            start = time.thread_time()
            out = fn()
            spent[part] += time.thread_time() - start
            return out

        for _ in range(args.steps):
            batch = clock("batch", lambda: system.sample(config.batch_size, config.seq_len + 1, generator=generator).to(dtype=dtype))
            inputs, targets = batch.inputs_targets()
            scored = loss_slice(config.loss_positions, config.seq_len)
            loss = clock("forward", lambda: (model(inputs)[:, scored] - targets[:, scored]).pow(2).mean())
            optimizer.zero_grad(set_to_none=True)
            clock("backward", loss.backward)
            clock("clip", lambda: torch.nn.utils.clip_grad_norm_(list(model.parameters()), config.grad_clip or float("inf")))
            clock("optimizer", optimizer.step)
        rows.append([name] + [f"{value / args.steps * 1e3:.2f}" for value in spent.values()] + [f"{sum(spent.values()) / args.steps * 1e3:.1f}"])
    print(f"study {args.study.name}: batch {config.batch_size} × {config.seq_len}, ms of CPU per step, mean of {args.steps} steps\n")
    print(table(["optimiser", "batch", "forward", "backward", "clip", "optimizer", "total"], rows))


if __name__ == "__main__":
    main()
