"""The planted-channel organism (its causal graph, checked by ablation) and the calibration of the
analyses on it and on its null twin: each analysis must return the answer the construction fixes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from physlens.models.base import MODEL_REGISTRY
from physlens.models.planted import PlantedConfig, PlantedOrganism, step_kernel, three_state_omega0
from physlens.models.transformer import OscillatorTransformer, TransformerConfig
from physlens.probes.ablation import Component, ablation_sweep
from physlens.probes.attribution import attribution_patching_sweep, patching_agreement
from physlens.probes.linear_probe import probe_sweep
from physlens.probes.patching import patching_sweep
from physlens.probes.planted import (
    ANALYSES,
    ORGANISMS,
    calibration_rows,
    calibration_table,
    claimed_patching_cells,
    claimed_probe_sites,
    expected_ablation_components,
    expected_patching_cells,
    expected_probe_sites,
    expected_steering_slope,
    make_organism,
    omega0_system,
    random_transformer_control,
    residual_hooks,
    steering_claim,
)
from physlens.probes.steering import fit_probe_direction, model_fingerprint, steering_sweep
from physlens.systems.oscillator import propagator

N_CTX = 16


@pytest.fixture(scope="module")
def system():
    return omega0_system()


@pytest.fixture(scope="module")
def planted() -> PlantedOrganism:
    return make_organism("planted", n_ctx=N_CTX)


@pytest.fixture(scope="module")
def null() -> PlantedOrganism:
    return make_organism("null", n_ctx=N_CTX)


@pytest.fixture(scope="module")
def pairs(system):
    clean, corrupted = system.sample_swap_pairs(16, N_CTX, seed=3)
    return clean.states, corrupted.states


# --- the organism ------------------------------------------------------------------------------

def test_three_state_estimate_and_step_are_exact(system):
    data = system.sample(32, 3, seed=0)
    estimate = three_state_omega0(data.states[:, 0], data.states[:, 1], data.states[:, 2], 0.1, 0.1)
    assert_allclose(estimate.numpy(), data.omega0.numpy(), rtol=1e-9)
    assert_allclose(step_kernel(data.omega0, 0.1, 0.1).numpy(), propagator(data.omega0, 0.1, 0.1).numpy(), atol=1e-14)


def test_planted_organism_predicts_exactly_once_its_sources_are_in_context(planted, system):
    inputs, targets = system.sample(32, N_CTX + 1, seed=1).inputs_targets()
    with torch.no_grad():
        error = (planted(inputs) - targets).pow(2).sum(-1)
    assert float(error[:, 2:].max()) < 1e-24
    assert float(error[:, :2].mean()) > 1e-4  # before position 2 it steps with the reference ω0


def test_null_organism_steps_every_state_with_the_reference_frequency(null, system):
    inputs, _ = system.sample(8, N_CTX + 1, seed=2).inputs_targets()
    kernel = propagator(torch.tensor(null.cfg.omega0_reference, dtype=torch.float64), 0.1, 0.1)
    assert_allclose(null(inputs).detach().numpy(), torch.einsum("ij,bpj->bpi", kernel, inputs).numpy(), atol=1e-14)


def test_organism_has_the_transformer_hooks_the_analyses_use(planted):
    transformer = OscillatorTransformer(TransformerConfig(d_model=8, n_layers=2, n_heads=2, d_head=2, attn_only=False, d_mlp=3))
    split_inputs = ("hook_q_input", "hook_k_input", "hook_v_input")
    wanted = [name for name in transformer.hook_names if not name.endswith(split_inputs)]
    assert set(wanted) <= set(planted.hook_names)
    for field in ("n_layers", "n_heads", "d_model", "d_head", "device", "n_key_value_heads"):
        assert getattr(planted.cfg, field) == getattr(transformer.cfg, field)
    _, cache = planted.run_with_cache(torch.zeros(2, 5, 2, dtype=torch.float64))
    assert cache["blocks.0.attn.hook_z"].shape == (2, 5, 2, 2) and cache["blocks.1.hook_resid_post"].shape == (2, 5, 8)


def test_channel_holds_gain_times_omega0_offset_along_its_direction(system):
    model = PlantedOrganism(PlantedConfig(n_ctx=N_CTX, channel_gain=2.0, omega0_reference=3.0, seed=4))
    data = system.sample(16, N_CTX, seed=5)
    _, cache = model.run_with_cache(data.states, names_filter="blocks.1.hook_resid_pre")
    reading = cache["blocks.1.hook_resid_pre"] @ model.channel_direction  # [batch, pos]
    assert_allclose(reading[:, 2:].numpy(), (2.0 * (data.omega0 - 3.0))[:, None].expand(-1, N_CTX - 2).numpy(), atol=1e-9)
    assert_allclose(reading[:, :2].numpy(), 0.0, atol=1e-12)
    assert float(torch.linalg.vector_norm(model.channel_direction)) == pytest.approx(1.0)


def _project_out(direction: torch.Tensor):
    def hook(activation, hook):
        return activation - (activation @ direction)[..., None] * direction

    return hook


def test_causal_graph_by_ablation(planted, null, system):
    inputs, targets = system.sample(32, N_CTX + 1, seed=6).inputs_targets()
    # Mean-ablating a component changes the output only for the planted head, its layer's attention and the stepper.
    result = ablation_sweep(planted, inputs, targets, method="mean")
    changed = {Component("head", l, h) for l in range(2) for h in range(2) if result.head_loss[l, h] > 1e-20}
    changed |= {Component("attn", l) for l in range(2) if result.attn_loss[l] > 1e-20}
    changed |= {Component("mlp", l) for l in range(2) if result.mlp_loss[l] > 1e-20}
    assert changed == expected_ablation_components(planted)
    assert result.head_loss[0, 0] > 1e-3  # the ablated channel leaves a context-blind model
    # Removing the channel direction alone turns the organism into its null twin ...
    reference = PlantedOrganism(PlantedConfig(n_ctx=N_CTX, channel="none", seed=planted.cfg.seed))
    with torch.no_grad():
        with planted.hooks(fwd_hooks=[("blocks.0.hook_resid_mid", _project_out(planted.channel_direction))]):
            ablated = planted(inputs)
        assert_allclose(ablated.numpy(), reference(inputs).numpy(), atol=1e-14)
    # ... while removing the distractor's direction, which carries the same estimate, changes nothing.
    with torch.no_grad():
        intact = planted(inputs)
        with planted.hooks(fwd_hooks=[("blocks.1.hook_resid_mid", _project_out(planted.distractor_direction))]):
            kept = planted(inputs)
    assert_allclose(kept.numpy(), intact.numpy(), atol=1e-15)


def test_null_organism_activations_depend_on_the_current_state_only(null, pairs):
    clean, corrupted = pairs  # contexts that differ in ω0 but end in the same state
    _, a = null.run_with_cache(clean)
    _, b = null.run_with_cache(corrupted)
    for name in null.hook_names:
        if name.endswith(("hook_pattern", "hook_attn_scores")):
            assert torch.equal(a[name], b[name]), name  # positional: the same for every input
        else:
            assert_allclose(a[name][:, -1].numpy(), b[name][:, -1].numpy(), atol=1e-15, err_msg=name)


def test_organism_round_trips_through_its_config_and_seed_moves_the_frame():
    model = PlantedOrganism(PlantedConfig(n_ctx=N_CTX, distractor_layer=1, distractor_head=1, seed=7))
    rebuilt = MODEL_REGISTRY["PlantedOrganism"].from_config_dict(model.config_dict())
    assert model_fingerprint(rebuilt) == model_fingerprint(model)
    other = PlantedOrganism(PlantedConfig(n_ctx=N_CTX, seed=8))
    assert abs(float(other.channel_direction @ model.channel_direction)) < 0.99


def test_organism_cfg_dtype_is_a_torch_dtype_and_serialises_to_its_name():
    import json

    for dtype in ("float32", torch.float64):
        model = PlantedOrganism(PlantedConfig(n_ctx=N_CTX, dtype=dtype))
        assert isinstance(model.cfg.dtype, torch.dtype) and torch.zeros(2, dtype=model.cfg.dtype).dtype == model.W_E.dtype
        saved = json.loads(json.dumps(model.config_dict()))
        assert saved["dtype"] == str(model.W_E.dtype).removeprefix("torch.") and PlantedConfig(**saved) == model.cfg


@pytest.mark.parametrize(
    ("overrides", "argument"),
    [
        ({"planted_layer": 2}, "planted_layer"),
        ({"planted_layer": -1}, "planted_layer"),
        ({"planted_head": 2}, "planted_head"),
        ({"distractor_layer": 3}, "distractor_layer"),
        ({"distractor_layer": 1, "distractor_head": 5}, "distractor_head"),
        ({"distractor_layer": 0, "distractor_head": 0}, "distractor_layer/distractor_head"),
        ({"source_start": 14}, "source_start"),
        ({"source_start": -1}, "source_start"),
        ({"d_model": 4}, "d_model"),
        ({"d_head": 1}, "d_head"),
        ({"d_mlp": 2}, "d_mlp"),
        ({"channel": "elsewhere"}, "channel"),
        ({"omega0_reference": 0.05}, "omega0_reference"),
        ({"channel_gain": 0.0}, "channel_gain"),
        ({"gamma": float("nan")}, "gamma"),
    ],
)
def test_bad_construction_is_refused_naming_the_argument(overrides, argument):
    with pytest.raises(ValueError, match=argument):
        PlantedConfig(n_ctx=N_CTX, **overrides)


def test_bad_inputs_are_refused(planted):
    with pytest.raises(ValueError, match="shape"):
        planted(torch.zeros(2, 5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="n_ctx"):
        planted(torch.zeros(2, N_CTX + 1, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype"):
        planted(torch.zeros(2, 5, 2))
    with pytest.raises(ValueError, match="no distractor"):
        _ = make_organism("null").distractor_direction


# --- calibration: each analysis on the organisms ------------------------------------------------

def test_probes_find_the_planted_sites_and_nothing_on_the_null(planted, null, system):
    data = system.sample(96, N_CTX, seed=9)
    hooks, positions = residual_hooks(planted), [0, 1, 2, 8, N_CTX - 1]
    control = random_transformer_control(planted)
    found = claimed_probe_sites(probe_sweep(planted, data, hooks, targets=["omega0"], positions=positions, control_model=control))
    expected = expected_probe_sites(planted, hooks, positions)
    assert found == expected
    assert ("blocks.0.hook_attn_out", N_CTX - 1) in expected and ("blocks.1.hook_attn_out", 8) in expected  # planted and distractor
    assert ("blocks.0.hook_resid_pre", N_CTX - 1) not in expected and ("blocks.1.hook_mlp_out", N_CTX - 1) not in expected
    null_result = probe_sweep(null, data, hooks, targets=["omega0"], positions=positions, control_model=control)
    assert claimed_probe_sites(null_result) == set() == expected_probe_sites(null, hooks, positions)
    assert float(np.max(null_result.r2)) < 0.1


def test_patching_localises_the_planted_head_and_refuses_the_null(planted, null, pairs):
    clean, corrupted = pairs
    heads = patching_sweep(planted, clean, corrupted, site="z", per_position=False)
    required, allowed = expected_patching_cells(planted, "z", N_CTX)
    assert claimed_patching_cells(heads) == required == allowed == {(0, 0)}
    assert_allclose(heads.mean().reshape(-1).numpy(), [1.0, 0.0, 0.0, 0.0], atol=1e-9)  # the distractor (L1H1) recovers 0
    layers = patching_sweep(planted, clean, corrupted, site="resid_pre")
    required, allowed = expected_patching_cells(planted, "resid_pre", N_CTX)
    assert required <= claimed_patching_cells(layers) <= allowed
    assert required == {(1, N_CTX - 1)} and allowed == required | {(0, 0), (0, 1), (0, 2)}
    with pytest.raises(ValueError, match="identical predictions"):
        patching_sweep(null, clean, corrupted, site="z", per_position=False)


def test_attribution_patching_localises_the_channel_but_misranks_its_sources(planted, pairs):
    clean, corrupted = pairs
    exact = patching_sweep(planted, clean, corrupted, site="attn_out")
    estimate = attribution_patching_sweep(planted, clean, corrupted, site="attn_out")
    assert claimed_patching_cells(estimate) == expected_patching_cells(planted, "attn_out", N_CTX)[0]
    channel = float(estimate.mean().reshape(-1)[N_CTX - 1])
    assert channel > 0.6 and abs(channel - 1) > 1e-3  # first order in a map that curves over Δω0 ≥ 0.5: near, not at, the exact 1
    # At the source states the estimator is strongly nonlinear: the gradient estimate is no ranking there.
    sources = patching_agreement(patching_sweep(planted, clean, corrupted, site="resid_pre"),
                                 attribution_patching_sweep(planted, clean, corrupted, site="resid_pre"))
    assert sources.pearson < 0.8
    assert math.isclose(patching_agreement(exact, estimate).pearson, 1.0, abs_tol=1e-6)


def test_steering_moves_the_frequency_with_the_analytic_slope(planted, system):
    train, contexts = system.sample(128, N_CTX, seed=10), system.sample(16, N_CTX, seed=11)
    alphas = [-0.5, 0.0, 0.5]
    direction = fit_probe_direction(planted, train, "blocks.0.hook_resid_mid", N_CTX - 1, "omega0", seq_len=N_CTX)
    expected = expected_steering_slope(planted, direction)
    assert expected == pytest.approx(1.0, abs=1e-4)
    result = steering_sweep(planted, direction, contexts, alphas, n_steps=10)
    assert result.slope.estimate == pytest.approx(expected, abs=1e-4) and steering_claim(result) == "reads"
    assert np.all(result.omega0_shift[1] == 0) and np.all(result.control_shift[1] == 0)  # α = 0 is the unsteered rollout
    # The distractor's direction carries ω0 as well, but nothing reads it: slope 0.
    unread = fit_probe_direction(planted, train, "blocks.1.hook_attn_out", N_CTX - 1, "omega0", seq_len=N_CTX)
    assert unread.cv_r2 > 0.999 and expected_steering_slope(planted, unread) == pytest.approx(0.0, abs=1e-6)
    assert abs(steering_sweep(planted, unread, contexts, alphas, n_steps=10).slope.estimate) < 1e-4


def test_steering_compounds_on_a_model_that_re_estimates_from_its_rollout(system):
    latest = make_organism("latest-window", n_ctx=N_CTX)
    train, contexts = system.sample(128, N_CTX, seed=12), system.sample(16, N_CTX, seed=13)
    direction = fit_probe_direction(latest, train, "blocks.0.hook_resid_mid", N_CTX - 1, "omega0", seq_len=N_CTX)
    assert expected_steering_slope(latest, direction) is None
    slope = steering_sweep(latest, direction, contexts, [-0.25, 0.0, 0.25], n_steps=10).slope
    assert slope.low > 1.5  # it does read the channel as ω0, yet the slope is not 1


def test_calibration_rows_are_correct_on_every_organism():
    rows = calibration_rows(seeds=(0,), n_trajectories=64, n_pairs=12)
    assert [(r["organism"], r["analysis"]) for r in rows] == [(o, a) for o in ORGANISMS for a in ANALYSES]
    wrong = [(r["analysis"], r["organism"], r["found"]) for r in rows if not r["correct"]]
    assert not wrong
    for row in rows:
        assert set(row) >= {"analysis", "organism", "expected", "found", "correct", "power", "false_positive_rate", "n_seeds"}
        assert math.isnan(row["false_positive_rate"]) or row["false_positive_rate"] == 0.0
    by = {(r["analysis"], r["organism"]): r for r in rows}
    assert by[("activation patching", "planted")]["power"] == 1.0
    assert by[("probes", "null")]["found"].startswith("seed 0: 0 sites")


def test_calibration_rows_refuse_bad_arguments():
    with pytest.raises(ValueError, match="organisms"):
        calibration_rows(organisms=["trained"])
    with pytest.raises(ValueError, match="analyses"):
        calibration_rows(analyses=["saliency"])
    with pytest.raises(ValueError, match="n_ctx"):
        calibration_rows(n_ctx=10)
    with pytest.raises(ValueError, match="name"):
        make_organism("planted-elsewhere")


def test_calibration_table_renders_every_row():
    rows = calibration_rows(organisms=["null"], analyses=["probes", "mean ablation"], seeds=(0,), n_trajectories=32)
    table = calibration_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert table[2].startswith("| probes | null | nothing | seed 0: 0 sites") and "| yes |" in table[2]
    assert table[3].split("|")[6].strip() == "1.00"  # the stepper is the one component whose ablation matters
    with pytest.raises(ValueError, match="lacks"):
        calibration_table([{"analysis": "probes"}])


# --- the oscillator study's sentences on the organisms ------------------------------------------

def _study_findings(model, analysis: str, options: dict) -> list[str]:
    from physlens.studies.oscillator_analyses import AnalysisContext, parse_analyses, run_analyses

    system = omega0_system()
    parsed = parse_analyses({"run": [analysis], analysis: options}, model, system, N_CTX)
    ctx = AnalysisContext(model=model, system=system, seq_len=N_CTX, loss_positions="last", seed=0, progress=False)
    run_analyses(ctx, parsed)
    return ctx.findings


def test_study_patching_names_the_planted_cells_and_says_nothing_on_the_null(planted, null):
    findings = _study_findings(planted, "patching", {"n_pairs": 8})
    assert any("best single cell (layer 0, head 0) recovers 1" in f for f in findings)
    assert any("best single cell (layer 0, pos 15) recovers 1" in f for f in findings)  # attn_out
    null_findings = _study_findings(null, "patching", {"n_pairs": 8})
    assert null_findings == [
        "Patching: for every pair the clean and corrupted contexts give the same last prediction, so the prediction does "
        "not depend on what differs (omega0) there: nothing to localise."
    ]


def test_study_ablation_ranks_the_planted_head_and_nothing_on_the_null(planted, null):
    options = {"n_trajectories": 32, "rollout_trajectories": 4, "rollout_steps": 3, "methods": ["mean"]}
    findings = _study_findings(planted, "ablation", options)
    assert findings[0].startswith("Mean-ablating layer 0 head 0 hurts most among heads")
    null_findings = _study_findings(null, "ablation", options)
    assert len(null_findings) == 1 and "hurts most" not in null_findings[0]
    assert "leaves the next-step loss at" in null_findings[0] and "(largest ×1)" in null_findings[0]


def test_study_steering_reads_the_channel_and_gives_the_null_no_wrong_reason(planted, null):
    options = {"n_trajectories": 16, "n_probe_trajectories": 64, "hooks": ["blocks.0.hook_resid_mid"]}
    findings = _study_findings(planted, "steering", options)
    assert "is dω0/dα = 1 [1, 1]" in findings[0] and findings[0].endswith("the model reads this direction as its ω0.")
    null_findings = _study_findings(null, "steering", options)
    assert len(null_findings) == 1 and "reads this direction" not in null_findings[0]
    # The probe decodes nothing, so its push is enormous and the rollouts break: said so, not blamed on the model.
    assert null_findings[0].startswith("Steering was skipped") and "decode omega0 poorly" in null_findings[0]
    assert "no oscillation" not in null_findings[0]


def test_where_the_channel_is_written_and_read_from(planted, system):
    latest = make_organism("latest-window", n_ctx=N_CTX)
    assert planted.channel_positions(N_CTX) == latest.channel_positions(N_CTX) == list(range(2, N_CTX))
    assert planted.source_positions(1) is None and planted.source_positions(9) == [0, 1, 2]
    assert latest.source_positions(9) == [7, 8, 9]
    assert planted.W_O.shape == (2, 2, 2, 8) and planted.W_V.shape == (2, 2, 8, 2)
    assert float((planted.W_Q.abs().sum() + planted.W_K.abs().sum()).detach()) == 0.0  # patterns are positional
    written = planted.W_O[0, 0, 0]  # the planted head's first z component, in the residual stream
    assert_allclose(written.detach().numpy(), planted.channel_direction.numpy(), atol=1e-15)
    # The loss form of the call backpropagates into every hook, as on the transformer.
    inputs, targets = system.sample(4, N_CTX + 1, seed=14).inputs_targets()
    loss, cache = planted.run_with_cache(inputs, return_type="loss", targets=targets, incl_bwd=True)
    assert float(loss.detach()) < 1e-3 and cache["blocks.0.hook_attn_out_grad"].shape == (4, N_CTX, 8)


def test_an_in_place_hook_edit_reaches_neither_the_previous_activation_nor_the_callers_states():
    import torch

    from physlens.models.organisms import LeastSquaresOrganism
    from physlens.probes.planted import make_organism, omega0_system

    states = omega0_system().sample(4, 16, seed=0).states
    organism = make_organism("planted", n_ctx=16)
    seen = {}

    def keep(z, hook):
        seen["tensor"], seen["copy"] = z, z.clone()  # the very tensor the embed hook handed on, and its value

    with torch.no_grad():
        organism.run_with_hooks(states, fwd_hooks=[("hook_embed", keep), ("blocks.0.hook_resid_pre", lambda z, hook: z.zero_())])
    assert torch.equal(seen["tensor"], seen["copy"]) and bool(seen["copy"].abs().sum() > 0)
    kept = states.clone()
    LeastSquaresOrganism(5, n_ctx=16).run_with_hooks(states, fwd_hooks=[("hook_observed", lambda z, hook: z.zero_())])
    assert torch.equal(states, kept)  # the caller's states are untouched
