"""Ridge probes: agreement with scikit-learn, grouped folds, streaming == in memory, known answers, controls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import PredefinedSplit, cross_val_predict

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.probes import linear_probe
from physlens.probes.activations import collect_activations
from physlens.probes.linear_probe import (
    DEFAULT_ALPHAS,
    LinearProbe,
    ProbeStatistics,
    RidgeProbeSweep,
    grouped_folds,
    probe_sweep,
    random_init_copy,
    ridge_solve,
)
from physlens.systems import OscillatorSystem, Uniform


def tiny_model(seed: int = 0, **overrides) -> OscillatorTransformer:
    cfg = dict(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=8, causal=False, dtype="float64", seed=seed)
    return OscillatorTransformer(TransformerConfig(**{**cfg, **overrides})).eval()


def variable_system() -> OscillatorSystem:
    return OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=Uniform(0.0, 0.3), dtype="float64")


def test_coefficients_match_sklearn_ridge(rng):
    X = rng.normal(size=(300, 6)) * np.arange(1, 7) + 5
    y = np.stack([X @ rng.normal(size=6) + rng.normal(size=300), X[:, 0] ** 2], axis=1)
    for alpha in (1e-3, 2.5, 400.0):
        probe = LinearProbe(alphas=[alpha]).fit(X, y)
        reference = Ridge(alpha=alpha).fit(X, y)
        np.testing.assert_allclose(probe.coef_, reference.coef_, rtol=0, atol=1e-6)
        np.testing.assert_allclose(probe.intercept_, reference.intercept_, rtol=0, atol=1e-6)
        np.testing.assert_allclose(probe.predict(X), reference.predict(X), rtol=0, atol=1e-6)


def test_cross_validated_r2_matches_sklearn(rng, seed):
    X = rng.normal(size=(200, 4))
    groups = np.repeat(np.arange(40), 5)  # 5 samples per "trajectory"
    y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(size=40)[groups] + 0.3 * rng.normal(size=200)
    folds = grouped_folds(groups, 5, seed=seed).numpy()
    for g in range(40):  # a trajectory never straddles folds
        assert len(set(folds[groups == g])) == 1
    probe = LinearProbe(alphas=[0.7], seed=seed).fit(X, y, groups)
    oof = cross_val_predict(Ridge(alpha=0.7), X, y, cv=PredefinedSplit(folds))
    assert probe.cv_r2_ == pytest.approx(r2_score(y, oof), abs=1e-10)


def test_alpha_choice_matches_ridgecv_with_equal_folds(rng):
    X = rng.normal(size=(250, 8))
    y = X @ rng.normal(size=8) + 3 * rng.normal(size=250)
    folds = grouped_folds(np.arange(250), 5, seed=3).numpy()  # 50 samples per fold
    sweep = RidgeProbeSweep(alphas=DEFAULT_ALPHAS).fit(torch.from_numpy(X)[:, None], torch.from_numpy(y), folds=folds)
    reference = RidgeCV(alphas=DEFAULT_ALPHAS, cv=PredefinedSplit(folds)).fit(X, y)
    assert float(sweep.alpha_[0, 0]) == reference.alpha_
    np.testing.assert_allclose(sweep.coef_[0, :, 0].numpy(), reference.coef_, atol=1e-6)


def test_estimator_is_clonable():
    probe = LinearProbe(alphas=[1.0, 2.0], n_folds=3)
    copy = clone(probe)
    assert copy.get_params() == probe.get_params()


def test_ridge_solve_handles_singular_gram():
    x = torch.randn(50, 3, dtype=torch.float64)
    design = torch.cat([x, x[:, :1]], dim=1)  # rank 3 in 4 columns
    gram = design.T @ design
    cross = design.T @ torch.randn(50, 1, dtype=torch.float64)
    w = ridge_solve(gram[None], cross[None], 0.0)[0]
    np.testing.assert_allclose(w.numpy(), (torch.linalg.pinv(gram) @ cross).numpy(), atol=1e-8)


def test_probe_recovers_linear_feature_and_fails_on_absent_one():
    model = tiny_model()
    data = variable_system().sample(200, 8, seed=5)
    labels = data.labels()
    labels["x"] = data.states[:, :, 0]  # the embedding is affine in x: linear by construction
    labels["noise"] = torch.randn(200, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    result = probe_sweep(model, data.states, ["hook_embed", "blocks.1.hook_resid_post"], labels=labels,
                         targets=["x", "noise"], control_model=None)
    x_r2 = result.r2[0, :, 0]
    assert np.all(x_r2 > 1 - 1e-9)
    assert np.all(result.r2[:, :, 1] < 0.05)
    assert np.all(result.shuffled_r2 < 0.05)


def test_streaming_equals_in_memory():
    model = tiny_model()
    data = variable_system().sample(60, 8, seed=2)
    hooks = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_result"]
    streamed = probe_sweep(model, data, hooks, targets=["omega0", "energy"], positions=[1, 5, 7],
                           control_model=None, shuffled_control=False, batch_size=7, alphas=[1e-3, 1.0])
    acts = collect_activations(model, data, hooks, positions=[1, 5, 7])
    y = torch.stack([acts.labels["omega0"][:, None].expand(60, 3), acts.labels["energy"]], dim=-1)
    for h, hook in enumerate(hooks):
        sweep = RidgeProbeSweep(alphas=[1e-3, 1.0]).fit(acts.features(hook), y, folds=streamed.folds)
        np.testing.assert_allclose(streamed.r2[h], sweep.cv_r2_.numpy(), atol=1e-9)


def test_stream_of_chunks_runs_and_keeps_memory_per_chunk():
    model = tiny_model()
    system = variable_system()
    chunks = (system.sample(32, 8, seed=s) for s in range(4))
    result = probe_sweep(model, chunks, ["blocks.1.hook_resid_post"], targets=["omega0"], control_model=None)
    assert result.n_trajectories == 128
    assert result.r2.shape == (1, 8, 1)


def test_controls_random_init_and_selectivity():
    model = tiny_model()
    data = variable_system().sample(80, 8, seed=4)
    result = probe_sweep(model, data, ["blocks.0.hook_resid_post"], targets=["omega0"], control_seed=77)
    assert result.control_r2 is not None and result.shuffled_r2 is not None
    np.testing.assert_allclose(result.selectivity, result.r2 - result.control_r2)
    best = result.best_site("omega0")
    assert set(best) >= {"hook", "position", "r2", "control_r2", "selectivity", "shuffled_r2"}
    control = random_init_copy(model, 77)
    assert not torch.equal(control.W_E, model.W_E)
    with pytest.raises(ValueError, match="must differ"):
        random_init_copy(model, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(hooks=["blocks.9.hook_resid_post"]), "unknown hook"),
        (dict(positions=[8]), "out of range"),
        (dict(targets=["gamma_fixed"]), "constant"),
        (dict(targets=["nope"]), "not among the labels"),
        (dict(n_traj=3), "at least n_folds"),
        (dict(labels_len=5), "one entry per example|entries for"),
        (dict(nonfinite=True), "finite"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, message):
    model = tiny_model()
    data = OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=0.1, dtype="float64").sample(kwargs.get("n_traj", 20), 8, seed=0)
    labels = data.labels()
    labels["gamma_fixed"] = labels["gamma"]
    if "labels_len" in kwargs:
        labels["omega0"] = labels["omega0"][: kwargs["labels_len"]]
    if kwargs.get("nonfinite"):
        labels["omega0"] = labels["omega0"].clone()
        labels["omega0"][0] = float("nan")
    with pytest.raises(ValueError, match=message):
        probe_sweep(model, data.states, kwargs.get("hooks", ["hook_embed"]), labels=labels,
                    targets=kwargs.get("targets", ["omega0"]), positions=kwargs.get("positions", "all"), control_model=None)


def test_sweep_rejects_constant_target_and_too_few_groups():
    X = torch.randn(10, 2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="constant"):
        RidgeProbeSweep(n_folds=2).fit(X, torch.ones(10))
    with pytest.raises(ValueError, match="at least n_folds"):
        RidgeProbeSweep(n_folds=5).fit(X, torch.randn(10), groups=[0, 0, 1, 1, 2, 2, 3, 3, 3, 3])
    with pytest.raises(ValueError, match="one row per sample"):
        RidgeProbeSweep().fit(X, torch.randn(9))


@pytest.mark.parametrize("buffer_values", [64, 1 << 18])  # one site per block, or all sites in one block
def test_statistics_equal_direct_per_fold_sums(rng, buffer_values, monkeypatch):
    """Per-fold sums of shifted data, against numpy sums over each fold's rows (chunks in any fold order)."""
    monkeypatch.setattr(linear_probe, "BUFFER_VALUES", buffer_values)
    n_sites, d, t, k = 3, 4, 2, 4
    chunks = []
    for n in (23, 17):
        X = (rng.normal(size=(n, n_sites, d)) * 3 + 10).astype(np.float32)
        y = rng.normal(size=(n, n_sites, t)) + 5
        folds = rng.integers(0, k - 1 if n == 17 else k, size=n)  # the second chunk leaves the last fold empty
        chunks.append((X, y, folds))
    stats = ProbeStatistics(n_sites, d, t, k)
    for X, y, folds in chunks:
        stats.update(torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(folds))
    shift_x, shift_y = stats.shift_x.numpy(), stats.shift_y.numpy()
    np.testing.assert_allclose(shift_x, chunks[0][0].astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(shift_y, chunks[0][1].mean(axis=0), rtol=1e-12)
    X = np.concatenate([c[0] for c in chunks]).astype(np.float64) - shift_x
    y = np.concatenate([c[1] for c in chunks]) - shift_y
    folds = np.concatenate([c[2] for c in chunks])
    for fold in range(k):
        xk, yk = X[folds == fold], y[folds == fold]
        assert stats.count[fold] == len(xk)
        np.testing.assert_allclose(stats.sum_x[fold].numpy(), xk.sum(axis=0), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(stats.sum_y[fold].numpy(), yk.sum(axis=0), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(stats.xx[fold].numpy(), np.einsum("nsd,nse->sde", xk, xk), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(stats.xy[fold].numpy(), np.einsum("nsd,nst->sdt", xk, yk), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(stats.yy[fold].numpy(), (yk**2).sum(axis=0), rtol=1e-10, atol=1e-10)


def test_statistics_refuse_a_nonfinite_chunk_and_stay_unchanged(rng):
    stats = ProbeStatistics(2, 3, 1, 2)
    X, y, folds = torch.randn(10, 2, 3), torch.randn(10, 2, 1, dtype=torch.float64), torch.arange(10) % 2
    stats.update(X, y, folds)
    before = [getattr(stats, name).clone() for name in ("count", "sum_x", "sum_y", "xx", "xy", "yy", "shift_x")]
    for name, bad in (("X", X.clone().index_fill_(0, torch.tensor([4]), float("inf"))), ("y", None)):
        bad_y = y.clone().index_fill_(0, torch.tensor([7]), float("nan")) if bad is None else y
        with pytest.raises(ValueError, match=f"{name} must contain only finite values"):
            stats.update(X if bad is None else bad, bad_y, folds)
    after = [getattr(stats, name) for name in ("count", "sum_x", "sum_y", "xx", "xy", "yy", "shift_x")]
    for old, new in zip(before, after):
        assert torch.equal(old, new)
    fresh = ProbeStatistics(2, 3, 1, 2)
    with pytest.raises(ValueError, match="X must contain only finite values"):
        fresh.update(X.clone().fill_(float("nan")), y, folds)
    assert fresh.shift_x is None
