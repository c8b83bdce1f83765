"""The tiny MLP and the stacked ensemble: forward maths, hooks, init, members, checkpoints, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from numpy.testing import assert_allclose

from physlens.models.mlp import (
    DeepEnsembleConfig,
    DeepMLPEnsemble,
    EnsembleConfig,
    MLPConfig,
    MLPEnsemble,
    TinyMLP,
    init_deep_parameters,
    init_mlp_parameters,
)
from physlens.training.checkpoints import load_checkpoint, save_checkpoint


def test_forward_is_linear_relu_linear(torch_gen):
    model = TinyMLP(MLPConfig(d_hidden=3, seed=4, dtype="float64"))
    x = torch.rand(10, 2, generator=torch_gen, dtype=torch.float64)
    expected = torch.relu(x @ model.W_in + model.b_in) @ model.W_out + model.b_out
    assert_allclose(model(x).detach(), expected.detach(), rtol=1e-12)
    out, cache = model.run_with_cache(x)
    assert cache["hook_pre"].shape == (10, 3) and cache["hook_post"].shape == (10, 3)
    assert_allclose(cache["hook_post"], torch.relu(cache["hook_pre"]), rtol=0)
    assert model.hook_names == ["hook_pre", "hook_post"]


def test_init_matches_torch_linear_bounds():
    params = init_mlp_parameters(64, seed=1, dtype="float64")
    assert float(params["W_in"].abs().max()) <= 1 / math.sqrt(2)
    assert float(params["W_out"].abs().max()) <= 1 / math.sqrt(64)
    assert float(params["W_in"].abs().max()) > 0.6 / math.sqrt(2)  # draws fill the range
    again = init_mlp_parameters(64, seed=1, dtype="float64")
    assert all(torch.equal(params[k], again[k]) for k in params)
    assert not torch.equal(params["W_in"], init_mlp_parameters(64, seed=2, dtype="float64")["W_in"])


def test_ensemble_members_equal_standalone_networks(torch_gen):
    seeds = [3, 9, 27]
    ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds, d_hidden=2, dtype="float64"))
    x = torch.rand(3, 7, 2, generator=torch_gen, dtype=torch.float64)
    out = ensemble(x)
    for i, s in enumerate(seeds):
        alone = TinyMLP(MLPConfig(seed=s, dtype="float64"))
        member = ensemble.member(i)
        for name in ("W_in", "b_in", "W_out", "b_out"):
            assert torch.equal(getattr(alone, name), getattr(member, name))
        assert_allclose(out[i].detach(), alone(x[i]).detach(), rtol=1e-12)
    _, cache = ensemble.run_with_cache(x)
    assert cache["hook_pre"].shape == (3, 7, 2)
    rebuilt = MLPEnsemble.from_members([ensemble.member(i) for i in range(3)])
    assert torch.equal(rebuilt.W_in, ensemble.W_in) and rebuilt.cfg.seeds == seeds


def test_checkpoints_round_trip(tmp_path, torch_gen):
    model = TinyMLP(MLPConfig(d_hidden=4, seed=7))
    ensemble = MLPEnsemble(EnsembleConfig(seeds=[1, 2], d_hidden=3))
    save_checkpoint(tmp_path / "mlp", model)
    save_checkpoint(tmp_path / "ens", ensemble)
    loaded, _ = load_checkpoint(tmp_path / "mlp")
    loaded_ens, _ = load_checkpoint(tmp_path / "ens")
    assert isinstance(loaded, TinyMLP) and torch.equal(loaded.W_in, model.W_in)
    assert isinstance(loaded_ens, MLPEnsemble) and torch.equal(loaded_ens.b_out, ensemble.b_out)
    assert loaded_ens.cfg.seeds == [1, 2]


def test_bad_configs_and_inputs_are_refused():
    for width in (0, -1, True):
        with pytest.raises(ValueError, match="d_hidden must be a positive integer"):
            MLPConfig(d_hidden=width)
    with pytest.raises((ValueError, TypeError), match="d_hidden"):  # TypeError under runtime type checking
        MLPConfig(d_hidden=2.5)
    with pytest.raises(ValueError, match="seeds must be a non-empty list"):
        EnsembleConfig(seeds=[])
    with pytest.raises(ValueError, match="seeds"):
        EnsembleConfig(seeds=[1, -2])
    model = TinyMLP(MLPConfig())
    with pytest.raises(ValueError, match=r"inputs must have shape \[batch, 2\]"):
        model(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="dtype"):
        model(torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="finite"):
        model(torch.tensor([[float("inf"), 1.0]]))
    ensemble = MLPEnsemble(EnsembleConfig(seeds=[0, 1]))
    with pytest.raises(ValueError, match=r"model=2"):
        ensemble(torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="index must be an integer"):
        ensemble.member(2)
    with pytest.raises(ValueError, match="share d_hidden"):
        MLPEnsemble.from_members([TinyMLP(MLPConfig(d_hidden=2)), TinyMLP(MLPConfig(d_hidden=3))])


def test_init_scale_multiplies_every_initial_parameter():
    base = init_mlp_parameters(3, seed=11, dtype="float64")
    scaled = init_mlp_parameters(3, seed=11, dtype="float64", scale=3.0)
    for name in base:
        assert_allclose(scaled[name], 3.0 * base[name], rtol=1e-15)
    ensemble = MLPEnsemble(EnsembleConfig(seeds=[11], d_hidden=3, dtype="float64", init_scale=3.0))
    assert torch.equal(ensemble.W_in[0], scaled["W_in"])
    member = ensemble.member(0)
    assert member.cfg.init_scale == 3.0 and torch.equal(member.b_out, scaled["b_out"])
    assert MLPEnsemble.from_members([member]).cfg.init_scale == 3.0
    with pytest.raises(ValueError, match="init_scale must be a finite number > 0"):
        EnsembleConfig(init_scale=0.0)
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        init_mlp_parameters(2, seed=0, scale=-1.0)


def test_deep_ensemble_computes_stacked_relu_layers(torch_gen):
    cfg = DeepEnsembleConfig(seeds=[1, 2, 3], d_hidden=[3, 2], dtype="float64")
    deep = DeepMLPEnsemble(cfg)
    x = torch.rand(3, 5, 2, generator=torch_gen, dtype=torch.float64)
    expected = []
    for i, s in enumerate(cfg.seeds):
        layers = init_deep_parameters([2, 3, 2, 1], s, dtype="float64")
        h = x[i]
        for k, (W, b) in enumerate(layers):
            h = h @ W + b
            if k < 2:
                h = torch.relu(h)
        expected.append(h)
    assert_allclose(deep(x).detach(), torch.stack(expected), rtol=1e-12)
    _, cache = deep.run_with_cache(x)
    assert deep.hook_names == [f"layers.{k}.{h}" for k in range(3) for h in ("hook_pre", "hook_post")]
    assert cache["layers.1.hook_post"].shape == (3, 5, 2) and bool((cache["layers.1.hook_post"] >= 0).all())
    assert torch.equal(cache["layers.2.hook_pre"], cache["layers.2.hook_post"])  # no ReLU on the read-out
    bound = 1 / math.sqrt(3)
    assert float(deep.layers[1].W.detach().abs().max()) <= bound
    with pytest.raises(ValueError, match="d_hidden must be a non-empty list"):
        DeepEnsembleConfig(d_hidden=[])
    with pytest.raises(ValueError, match=r"model=3"):
        deep(torch.zeros(2, 4, 2, dtype=torch.float64))
