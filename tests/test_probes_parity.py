"""Parity under s → −s: a hand-built odd model is flagged, a model with a bias is not; even features and MLP probes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.probes.linear_probe import LinearProbe
from physlens.probes.nonlinear import mlp_probe_r2
from physlens.probes.parity import parity_report, pattern_features, quadratic_features
from physlens.systems import OscillatorSystem

SYSTEM = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma=0.1, dt=0.1, dtype="float64")
HOOKS = ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def _model(embed_bias: bool) -> OscillatorTransformer:
    # Attention-only, no positional embedding and no biases: every map is linear in s or, through
    # softmax(q·k) with q and k odd, even — so the residual stream is exactly odd in s.
    cfg = TransformerConfig(d_model=8, n_layers=2, n_heads=2, d_head=4, n_ctx=10, causal=True, attn_only=True,
                            embed_bias=embed_bias, unembed_bias=False, dtype="float64", seed=3)
    model = OscillatorTransformer(cfg).eval()
    if embed_bias:
        with torch.no_grad():
            model.b_E.copy_(torch.linspace(-2.0, 2.0, 8, dtype=torch.float64))
    return model


def test_an_odd_model_is_flagged_and_an_even_label_cannot_be_read_linearly():
    data = SYSTEM.sample(300, 10, seed=1)
    report = parity_report(_model(False), data.states, HOOKS, "all")
    assert float(report.even_share.max()) < 1e-20
    site = ("blocks.1.hook_resid_post", 9)
    assert report.is_odd(site)
    assert not report.linear_readout_possible(site, "omega0") and report.linear_readout_possible(site, "acceleration")
    # The flag is right: a ridge probe for ω0 there finds nothing.
    features = _model(False).run_with_cache(data.states, names_filter=site[0])[1][site[0]][:, 9].numpy()
    probe = LinearProbe(seed=0).fit(features, data.omega0.numpy())
    assert probe.cv_r2_ < 0.02


def test_a_model_with_a_bias_passes():
    report = parity_report(_model(True), SYSTEM.sample(300, 10, seed=2).states, HOOKS, "all")
    assert report.is_odd(("hook_embed", 3))  # W_E s + b_E: the bias is a constant, not variance
    assert not report.is_odd(("blocks.1.hook_resid_post", 9))
    assert report.linear_readout_possible(("blocks.1.hook_resid_post", 9), "omega0")


def test_quadratic_features_carry_an_even_quantity_that_linear_features_cannot():
    states = SYSTEM.sample(400, 1, seed=3).states[:, 0]
    radius = (states**2).sum(dim=1).numpy()
    linear = LinearRegression().fit(states.numpy(), radius).score(states.numpy(), radius)
    quadratic = quadratic_features(states, n_components=2).numpy()
    assert linear < 0.05
    assert LinearRegression().fit(quadratic, radius).score(quadratic, radius) == pytest.approx(1.0, abs=1e-10)
    assert quadratic.shape == (400, 2 + 3)


def test_pattern_features_are_the_query_row_of_every_head():
    model = _model(False)
    data = SYSTEM.sample(5, 10, seed=4).states
    features = pattern_features(model, data, layer=1, query=6)
    pattern = model.run_with_cache(data, names_filter="blocks.1.attn.hook_pattern")[1]["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(features, pattern[:, :, 6].reshape(5, -1))
    with pytest.raises(ValueError, match="query must be < the number of positions"):
        pattern_features(model, data, layer=1, query=10)


def test_mlp_probe_reads_a_nonlinear_function_that_a_linear_probe_misses(rng):
    x = rng.uniform(-1, 1, size=(400, 2))
    y = x[:, 0] ** 2 - x[:, 1] ** 2
    assert mlp_probe_r2(x, y, seed=0, hidden=(32,), max_iter=300) > 0.9
    assert LinearProbe(seed=0).fit(x, y).cv_r2_ < 0.05
    with pytest.raises(ValueError, match="same n"):
        mlp_probe_r2(x, y[:10])


def test_mlp_probe_reads_a_label_that_varies_little_around_a_large_offset(rng):
    """The damping factor e^{−γΔt} varies by about 1 % around 0.98: the probe standardises the
    target, so its R² is the same as for the same function without the offset and scale."""
    x = rng.normal(size=(600, 3))
    shape = np.tanh(x[:, 0]) + 0.5 * x[:, 1] ** 2
    small = 0.98 + 0.003 * shape
    r2_small = mlp_probe_r2(x, small, seed=0, hidden=(32,), max_iter=300)
    r2_plain = mlp_probe_r2(x, shape, seed=0, hidden=(32,), max_iter=300)
    assert r2_small > 0.9
    assert r2_small == pytest.approx(r2_plain, abs=1e-6)


def test_validation_r2_is_scikit_learns_r2_score(rng):
    from sklearn.metrics import r2_score

    from physlens.probes.nonlinear import validation_r2

    y = rng.normal(size=200)
    predicted = y + 0.3 * rng.normal(size=200)
    assert validation_r2(y, predicted) == r2_score(y, predicted)
    assert validation_r2(y[:, None], predicted) == r2_score(y[:, None], predicted)
    constant = np.full(10, 2.5)
    assert validation_r2(constant, constant) == r2_score(constant, constant) == 1.0
    assert validation_r2(constant, constant + 1) == r2_score(constant, constant + 1) == 0.0
    with pytest.raises(ValueError, match="same n"):
        validation_r2(y, y[:-1])


def test_the_probes_early_stopping_score_is_scikit_learns(rng):
    from sklearn.neural_network import MLPRegressor

    from physlens.probes.nonlinear import mlp_probe

    x = rng.normal(size=(300, 4))
    y = np.sin(x[:, 0]) + x[:, 1] * x[:, 2]
    probe = mlp_probe((16,), seed=0, max_iter=50).fit(x, y)
    regressor = probe.regressor_[-1]  # the fitted MLP inside the scaling pipeline
    scaled_x, scaled_y = probe.regressor_[0].transform(x), probe.transformer_.transform(y[:, None])
    assert regressor._score(scaled_x, scaled_y) == MLPRegressor._score(regressor, scaled_x, scaled_y)
    assert len(regressor.validation_scores_) == regressor.n_iter_
