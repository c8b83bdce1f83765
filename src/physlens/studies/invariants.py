"""The invariants study: a Siamese network finds the conserved angular momentum of Kepler orbits, a
one-neuron bottleneck finds the oscillator's frequency, and symbolic distillation writes down what
networks compute (the Siamese latent, the F = m·a modes, a probe direction of a transformer).

Run with ``physlens run probes/invariants.toml``. Every number in the report is computed here.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import sympy
import torch

from physlens.models.mlp import EnsembleConfig, MLPEnsemble
from physlens.models.siamese import BottleneckConfig, BottleneckNetwork, SiameseConfig, SiameseTower
from physlens.plots.invariants import plot_bottleneck_matches, plot_formula_front, plot_latent_vs_invariant
from physlens.plots.training import plot_loss_curve
from physlens.probes.bottleneck import analyse_bottleneck
from physlens.probes.invariants import ORBIT_FEATURE_SETS
from physlens.probes.mechanisms import mechanism_labels
from physlens.probes.network_formulas import mode_formulas
from physlens.probes.orbit_latents import (
    PURE_L_R2,
    ConservationDrift,
    LatentFormulas,
    OrbitLatentAnalysis,
    PairAccuracies,
    TowerScore,
    analyse_orbit_latent,
    conservation_drift,
    distil_orbit_latent,
    pair_accuracies,
    pure_latent_share,
    score_tower,
    tower_latent,
)
from physlens.probes.symbolic import UNARY_FUNCTIONS, SymbolicDistiller
from physlens.stats import proportion_interval
from physlens.studies.report import Report, StudySpecError, format_number, section
from physlens.systems.central import CentralPotentialSystem, OrbitTrajectories, orbit_energy
from physlens.systems.fma import fma_splits
from physlens.seeding import spawn_seeds, stream_seed
from physlens.systems.oscillator import OscillatorSystem
from physlens.systems.params import Uniform
from physlens.training.ensemble import EnsembleTrainConfig, train_ensemble
from physlens.training.invariants import (
    BottleneckTrainConfig,
    SiameseTrainConfig,
    SiameseTrainResult,
    StatePairs,
    make_pairs,
    quantity_pair_accuracy,
    train_bottleneck,
    train_siamese_towers,
)

ORBIT_KEYS = {
    "energy_range": list, "angular_momentum_range": list, "min_perihelion": float,
    "n_train": int, "n_test": int, "states_per_orbit": int,
}
SIAMESE_KEYS = {
    "d_hidden": int, "n_layers": int, "activation": str, "steps": int, "batch_size": int, "lr": float,
    "margin": float, "min_gap": float, "n_test_pairs": int, "n_seeds": int, "harmonics": int,
}
LATENT_KEYS = {"degree": int, "n_distill": int}
BOTTLENECK_KEYS = {
    "enabled": bool, "window": int, "steps": int, "batch_size": int, "lr": float, "d_hidden": int,
    "omega0_range": list, "gamma": float, "n_test": int,
}
FMA_KEYS = {"enabled": bool, "n_models": int, "epochs": int, "n_train": int, "n_val": int, "distribution": str}
TRANSFORMER_KEYS = {"enabled": bool, "steps": int, "omega0": float, "gamma": float, "seq_len": int, "n_probe": int}
DISTILL_KEYS = {"max_terms": int, "max_degree": int, "unary": list}
SECTIONS = {"orbits": ORBIT_KEYS, "siamese": SIAMESE_KEYS, "latent": LATENT_KEYS, "bottleneck": BOTTLENECK_KEYS, "fma": FMA_KEYS,
            "transformer": TRANSFORMER_KEYS, "distill": DISTILL_KEYS}
"""Every table an invariants study file may hold (besides ``[study]``) and the keys it accepts."""


def _pair(name: str, table: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, (int, float)) for v in value):
        raise StudySpecError(f"[{table}] {name} must be a list of two numbers, got {value!r}")
    return (float(value[0]), float(value[1]))


def _distiller_args(opts: dict[str, Any]) -> dict[str, Any]:
    """The [distill] settings, checked before anything trains. They set every compact-formula search
    of the study: the Siamese latent, the F = m·a networks' outputs and the transformer's probe value."""
    args = {"max_terms": opts.get("max_terms", 4), "max_degree": opts.get("max_degree", 2), "unary": opts.get("unary", ["sin", "cos", "exp", "sqrt", "inv"])}
    for key in ("max_terms", "max_degree"):
        if args[key] < 1:
            raise StudySpecError(f"[distill] {key} must be an integer >= 1, got {args[key]}")
    unknown = [u for u in args["unary"] if u not in UNARY_FUNCTIONS]
    if unknown or not all(isinstance(u, str) for u in args["unary"]):
        raise StudySpecError(f"[distill] unary must list functions from {list(UNARY_FUNCTIONS)}, got {args['unary']!r}")
    args["unary"] = tuple(args["unary"])
    return args


def _formula(expression: sympy.Expr) -> str:
    return "`" + str(sympy.N(expression, 4)) + "`"


def _parse(spec: dict[str, Any]) -> dict[str, Any]:
    """Every section's options and configuration, built (and refused if invalid) before anything trains."""
    unknown = sorted(set(spec) - {"study", *SECTIONS})
    if unknown:
        raise StudySpecError(f"unknown sections {unknown} in an invariants study; allowed are {sorted({'study', *SECTIONS})}")
    seed = int(spec["study"].get("seed", 0))
    opts = {name: section(spec, name, keys) for name, keys in SECTIONS.items()}
    bottleneck, fma, transformer = opts["bottleneck"], opts["fma"], opts["transformer"]
    for key in ("degree", "n_distill"):
        if key in opts["latent"] and opts["latent"][key] < 1:
            raise StudySpecError(f"[latent] {key} must be an integer >= 1, got {opts['latent'][key]}")
    return {
        "seed": seed, **opts, "distiller_args": _distiller_args(opts["distill"]),
        "siamese_setup": _siamese_setup(opts["orbits"], opts["siamese"], seed),
        "bottleneck_setup": _bottleneck_setup(bottleneck, seed) if bottleneck.get("enabled", True) else None,
        "fma_setup": _fma_setup(fma, seed) if fma.get("enabled", True) else None,
        "transformer_setup": _transformer_setup(transformer, seed) if transformer.get("enabled", False) else None,
    }


def check_study(spec: dict[str, Any]) -> None:
    """Check every section of an invariants study file (keys, types, ranges) before anything trains."""
    _parse(spec)


def run(spec: dict[str, Any], out_dir: Path, *, progress: bool = True) -> None:
    """Run the invariants study described by ``spec`` and write its report into ``out_dir``."""
    parsed = _parse(spec)
    seed, distiller_args = parsed["seed"], parsed["distiller_args"]
    orbits_opts, siamese_opts, latent_opts = parsed["orbits"], parsed["siamese"], parsed["latent"]
    bottleneck_opts, fma_opts, transformer_opts = parsed["bottleneck"], parsed["fma"], parsed["transformer"]
    siamese_setup, bottleneck_setup = parsed["siamese_setup"], parsed["bottleneck_setup"]
    fma_setup, transformer_setup = parsed["fma_setup"], parsed["transformer_setup"]
    report = Report(spec["study"].get("name", "invariants"))
    report.paragraph(spec["study"].get("description", ""))
    timings: dict[str, float] = {}
    curves: dict[str, list[float]] = {}

    start = time.perf_counter()
    _siamese_section(report, siamese_setup, orbits_opts, siamese_opts, latent_opts, distiller_args, seed, progress, curves)
    timings["siamese"] = time.perf_counter() - start
    if bottleneck_setup is not None:
        start = time.perf_counter()
        _bottleneck_section(report, bottleneck_setup, bottleneck_opts, seed, progress, curves)
        timings["bottleneck"] = time.perf_counter() - start
    if fma_setup is not None:
        start = time.perf_counter()
        _fma_section(report, fma_setup, fma_opts, distiller_args, progress)
        timings["fma"] = time.perf_counter() - start
    if transformer_setup is not None:
        start = time.perf_counter()
        _transformer_section(report, transformer_setup, transformer_opts, distiller_args, seed, progress)
        timings["transformer"] = time.perf_counter() - start
    report.figure("loss_curves", plot_loss_curve(curves), "Training loss of the Siamese tower (contrastive) and the bottleneck network (MSE).")
    report.heading("Run time")
    report.table(["part", "seconds"], [[k, v] for k, v in timings.items()])
    report.timings["seconds"] = timings
    report.write(out_dir)


# ------------------------------------------------------------------------------------------ Siamese
def _siamese_setup(orbits_opts: dict[str, Any], opts: dict[str, Any], seed: int) -> tuple[CentralPotentialSystem, SiameseTrainConfig, SiameseTower]:
    """The orbit system, training recipe and tower, checked before anything trains. The defaults
    (three tanh layers of 64, 8000 steps of 512 pairs, lr 5e-3, different pairs at least 0.2 apart
    in L) reach the slides' 97 % on held-out orbits; the slides' own recipe is not given."""
    try:
        system = CentralPotentialSystem(
            energy_range=_pair("energy_range", "orbits", orbits_opts.get("energy_range", [-0.8, -0.3])),
            angular_momentum_range=_pair("angular_momentum_range", "orbits", orbits_opts.get("angular_momentum_range", [0.2, 1.2])),
            min_perihelion=orbits_opts.get("min_perihelion", 0.2),
        )
        config = SiameseTrainConfig(
            steps=opts.get("steps", 8000), batch_size=opts.get("batch_size", 512), lr=opts.get("lr", 5e-3),
            margin=opts.get("margin", 1.0), min_gap=opts.get("min_gap", 0.0), seed=seed,
        )
        model = SiameseTower(SiameseConfig(
            d_hidden=opts.get("d_hidden", 64), n_layers=opts.get("n_layers", 3), activation=opts.get("activation", "tanh"), seed=seed,
        ))
    except ValueError as error:
        raise StudySpecError(f"[orbits]/[siamese] is invalid: {error}") from None
    for key in ("n_train", "n_test", "states_per_orbit"):
        if orbits_opts.get(key, 2) < 2:
            raise StudySpecError(f"[orbits] {key} must be an integer >= 2, got {orbits_opts[key]}")
    for key in ("n_seeds", "harmonics"):
        if opts.get(key, 1) < 1:
            raise StudySpecError(f"[siamese] {key} must be an integer >= 1, got {opts[key]}")
    return system, config, model


def _accuracy(accuracy: float, pairs: StatePairs) -> str:
    """An accuracy over ``pairs`` with its Wilson interval."""
    n = len(pairs)
    return proportion_interval(round(accuracy * n), n).format(3, percent=True)


def _siamese_section(
    report: Report,
    setup: tuple[CentralPotentialSystem, SiameseTrainConfig, SiameseTower],
    orbits_opts: dict[str, Any],
    opts: dict[str, Any],
    latent_opts: dict[str, Any],
    distiller_args: dict[str, Any],
    seed: int,
    progress: bool,
    curves: dict[str, list[float]],
) -> None:
    system, config, model = setup
    per_orbit = orbits_opts.get("states_per_orbit", 16)
    train = system.sample(orbits_opts.get("n_train", 2000), per_orbit, seed=seed, random_times=True)
    test = system.sample(orbits_opts.get("n_test", 500), per_orbit, seed=seed + 1, random_times=True)
    drift = conservation_drift(system, seed=seed + 2)
    extra, result = _train_towers(model, config, train, opts.get("n_seeds", 5), seed, progress)
    curves["siamese (contrastive)"] = result.losses
    pairs, gap = _orbit_pairs(train, test, config, opts.get("n_test_pairs", 20000), seed)
    # Control: an untrained tower of the same architecture, its threshold chosen on the same training pairs.
    control = SiameseTower(dataclasses.replace(model.cfg, seed=stream_seed(seed, "siamese random-init control"))).eval()
    accuracies = pair_accuracies(model, control, pairs["train"], pairs)

    states = test.states.reshape(-1, 4)
    latent, control_latent = tower_latent(model, states), tower_latent(control, states)
    X = states.double().numpy()
    harmonics = opts.get("harmonics", 3)
    analysis = analyse_orbit_latent(latent, control_latent, states, degree=latent_opts.get("degree", 2), harmonics=harmonics)
    formulas = distil_orbit_latent(latent, X, n_samples=latent_opts.get("n_distill", 2000), **distiller_args)
    energy_accuracy = quantity_pair_accuracy(orbit_energy, pairs["train"], pairs["test"])
    scores = [TowerScore(seed, accuracies.accuracy["test"], analysis.invariant_r2["trained tower"])]
    scores += [score_tower(tower, pairs["train"], pairs["test"], X, harmonics=harmonics) for tower in extra]

    report.heading("1. Siamese network on Kepler orbits")
    _report_protocol(report, system, model, config, len(train), len(test), per_orbit, drift)
    _report_pairs(report, pairs, gap, accuracies)
    _report_latent(report, analysis, formulas.of_state)
    _report_invariants(report, analysis, formulas.of_invariants, harmonics, energy_accuracy, accuracies, pairs["test"])
    _report_towers(report, scores, accuracies, pairs["test"], config, seed)
    report.figure(
        "latent_vs_L", plot_latent_vs_invariant(latent, analysis.angular_momentum, color=analysis.energy, color_name="E"),
        "Siamese latent against the angular momentum L on test states (colour: energy).",
    )
    report.figure(
        "siamese_formula_front", plot_formula_front(formulas.of_state.front_, selected=formulas.of_state.selected_, title="Siamese latent"),
        "Complexity/accuracy front of formulas for the Siamese latent.",
    )
    report.metrics["orbits"] = {"max_drift_L": drift.angular_momentum, "max_drift_E": drift.energy}
    report.metrics["siamese"] = _siamese_metrics(accuracies, analysis, formulas, scores, result, config, energy_accuracy)


def _train_towers(
    model: SiameseTower, config: SiameseTrainConfig, train: OrbitTrajectories, n_seeds: int, seed: int, progress: bool,
) -> tuple[list[SiameseTower], SiameseTrainResult]:
    """Train ``model`` and ``n_seeds − 1`` further towers (seeds of initialisation and pair draws) at
    once, each on its own pair stream; return the further towers and the first tower's result."""
    tower_seeds = [stream_seed(seed, f"siamese tower {k}") % (2**31) for k in range(1, n_seeds)]
    extra = [SiameseTower(dataclasses.replace(model.cfg, seed=s)) for s in tower_seeds]
    results = train_siamese_towers([model, *extra], train, [config, *(dataclasses.replace(config, seed=s) for s in tower_seeds)], progress=progress)
    return extra, results[0]


def _orbit_pairs(
    train: OrbitTrajectories, test: OrbitTrajectories, config: SiameseTrainConfig, n_pairs: int, seed: int,
) -> tuple[dict[str, StatePairs], float]:
    """Training pairs, test pairs (the slides' protocol) and test pairs that differ clearly in L,
    drawn from one stream in that order; and the gap in L of the last."""
    generator = torch.Generator().manual_seed(seed + 3)
    train_pairs = make_pairs(train, n_pairs, generator=generator)
    test_pairs = make_pairs(test, n_pairs, generator=generator)
    gap = config.min_gap or 0.2  # pairs that differ clearly in L, whatever the training pairs did
    gap_pairs = make_pairs(test, n_pairs, generator=generator, min_gap=gap)
    return {"train": train_pairs, "test": test_pairs, "test_gap_pairs": gap_pairs}, gap


def _report_protocol(
    report: Report, system: CentralPotentialSystem, model: SiameseTower, config: SiameseTrainConfig,
    n_train: int, n_test: int, per_orbit: int, drift: ConservationDrift,
) -> None:
    report.paragraph(
        f"Orbits in V = −1/r with E ∈ {list(system.energy_range)}, |L| ∈ {list(system.angular_momentum_range)} "
        f"(random sign), perihelion ≥ {system.min_perihelion}; {n_train} training and {n_test} test orbits, "
        f"{per_orbit} states each at random times. Exact Kepler propagation: over 50 orbits × 200 steps the "
        f"largest drift is {format_number(drift.angular_momentum)} in L and {format_number(drift.energy)} in E. The tower "
        f"({model.cfg.n_layers}×{model.cfg.d_hidden} {model.cfg.activation}, one latent) was trained with a "
        f"contrastive loss (margin {config.margin}, "
        + ("different pairs drawn at random, the slides' protocol" if config.min_gap == 0 else f"different pairs with |ΔL| ≥ {config.min_gap}")
        + ") for "
        f"{config.steps} steps; the same/different threshold on the latent distance was chosen on training pairs."
    )


def _report_pairs(report: Report, pairs: dict[str, StatePairs], gap: float, accuracies: PairAccuracies) -> None:
    names = {
        "train": "training orbits, random different pairs",
        "test": "test orbits, random different pairs (the slides' protocol; slides: 97%)",
        "test_gap_pairs": f"test orbits, different pairs with |ΔL| ≥ {gap}",
    }
    report.table(
        ["pairs", "accuracy [95 % Wilson interval]", "random-init tower (control)"],
        [[name, _accuracy(accuracies.accuracy[key], pairs[key]), _accuracy(accuracies.control_accuracy[key], pairs[key])]
         for key, name in names.items()],
    )


def _report_latent(report: Report, analysis: OrbitLatentAnalysis, distiller: SymbolicDistiller) -> None:
    regression, fit_l = analysis.regression, analysis.match("L")
    report.paragraph(
        f"Half of the pairs come from one orbit, so guessing scores 50 %. Polynomial regression (degree {regression.degree}) "
        f"of the latent on the test states: R² = {format_number(regression.r2_, 4)} (the random-init tower's latent: "
        f"{format_number(analysis.control_regression.r2_, 4)}; its linear R² against L {format_number(analysis.control_match_l.linear_r2, 3)}, "
        f"against {format_number(fit_l.linear_r2, 3)} for the trained tower). Dominant terms (share of the total contribution):"
    )
    report.bullets([f"`{name}`: {format_number(coef, 4)} ({share:.1%})" for name, coef, share in regression.dominant_terms(6)])
    report.paragraph(
        f"Coefficient ratio (x·vy)/(y·vx) = {format_number(analysis.coef_ratio, 4)} (angular momentum: −1; "
        f"slides: −403.71/402.44 = −1.003). The latent ≈ {format_number(regression.coefficient('x*vy'), 4)}·x·vy "
        f"{regression.coefficient('y*vx'):+.4g}·y·vx; the slides found ≈ −403·L (the scale is arbitrary)."
    )
    report.table(
        ["candidate", "linear R²", "Spearman ρ", "isotonic R² (held out)"],
        [[m.name, m.linear_r2, m.spearman, m.isotonic_r2] for m in analysis.matches],
    )
    report.paragraph(f"Distilled latent (built-in sparse search): {_formula(distiller.expression_)}, relative error {format_number(distiller.selected_.nmse)}.")


def _report_invariants(
    report: Report, analysis: OrbitLatentAnalysis, distiller: SymbolicDistiller, harmonics: int, energy_accuracy: float,
    accuracies: PairAccuracies, test_pairs: StatePairs,
) -> None:
    report.paragraph(
        "**Which conserved quantity?** An orbit has three: L, E and the orientation of its ellipse (the angle φ of the "
        "Runge–Lenz vector A = v × L − r̂, whose length is the eccentricity e). Held-out R² of the latent regressed on each "
        f"set (harmonics cos kφ, sin kφ for k = 1…{harmonics}; fitted on half the test states, scored on the other half), "
        "for the trained tower and two controls: an untrained tower of the same architecture, and a latent that is the "
        "energy alone:"
    )
    report.table(["latent", *ORBIT_FEATURE_SETS], [[name, *(f"{r2[k]:.4f}" for k in ORBIT_FEATURE_SETS)] for name, r2 in analysis.invariant_r2.items()])
    report.paragraph(
        f"On the same test pairs, the energy alone, thresholded as the tower's latent is, scores "
        f"{_accuracy(energy_accuracy, test_pairs)} against the tower's {_accuracy(accuracies.accuracy['test'], test_pairs)}: pair accuracy "
        "cannot say which invariant a network learned; only the regressions above can. Distilled from the candidates "
        f"(L, E, e, cos φ, sin φ) instead of the state: {_formula(distiller.expression_)}, relative error "
        f"{format_number(distiller.selected_.nmse)}."
    )


def _report_towers(
    report: Report, scores: list[TowerScore], accuracies: PairAccuracies, test_pairs: StatePairs, config: SiameseTrainConfig, seed: int,
) -> None:
    pure_share = pure_latent_share(scores)
    report.paragraph(
        f"Over {len(scores)} towers (seeds of initialisation and pair draws), trained the same way; the share whose "
        f"latent is pure L (held-out R² against L ≥ {PURE_L_R2}) is {_pct(pure_share)} (Wilson 95 % interval)."
    )
    rows = [[f"{seed} (the tower above)" if index == 0 else score.seed, _accuracy(score.test_accuracy, test_pairs),
             *(f"{score.r2[k]:.4f}" for k in ORBIT_FEATURE_SETS)] for index, score in enumerate(scores)]
    report.table(["tower seed", "test accuracy [95 % interval]", *(f"R²: {k}" for k in ORBIT_FEATURE_SETS)], rows)
    told = ("with random pairs, a \"different\" pair is any two orbits, so nothing in the pairs singles out L"
            if config.min_gap == 0 else f"different pairs must differ in L by at least {config.min_gap}, which tells it that L separates them")
    report.paragraph(
        f"What the network is told: which pairs of states share an orbit; {told}. It is never given L, E or the "
        "orientation; any of them, or a mixture, separates such pairs."
    )


def _siamese_metrics(
    accuracies: PairAccuracies, analysis: OrbitLatentAnalysis, formulas: LatentFormulas, scores: list[TowerScore],
    result: SiameseTrainResult, config: SiameseTrainConfig, energy_accuracy: float,
) -> dict[str, Any]:
    regression, fit_l, pure_share = analysis.regression, analysis.match("L"), pure_latent_share(scores)
    return {
        "train_accuracy": accuracies.accuracy["train"], "test_accuracy": accuracies.accuracy["test"],
        "test_accuracy_gap_pairs": accuracies.accuracy["test_gap_pairs"], "control_accuracy": accuracies.control_accuracy,
        "control_latent_poly_r2": analysis.control_regression.r2_, "control_latent_linear_r2_L": analysis.control_match_l.linear_r2,
        "threshold": accuracies.threshold, "final_loss": float(np.mean(result.losses[-50:])),
        "latent_poly_r2": regression.r2_, "latent_linear_r2_L": fit_l.linear_r2, "latent_spearman_L": fit_l.spearman,
        "coef_x_vy": regression.coefficient("x*vy"), "coef_y_vx": regression.coefficient("y*vx"), "coef_ratio": analysis.coef_ratio,
        "dominant_terms": [[n, c] for n, c, _ in regression.dominant_terms(6)],
        "candidates": {m.name: {"linear_r2": m.linear_r2, "spearman": m.spearman, "isotonic_r2": m.isotonic_r2} for m in analysis.matches},
        "distilled": str(formulas.of_state.expression_), "distilled_nmse": formulas.of_state.selected_.nmse, "min_gap": config.min_gap,
        "invariant_r2": analysis.invariant_r2, "energy_only_test_accuracy": energy_accuracy, "seeds": [dataclasses.asdict(s) for s in scores],
        "pure_L_share": pure_share.estimate, "pure_L_share_interval": [pure_share.low, pure_share.high],
        "candidate_distilled": str(formulas.of_invariants.expression_),
    }


def _pct(interval: Any) -> str:
    return interval.format(3, percent=True)


# --------------------------------------------------------------------------------------- bottleneck
def _bottleneck_setup(opts: dict[str, Any], seed: int) -> tuple[OscillatorSystem, BottleneckTrainConfig, BottleneckNetwork, float, float]:
    """The oscillator, recipe and bottleneck network, checked before anything trains."""
    low, high = _pair("omega0_range", "bottleneck", opts.get("omega0_range", [1.0, 4.0]))
    try:
        system = OscillatorSystem(omega0=Uniform(low, high), gamma=opts.get("gamma", 0.1), energy_range=(0.1, 1.0))
        config = BottleneckTrainConfig(
            steps=opts.get("steps", 1500), batch_size=opts.get("batch_size", 256), window=opts.get("window", 4),
            lr=opts.get("lr", 3e-3), seed=seed,
        )
        model = BottleneckNetwork(BottleneckConfig(d_in=2 * config.window, d_out=2, d_side=2, d_hidden=opts.get("d_hidden", 32), seed=seed))
    except ValueError as error:
        raise StudySpecError(f"[bottleneck] is invalid: {error}") from None
    return system, config, model, low, high


def _bottleneck_section(
    report: Report, setup: tuple[OscillatorSystem, BottleneckTrainConfig, BottleneckNetwork, float, float], opts: dict[str, Any],
    seed: int, progress: bool, curves: dict[str, list[float]],
) -> None:
    system, config, model, low, high = setup
    losses = train_bottleneck(model, system, config, progress=progress)
    curves["bottleneck (MSE)"] = losses
    test = system.sample(opts.get("n_test", 2000), config.window + 1, seed=seed + 10)
    analysis = analyse_bottleneck(model, test, config.window, generator=torch.Generator().manual_seed(seed + 11))
    raw, folded = analysis.matches.raw, analysis.matches.folded

    report.heading("2. One-neuron bottleneck on the oscillator")
    report.paragraph(
        f"Encoder input: a window of {config.window} states of an oscillator with ω0 ~ U[{low}, {high}], γ = {system.gamma.value}. "
        f"Decoder: the bottleneck plus a fresh query state; target: the query's next state under the window's (ω0, γ). "
        f"Test MSE {format_number(analysis.mse)}; with the bottleneck replaced by its mean {format_number(analysis.mse_mean_bottleneck)} "
        f"(target variance {format_number(analysis.target_variance)})."
    )
    report.table(
        ["candidate", "Spearman ρ (raw)", "isotonic R² (raw)", "Spearman ρ (|b − median|)", "isotonic R² (|b − median|)", "linear R² (|b − median|)"],
        [[r.name, r.spearman, r.isotonic_r2, f.spearman, f.isotonic_r2, f.linear_r2]
         for r in raw for f in folded if f.name == r.name],
    )
    best_raw, best_folded = raw[0], folded[0]
    report.paragraph(
        f"Best match of the raw bottleneck: {best_raw.name} (isotonic R² {format_number(best_raw.isotonic_r2, 3)}); "
        f"of the folded bottleneck: {best_folded.name} (isotonic R² {format_number(best_folded.isotonic_r2, 3)}). "
        "ω0, ω0² and Ω are monotone functions of each other at fixed γ, so rank-based scores cannot "
        "tell them apart; only the linear R² says which parametrisation the neuron is closest to linear in."
    )
    report.figure(
        "bottleneck_vs_candidates", plot_bottleneck_matches(analysis.code, analysis.candidates),
        "The bottleneck neuron against candidate quantities on test windows.",
    )
    report.metrics["bottleneck"] = {
        "test_mse": analysis.mse, "test_mse_mean_bottleneck": analysis.mse_mean_bottleneck,
        "raw": {m.name: {"spearman": m.spearman, "isotonic_r2": m.isotonic_r2, "linear_r2": m.linear_r2} for m in raw},
        "folded": {m.name: {"spearman": m.spearman, "isotonic_r2": m.isotonic_r2, "linear_r2": m.linear_r2} for m in folded},
    }


# -------------------------------------------------------------------------------------------- F=ma
def _fma_setup(opts: dict[str, Any], seed: int) -> tuple[Any, Any, Any]:
    """Data, networks and recipe of the F = m·a section, checked before anything trains."""
    try:
        seeds = spawn_seeds(seed, {"fma": opts.get("n_models", 32)})["fma"]
        data = fma_splits(seeds, opts.get("distribution", "product"), n_train=opts.get("n_train", 1000), n_val=opts.get("n_val", 1000))
        return data, MLPEnsemble(EnsembleConfig(seeds=seeds)), EnsembleTrainConfig(epochs=opts.get("epochs", 2000))
    except ValueError as error:
        raise StudySpecError(f"[fma] is invalid: {error}") from None


def _fma_section(report: Report, setup: tuple[Any, Any, Any], opts: dict[str, Any], distiller_args: dict[str, Any], progress: bool) -> None:
    data, ensemble, train_config = setup
    n_models, distribution = ensemble.n_models, data.distribution
    result = train_ensemble(ensemble, data, train_config, progress=progress)
    modes = mechanism_labels(ensemble, distribution)
    # a ReLU network is piecewise linear: each mode's best network is distilled with the [distill]
    # settings for a compact approximant, and its exact form written from its hidden units
    formulas = mode_formulas(ensemble, data.val_inputs, result.val_loss, modes, **distiller_args)
    report.heading("3. F = m·a: what formula does each mode compute?")
    report.paragraph(
        f"{n_models} width-2 ReLU networks trained ({opts.get('epochs', 2000)} full-batch Adam epochs, "
        f"{distribution} data); modes from what each unit does to the function over the distribution "
        "(`mechanism_labels`). For the best network of each mode, its output on the validation inputs is "
        f"distilled with the [distill] settings (at most {distiller_args['max_terms']} term{'s' if distiller_args['max_terms'] != 1 else ''}, monomials up to degree "
        f"{distiller_args['max_degree']}, unary functions {list(distiller_args['unary']) or 'none'}); the exact "
        "piecewise-linear form is assembled from the distilled hidden pre-activations (linear, so a degree-1 search "
        "recovers them exactly) and the output weights."
    )
    report.table(
        ["mode", "networks", "network val MSE", "exact form (from hooks)", "compact formula", "formula rel. error"],
        [[f.mode, f.count, f.val_mse, _formula(f.exact_form), _formula(f.distiller.expression_), f.distiller.selected_.nmse] for f in formulas],
    )
    fronts = {f.mode: f.distiller for f in formulas}
    if fronts:
        mode = "3" if "3" in fronts else sorted(fronts)[-1]
        report.figure(
            "fma_formula_front", plot_formula_front(fronts[mode].front_, selected=fronts[mode].selected_, title=f"F=ma network, mode {mode}"),
            f"Complexity/accuracy front for the mode-{mode} F = m·a network's output.",
        )
    report.metrics["fma"] = {
        f.mode: {
            "count": f.count, "network_val_mse": f.val_mse, "exact_form": str(f.exact_form),
            "formula": str(f.distiller.expression_), "formula_nmse": f.distiller.selected_.nmse,
        }
        for f in formulas
    }


# ------------------------------------------------------------------------------------- transformer
def _transformer_setup(opts: dict[str, Any], seed: int) -> tuple[Any, Any, Any]:
    """The oscillator, the seed's OLA and its recipe, checked before anything trains."""
    from physlens.models.transformer import OscillatorTransformer, preset_config
    from physlens.training.trainer import TrainConfig

    try:
        system = OscillatorSystem(omega0=opts.get("omega0", 2.0), gamma=opts.get("gamma", 0.1))
        model = OscillatorTransformer(preset_config("OLA", seed=seed))
        config = TrainConfig(steps=opts.get("steps", 1000), seq_len=opts.get("seq_len", 10), lr=1e-2, schedule="cosine", seed=seed)
    except ValueError as error:
        raise StudySpecError(f"[transformer] is invalid: {error}") from None
    return system, model, config


def _transformer_section(
    report: Report, setup: tuple[Any, Any, Any], opts: dict[str, Any], distiller_args: dict[str, Any], seed: int, progress: bool
) -> None:
    from physlens.systems.oscillator import propagator
    from physlens.training.trainer import train

    try:
        from physlens.probes.network_formulas import probe_value_formula
    except ImportError as error:
        report.heading("4. A probe direction of the oscillator transformer")
        report.paragraph(f"Skipped: {error}.")
        return
    system, model, config = setup
    omega0, gamma, seq_len = opts.get("omega0", 2.0), opts.get("gamma", 0.1), config.seq_len
    result = train(model, system, config, progress=progress)
    test = system.sample(opts.get("n_probe", 2000), seq_len + 1, seed=seed + 20)
    inputs, targets = test.inputs_targets()
    hook = "blocks.0.hook_resid_post"
    found = probe_value_formula(model, inputs, targets[:, -1, 0], hook=hook, seed=seed, **distiller_args)
    probe, distiller = found.probe, found.distiller
    exact = propagator(omega0, gamma, system.dt)[0].tolist()
    report.heading("4. A probe direction of the oscillator transformer")
    report.paragraph(
        f"The seed's OLA (d_model 2, one head) trained {config.steps} steps on ω0 = {omega0}, γ = {gamma} "
        f"(final loss {format_number(float(np.mean(result.losses[-20:])))}). A ridge probe on `{hook}` at the last "
        f"position reads the next x with cross-validated R² {format_number(probe.cv_r2_, 4)}. The probe's "
        f"value, distilled with the [distill] settings as a function of the current state (x, p): {_formula(distiller.expression_)} "
        f"(relative error {format_number(distiller.selected_.nmse)}); the exact propagator gives "
        f"x(t+Δt) = {exact[0]:.4f}·x + {exact[1]:.4f}·p."
    )
    report.metrics["transformer"] = {
        "final_loss": float(np.mean(result.losses[-20:])), "probe_cv_r2": probe.cv_r2_,
        "formula": str(distiller.expression_), "formula_nmse": distiller.selected_.nmse, "exact_row": exact,
    }
