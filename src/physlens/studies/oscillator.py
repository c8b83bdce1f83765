"""The oscillator study: train a hooked transformer on a damped oscillator, roll it out, report.

``probes/oscillator.toml`` is the main job (the seed's OLA, fixed ω0 and γ);
``probes/oscillator_variable.toml`` trains the variable-ω0 model and adds the probe analyses.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from physlens.models.transformer import OscillatorTransformer, TransformerConfig, preset_config
from physlens.plots.training import plot_loss_curve, plot_phase_space, plot_rollout_error
from physlens.systems.oscillator import OscillatorSystem, propagator
from physlens.systems.params import Fixed
from physlens.training.checkpoints import save_checkpoint
from physlens.training.rollout import evaluate_rollout
from physlens.training.trainer import TrainConfig, TrainResult, config_from_dict, train
from physlens.studies.report import Report, StudySpecError, format_number, section

SYSTEM_KEYS = {"omega0": (float, dict), "gamma": (float, dict), "dt": float, "energy_range": list, "dtype": str}
MODEL_KEYS = {"preset": str, **{f.name: (int, bool, str, float) for f in dataclasses.fields(TransformerConfig)}}
TRAINING_KEYS = {f.name: (int, float, str, bool, list) for f in dataclasses.fields(TrainConfig)}
EVALUATION_KEYS = {
    "rollout_steps": int,
    "n_trajectories": int,
    "context_len": int,
    "energy_range": list,
    "target_error": float,
}


@dataclass
class StudyContext:
    """Everything an analysis needs about the trained model of an oscillator study."""

    model: OscillatorTransformer  # the trained model, in eval mode
    system: OscillatorSystem  # the training distribution
    seq_len: int  # positions the model was trained on
    loss_positions: str  # "last" or "all"
    eval_energy_range: tuple[float, float]  # energies used for out-of-distribution evaluation
    seed: int  # the study's seed
    progress: bool  # show progress bars
    device: str  # where the model lives


def build_model(options: dict[str, Any], seed: int) -> OscillatorTransformer:
    """An :class:`OscillatorTransformer` from a study's ``[model]`` table (a preset plus overrides)."""
    options = dict(options)
    preset = options.pop("preset", None)
    options.setdefault("seed", seed)
    try:
        config = preset_config(preset, **options) if preset is not None else TransformerConfig(**options)
    except (TypeError, ValueError) as error:
        raise StudySpecError(f"[model] is invalid: {error}") from None
    return OscillatorTransformer(config)


def build_system(options: dict[str, Any]) -> OscillatorSystem:
    """An :class:`OscillatorSystem` from a study's ``[system]`` table."""
    options = dict(options)
    if "energy_range" in options:
        options["energy_range"] = tuple(options["energy_range"])
    try:
        return OscillatorSystem(**options)
    except (TypeError, ValueError) as error:
        raise StudySpecError(f"[system] is invalid: {error}") from None


def learned_linear_map(model: OscillatorTransformer) -> tuple[torch.Tensor, torch.Tensor]:
    """For a single-position input, the affine map y = M x + c the model computes: returns (M, c).

    Exact when the model is linear in its input (attention window 1, no MLP), which the seed found
    for its OLA; the study checks linearity separately before trusting M.
    """
    dtype, device = model.W_E.dtype, model.W_E.device
    basis = torch.cat([torch.zeros(1, model.cfg.d_in), torch.eye(model.cfg.d_in)]).to(dtype=dtype, device=device)
    with torch.no_grad():
        outputs = model(basis[:, None, :])[:, 0]  # [1 + d_in, d_in]
    offset = outputs[0]
    return (outputs[1:] - offset).T, offset


def run(spec: dict[str, Any], out_dir: Path, *, progress: bool) -> None:
    """Train, evaluate and report one oscillator study into ``out_dir``."""
    header = spec["study"]
    seed = int(header.get("seed", 0))
    allowed_sections = {"study", "system", "model", "training", "evaluation", "analyses"}
    unknown = sorted(set(spec) - allowed_sections)
    if unknown:
        raise StudySpecError(f"unknown sections {unknown}; an oscillator study has {sorted(allowed_sections)}")
    system = build_system(section(spec, "system", SYSTEM_KEYS))
    model = build_model(section(spec, "model", MODEL_KEYS), seed)
    training_options = section(spec, "training", TRAINING_KEYS)
    training_options.setdefault("seed", seed)
    try:
        train_config = config_from_dict(training_options)
    except (TypeError, ValueError) as error:
        raise StudySpecError(f"[training] is invalid: {error}") from None
    evaluation = section(spec, "evaluation", EVALUATION_KEYS)
    n_steps = evaluation.get("rollout_steps", 200)
    n_traj = evaluation.get("n_trajectories", 64)
    context_len = evaluation.get("context_len", train_config.seq_len)
    train_high = system.energy_range[1]
    eval_range = tuple(evaluation.get("energy_range", (train_high, 5 * train_high)))
    target = evaluation.get("target_error")

    start = time.perf_counter()
    checkpoint_dir = out_dir / "checkpoints" if train_config.checkpoint_every else None
    result = train(model, system, train_config, checkpoint_dir=checkpoint_dir, progress=progress)
    save_checkpoint(out_dir / "model", model, metadata={"study": header["name"], "steps": train_config.steps})

    def evaluate(energy_range: tuple[float, float], offset: int):
        return evaluate_rollout(
            model, system, n_traj=n_traj, n_steps=n_steps, context_len=context_len,
            seed=seed + offset, energy_range=energy_range,
        )

    ood = evaluate(eval_range, 1_000_003)
    in_dist = evaluate(system.energy_range, 2_000_003)

    report = Report(f"Study {header['name']}")
    if header.get("description"):
        report.paragraph(header["description"])
    _report_setup(report, system, model, train_config, result)
    _report_rollout(report, ood, in_dist, eval_range, system, target)
    if model.cfg.attn_window == 1 and model.cfg.attn_only:
        _report_linear_map(report, model, system)

    if "analyses" in spec:
        from physlens.studies.oscillator_analyses import run_analyses

        context = StudyContext(
            model=model, system=system, seq_len=train_config.seq_len, loss_positions=train_config.loss_positions,
            eval_energy_range=eval_range, seed=seed, progress=progress, device=model.cfg.device,
        )
        run_analyses(context, spec["analyses"], report)

    report.metrics["wall_time_s"] = time.perf_counter() - start
    report.paragraph(f"Study wall time: {report.metrics['wall_time_s']:.1f} s.")
    report.write(out_dir)


def _report_setup(report: Report, system: OscillatorSystem, model: OscillatorTransformer,
                  config: TrainConfig, result: TrainResult) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    report.heading("Setup")
    report.table(
        ["what", "value"],
        [
            ["system", f"ω0 {system.to_dict()['omega0']}, γ {system.to_dict()['gamma']}, Δt {system.dt}"],
            ["training energies", f"[{system.energy_range[0]:g}, {system.energy_range[1]:g}]"],
            ["model", f"{model.cfg.n_layers} layer(s), d_model {model.cfg.d_model}, {model.cfg.n_heads} head(s), "
                      f"causal={model.cfg.causal}, window={model.cfg.attn_window}, attn_only={model.cfg.attn_only}"],
            ["parameters", n_params],
            ["dtype", model.cfg.dtype],
            ["training", f"{config.steps} AdamW steps, batch {config.batch_size}, T = {config.seq_len}, "
                         f"lr {config.lr:g} ({config.schedule}), loss on {config.loss_positions} position(s)"],
            ["final training loss", result.final_loss],
            ["training time", f"{result.wall_time:.1f} s"],
        ],
    )
    report.figure("loss_curve", plot_loss_curve(result.losses), "Training loss (MSE) per step.")
    report.metrics.update(
        final_train_loss=result.final_loss, train_time_s=result.wall_time, n_parameters=n_params,
        model_config=model.config_dict(), train_config=dataclasses.asdict(config), system=system.to_dict(),
    )


def _report_rollout(report: Report, ood, in_dist, eval_range, system: OscillatorSystem, target: float | None) -> None:
    n_steps = ood.error.shape[1]
    report.heading("Autoregressive rollout")
    ood_summary, in_summary = ood.summary(), in_dist.summary()
    report.paragraph(
        f"{ood_summary['n_trajectories']} fresh trajectories per energy range, {n_steps} steps rolled out from "
        f"{ood.context_len} true state(s); relative error ‖pred − true‖/‖true‖ per step."
    )
    report.table(
        ["initial energies", "median error at last step", "median over all steps", "worst at last step"],
        [
            [f"in distribution [{system.energy_range[0]:g}, {system.energy_range[1]:g}]",
             in_summary["median_final_error"], in_summary["median_error_all_steps"], in_summary["max_final_error"]],
            [f"out of distribution [{eval_range[0]:g}, {eval_range[1]:g}]",
             ood_summary["median_final_error"], ood_summary["median_error_all_steps"], ood_summary["max_final_error"]],
        ],
    )
    if target is not None:
        verdict = "meets" if ood_summary["median_final_error"] <= target else "misses"
        report.paragraph(
            f"The median out-of-distribution error after {n_steps} steps is "
            f"{format_number(ood_summary['median_final_error'])}, which **{verdict}** the target of "
            f"{format_number(target)} (the seed reported ~1e-4 for its OLA)."
        )
    report.figure("rollout_phase_space", plot_phase_space(ood.true, ood.predicted),
                  f"Rollouts from out-of-distribution energies (dashed) against the truth, {n_steps} steps.")
    report.figure("rollout_error", plot_rollout_error({"out of distribution": ood.error, "in distribution": in_dist.error}),
                  "Relative error per rollout step: median and 10–90 % band over trajectories.")
    report.metrics["rollout_ood"] = {**ood_summary, "energy_range": list(eval_range),
                                     "median_error_per_step": ood.median_error().tolist()}
    report.metrics["rollout_in_distribution"] = in_summary
    if target is not None:
        report.metrics["target_error"] = target
        report.metrics["meets_target"] = ood_summary["median_final_error"] <= target


def _report_linear_map(report: Report, model: OscillatorTransformer, system: OscillatorSystem) -> None:
    matrix, offset = learned_linear_map(model)
    probe = torch.randn(64, 1, model.cfg.d_in, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    probe = probe.to(dtype=matrix.dtype, device=matrix.device)
    with torch.no_grad():
        nonlinearity = float((model(probe)[:, 0] - (probe[:, 0] @ matrix.T + offset)).abs().max())
    report.heading("What the window-1 model computes")
    report.paragraph(
        "With attention restricted to the current step the softmax is always exactly 1, so the model is an "
        f"affine map y = M x + c of its input (largest deviation from affine on random inputs: "
        f"{format_number(nonlinearity)})."
    )
    rows = [["learned M", _matrix_text(matrix)], ["offset c", _matrix_text(offset[None])]]
    metrics: dict[str, Any] = {"learned_map": matrix.tolist(), "offset": offset.tolist(), "nonlinearity": nonlinearity}
    if isinstance(system.omega0, Fixed) and isinstance(system.gamma, Fixed):
        exact = propagator(system.omega0.value, system.gamma.value, system.dt).to(matrix)
        gap = float((matrix - exact).abs().max())
        rows += [["exact propagator e^{AΔt}", _matrix_text(exact)], ["max abs(M − e^{AΔt})", format_number(gap)]]
        metrics["exact_propagator"] = exact.tolist()
        metrics["max_abs_map_error"] = gap
    report.table(["quantity", "value"], rows)
    report.metrics["linear_map"] = metrics


def _matrix_text(matrix: torch.Tensor) -> str:
    return "[" + "; ".join(" ".join(f"{float(v):+.8f}" for v in row) for row in matrix) + "]"


__all__ = ["StudyContext", "build_model", "build_system", "learned_linear_map", "run"]
