"""The ``[analyses]`` of an oscillator study: which algorithm, causal tests, honest probes, interventions.

:func:`parse_analyses` reads and checks every option against the model and the system before
anything is trained; :func:`run_analyses` calls the library for each analysis named in ``run`` (an
explicit table, :data:`ANALYSES`, from section name to the module that checks and runs it) and adds
sections, figures, metrics and Findings to the report. Every number in the report, the Findings
sentences included, is computed in those modules from the model, and every analysis draws from its
own named random stream.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from physlens.models.base import HookedModel
from physlens.probes.algorithm_match import DEFAULT_SIGMAS, MATCH_DISTANCE
from physlens.studies.oscillator_analyses import (
    ablation,
    algorithms,
    energy,
    mechanism,
    patching,
    probes,
    saliency,
    steering,
    surrogate,
    swap,
    weights,
)
from physlens.studies.oscillator_analyses.common import FIRST_STATE_UNITS, LAYER_HOOKS, Analysis, AnalysisContext, expand_hooks
from physlens.studies.oscillator_analyses.probes import probe_label_name
from physlens.studies.report import StudySpecError, section
from physlens.systems.oscillator import OscillatorSystem

ANALYSES: dict[str, Analysis] = {
    "mechanism": Analysis(
        {"n_trajectories": int, "sigmas": list, "threshold": float, "n_pairs": int, "min_change": float, "calibration_seeds": int},
        {"n_trajectories": 128, "sigmas": list(DEFAULT_SIGMAS), "threshold": MATCH_DISTANCE, "n_pairs": 128, "min_change": 0.5,
         "calibration_seeds": 3},
        mechanism.check, mechanism.run),
    "weights": Analysis({"rtol": float}, {"rtol": 1e-3}, weights.check, weights.run),
    "algorithms": Analysis(
        {"n_trajectories": int, "context_lengths": (str, list), "horizon": int, "n_reference_trajectories": int},
        {"n_trajectories": 256, "context_lengths": "all", "horizon": 20, "n_reference_trajectories": 1024},
        algorithms.check, algorithms.run),
    "swap": Analysis({"n_pairs": int, "vary": str, "min_change": float}, {"n_pairs": 256, "vary": "omega0", "min_change": 0.5},
                     swap.check, swap.run),
    "probes": Analysis(
        {"hooks": list, "targets": list, "positions": (str, list), "n_trajectories": int, "n_folds": int, "n_permutations": int,
         "sites": list, "nonlinear": (bool, list), "n_controls": int},
        {"hooks": ["hook_embed", "resid_post"], "targets": ["omega0", "omega0_sq", "energy", "acceleration", "omega0_sq_x", "gamma_p"],
         "positions": "all", "n_trajectories": 512, "n_folds": 5, "n_permutations": 100, "sites": [], "nonlinear": True,
         "n_controls": 3},
        probes.check, probes.run),
    "energy": Analysis(
        {"hooks": list, "positions": (str, list), "n_trajectories": int, "n_folds": int, "n_controls": int, "last_k": int,
         "rollout_trajectories": int, "rollout_steps": int},
        {"hooks": ["hook_embed", "resid_post"], "positions": "all", "n_trajectories": 512, "n_folds": 5, "n_controls": 3, "last_k": 3,
         "rollout_trajectories": 128, "rollout_steps": 120},
        energy.check, energy.run),
    "steering": Analysis(
        {"hooks": list, "position": int, "positions": str, "target": str, "alphas": list, "n_trajectories": int,
         "n_probe_trajectories": int, "n_steps": int},
        {"hooks": ["resid_mid"], "position": -1, "positions": "probe", "target": "omega0", "alphas": [-0.5, -0.25, 0.0, 0.25, 0.5],
         "n_trajectories": 128, "n_probe_trajectories": 512, "n_steps": 10},
        steering.check, steering.run),
    "ablation": Analysis(
        {"methods": list, "n_trajectories": int, "rollout_trajectories": int, "rollout_steps": int, "head_hook": str},
        {"methods": ["zero", "mean"], "n_trajectories": 256, "rollout_trajectories": 16, "rollout_steps": 10, "head_hook": "z"},
        ablation.check, ablation.run),
    "patching": Analysis(
        {"vary": str, "n_pairs": int, "sites": list, "position_stride": int, "head_site": str, "min_change": float},
        {"vary": "omega0", "n_pairs": 32, "sites": ["resid_pre", "attn_out"], "position_stride": 4, "head_site": "z", "min_change": 0.5},
        patching.check, patching.run),
    "saliency": Analysis({"n_trajectories": int}, {"n_trajectories": 16}, saliency.check, saliency.run),
    "surrogate": Analysis(
        {"n_trajectories": int, "rollout_trajectories": int, "rollout_steps": int, "threshold": float},
        {"n_trajectories": 512, "rollout_trajectories": 32, "rollout_steps": 50, "threshold": 0.1},
        surrogate.check, surrogate.run),
}
"""Every analysis an oscillator study can run, in the order the report shows them."""


def parse_analyses(spec: Mapping[str, Any], model: HookedModel, system: OscillatorSystem, seq_len: int) -> dict[str, dict[str, Any]]:
    """Read and check the ``[analyses]`` table against ``model`` and ``system`` before any training.

    Returns ``{analysis: options}`` for the analyses in ``run`` (in :data:`ANALYSES` order), defaults
    filled in. Unknown analyses or keys, wrong types, out-of-range values, hooks or sites the model
    lacks and interventions the system cannot support are :class:`StudySpecError` naming the key.
    """
    top = section({"analyses": spec}, "analyses", {"run": list, **{name: dict for name in ANALYSES}})
    run = top.get("run", list(ANALYSES))
    bad = [name for name in run if name not in ANALYSES]
    if bad or not run or len(set(run)) != len(run):
        raise StudySpecError(f"[analyses] run must list distinct analyses from {list(ANALYSES)}, got {run!r}")
    options = {}
    for name, analysis in ANALYSES.items():
        table = section(top, name, analysis.keys)
        if name not in run:
            if table:
                raise StudySpecError(f"[analyses.{name}] is given but {name!r} is not in [analyses] run")
            continue
        opts = {**analysis.defaults, **table}
        analysis.check(opts, model, system, seq_len)
        options[name] = opts
    return options


def run_analyses(ctx: AnalysisContext, options: Mapping[str, dict[str, Any]]) -> None:
    """Run the parsed analyses on ``ctx.model`` in :data:`ANALYSES` order and add their sections,
    figures, metrics and a Findings section to ``ctx.report``. When the model failed its task the
    Findings say so first, and every later finding describes a model that does not work.

    ``ctx.report.timings`` gets each section's wall seconds under ``analyses`` and the CPU seconds of the
    calling thread under ``analyses_cpu_s``."""
    ctx.model.eval()
    timings: dict[str, float] = {}
    cpu_timings: dict[str, float] = {}
    report = ctx.report
    report.heading("Interpretability analyses")
    if ctx.verdict is not None and not ctx.verdict.works:
        report.paragraph(f"**The model does not do its task ({ctx.verdict.status}); the analyses below describe a model that fails.**")
    for name, opts in options.items():
        start, cpu = time.perf_counter(), time.thread_time()
        ANALYSES[name].run(ctx, opts)
        timings[name], cpu_timings[name] = time.perf_counter() - start, time.thread_time() - cpu
    report.heading("Findings", level=3)
    findings = list(ctx.findings)
    if ctx.verdict is not None:
        lead = ("The model does its task" if ctx.verdict.works else f"**The model fails its task ({ctx.verdict.status})**; read every finding below as describing a model that does not work")
        findings.insert(0, lead + f" — see the first section (verdict at {ctx.verdict.horizon} rollout steps).")
    report.bullets(findings or ["No analysis produced a finding."])
    ctx.metrics["seeds"] = dict(ctx.seeds)
    report.metrics["analyses"] = ctx.metrics
    report.timings["analyses"] = timings
    report.timings["analyses_cpu_s"] = cpu_timings


__all__ = ["ANALYSES", "FIRST_STATE_UNITS", "Analysis", "AnalysisContext", "LAYER_HOOKS", "expand_hooks", "parse_analyses",
           "probe_label_name", "run_analyses"]
