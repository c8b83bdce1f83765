"""The ``[analyses.weights]`` section: every head's OV and QK circuits read off the weights, and which heads are
silent."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from physlens.models.base import HookedModel
from physlens.probes.weights import head_circuits
from physlens.studies.oscillator_analyses.common import AnalysisContext, _error
from physlens.studies.report import format_number
from physlens.systems.oscillator import OscillatorSystem


def check(opts: dict[str, Any], model: HookedModel, system: OscillatorSystem, seq_len: int) -> None:
    """Check the ``[analyses.weights]`` options ``opts`` against ``model``, ``system`` and ``seq_len`` before any training."""
    if not opts["rtol"] > 0:
        raise _error("weights", "rtol", f"must be > 0, got {opts['rtol']}")


def run(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
    """Add the OV/QK table of every head and a finding on silent heads to ``ctx.report``."""
    model, report = ctx.model, ctx.report
    circuits = head_circuits(model, rtol=opts["rtol"])
    report.heading("Weights: OV and QK circuits", level=3)
    rows = []
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            rows.append([layer, head, float(circuits.ov_gain[layer, head]), float(circuits.w_o_norm[layer, head]),
                         float(circuits.qk_singular_values[layer, head, 0]), "yes" if bool(circuits.silent[layer, head]) else "no"])
    report.table(["layer", "head", "OV gain (σ_max)", "‖W_O‖_F", "QK σ_max", f"silent (gain < {format_number(opts['rtol'])})"], rows)
    silent = circuits.silent_heads()
    ctx.metrics["weights"] = circuits.to_dict()
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    if silent:
        ctx.findings.append(f"{len(silent)} of {n_heads} heads write almost nothing (OV gain below {format_number(opts['rtol'])}): {silent}.")
    else:
        weakest = np.unravel_index(int(torch.argmin(circuits.ov_gain)), tuple(circuits.ov_gain.shape))
        ctx.findings.append(
            f"No head is silent: the weakest OV gain is {format_number(float(circuits.ov_gain.min()))} "
            f"(layer {weakest[0]}, head {weakest[1]}), so unlike the seed's OLA (W_O ≈ 0) every head writes to the residual stream."
        )
