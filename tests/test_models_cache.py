"""run_with_cache returns a TransformerLens ActivationCache; each of its methods, one by one, on
physlens models: the ones that apply agree with the model's own computation, the others refuse."""

from __future__ import annotations

import pytest
import torch
from numpy.testing import assert_allclose
from transformer_lens import ActivationCache

from physlens.models import (
    HookedModelCache,
    MLPConfig,
    MLPEnsemble,
    EnsembleConfig,
    OscillatorTransformer,
    TinyMLP,
    TransformerConfig,
)


def _model(**overrides) -> OscillatorTransformer:
    base = dict(d_model=6, n_layers=2, n_heads=2, d_head=3, n_ctx=8, attn_only=False, causal=False, seed=3, dtype="float64")
    return OscillatorTransformer(TransformerConfig(**{**base, **overrides}))


def _states(batch: int = 3, pos: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, pos, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-12) -> None:
    assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=atol, rtol=0)


@pytest.fixture
def run():
    model = _model()
    x = _states()
    output, cache = model.run_with_cache(x)
    return model, x, output, cache


def test_run_with_cache_returns_a_transformer_lens_activation_cache(run):
    model, _, _, cache = run
    assert isinstance(cache, ActivationCache) and isinstance(cache, HookedModelCache)
    assert cache.model is model and cache.has_batch_dim
    dormant = {name for name in model.hook_dict if name.endswith(("q_input", "k_input", "v_input"))}  # split-input hooks only
    assert len(dormant) == 6 and set(cache.keys()) == set(model.hook_dict) - dormant and len(cache) == len(model.hook_dict) - 6
    assert dict(cache.items()).keys() == set(cache) and len(list(cache.values())) == len(cache)
    assert "blocks.0.hook_resid_pre" in repr(cache)


def test_indexing_by_name_shorthand_and_negative_layer(run):
    _, _, _, cache = run
    assert cache["resid_pre", 1] is cache["blocks.1.hook_resid_pre"]
    assert cache["resid_post", -1] is cache["blocks.1.hook_resid_post"]
    assert cache["pattern", 0, "attn"] is cache["blocks.0.attn.hook_pattern"]
    assert cache["embed"] is cache["hook_embed"]


def test_to_and_toggle_autodiff(run):
    _, _, _, cache = run
    assert cache.to("cpu") is cache and cache["embed"].device.type == "cpu"
    was = torch.is_grad_enabled()
    try:
        cache.toggle_autodiff(False)
        assert not torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(was)


def test_remove_batch_dim_and_batch_slices():
    model = _model()
    x = _states()
    _, cache = model.run_with_cache(x)
    sliced = cache.apply_slice_to_batch_dim(slice(1, 3))
    assert isinstance(sliced, HookedModelCache)
    _close(sliced["resid_post", 1], cache["resid_post", 1][1:3])
    single = cache.apply_slice_to_batch_dim([2]).remove_batch_dim()
    assert not single.has_batch_dim
    _close(single["resid_pre", 0], cache["resid_pre", 0][2])
    _, direct = model.run_with_cache(x[:1], remove_batch_dim=True)
    assert direct["resid_pre", 1].shape == (7, 6)
    with pytest.raises(ValueError, match="batch of one example"):
        model.run_with_cache(x, remove_batch_dim=True)


def test_pos_slice_keeps_positions(run):
    model, x, _, cache = run
    _, last = model.run_with_cache(x, pos_slice=[5, 6])
    _close(last["resid_post", 1], cache["resid_post", 1][:, 5:])
    _close(last["z", 0], cache["z", 0][:, 5:])
    _close(last["pattern", 0], cache["pattern", 0][:, :, 5:])  # query positions


def test_accumulated_resid_is_the_residual_stream_before_every_layer(run):
    _, _, _, cache = run
    stack, labels = cache.accumulated_resid(return_labels=True, incl_mid=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    _close(stack[0], cache["resid_pre", 0])
    _close(stack[3], cache["resid_mid", 1])
    _close(stack[-1], cache["resid_post", 1])


def test_decompose_resid_sums_to_the_residual_stream(run):
    _, _, _, cache = run
    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    _close(stack.sum(0), cache["resid_post", 1])
    mlp_in, _ = cache.decompose_resid(layer=1, mlp_input=True, return_labels=True)
    _close(mlp_in.sum(0), cache["resid_mid", 1])


def test_head_results_stack_and_recompute(run):
    model, _, _, cache = run
    stack, labels = cache.stack_head_results(return_labels=True)
    assert labels == ["L0H0", "L0H1", "L1H0", "L1H1"]
    _close(stack[:2].sum(0), cache["attn_out", 0])
    _close(stack[2:].sum(0), cache["attn_out", 1])
    # compute_head_results rebuilds hook_result from hook_z and W_O
    expected = cache["result", 1].clone()
    del cache.cache_dict["blocks.1.attn.hook_result"]
    cache.compute_head_results()
    _close(cache["result", 1], expected)
    _close(cache.stack_activation("resid_pre"), torch.stack([cache["resid_pre", 0], cache["resid_pre", 1]]))


def test_neuron_results_sum_to_the_mlp_output(run):
    model, _, _, cache = run
    neurons = cache.get_neuron_results(1)  # [batch, pos, d_mlp, d_model]
    _close(neurons.sum(-2) + model.blocks[1].mlp.b_out, cache["mlp_out", 1])
    stack, labels = cache.stack_neuron_results(layer=2, return_labels=True)
    assert stack.shape[0] == 2 * model.cfg.d_mlp and labels[0] == "L0N0"
    _close(stack.sum(0) + model.b_out.sum(0), cache["mlp_out", 0] + cache["mlp_out", 1])


def test_full_residual_decomposition_sums_to_the_stream_with_accumulated_bias(run):
    model, _, _, cache = run
    for expand in (True, False):
        stack, labels = cache.get_full_resid_decomposition(expand_neurons=expand, return_labels=True)
        assert labels[-2:] == ["embed", "bias"]
        _close(stack.sum(0), cache["resid_post", 1])
    stack = cache.get_full_resid_decomposition(layer=1, mlp_input=True)
    _close(stack.sum(0), cache["resid_mid", 1])
    torch.testing.assert_close(model.accumulated_bias(2), model.b_out.sum(0))
    torch.testing.assert_close(model.accumulated_bias(2, include_mlp_biases=False), torch.zeros(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="layer must be an integer"):
        model.accumulated_bias(3)


def test_logit_attrs_are_direct_attributions_to_each_output_component(run):
    model, _, output, cache = run
    stack = cache.get_full_resid_decomposition()
    for component in (0, 1):
        attrs = cache.logit_attrs(stack, tokens=component)  # [components, batch, pos]
        _close(attrs.sum(0) + model.b_U[component], output[..., component])
    diff = cache.logit_attrs(stack, tokens=0, incorrect_tokens=1)
    _close(diff.sum(0) + model.b_U[0] - model.b_U[1], output[..., 0] - output[..., 1])
    with pytest.raises(ValueError, match="no vocabulary"):
        cache.logit_attrs(stack, tokens="x")
    with pytest.raises(ValueError, match="tokens must lie in 0..1"):
        model.tokens_to_residual_directions(2)


def test_logit_lens_reads_every_layer_out_as_a_predicted_state(run):
    model, _, output, cache = run
    lens = cache.logit_lens(positions=None)
    assert lens.labels == ["0_pre", "1_pre", "final_post"]
    _close(lens.values[-1], output)
    _close(lens.values[0], model.unembed(cache["resid_pre", 0]))


def test_layer_norm_model_applies_the_cached_scale():
    model = _model(layer_norm=True, positional_embedding=True)
    x = _states()
    output, cache = model.run_with_cache(x)
    assert model.cfg.normalization_type == "LN"
    stack = cache.decompose_resid(layer=1)  # the input to layer 1
    scaled = cache.apply_ln_to_stack(stack, layer=1)
    centred = stack - stack.mean(-1, keepdim=True)
    _close(scaled, centred / cache["blocks.1.ln1.hook_scale"])
    _close(scaled.sum(0), cache["blocks.1.ln1.hook_normalized"], atol=1e-10)
    _, labels = cache.decompose_resid(return_labels=True)
    assert labels[:2] == ["embed", "pos_embed"]
    accumulated = cache.accumulated_resid(apply_ln=True)
    _close(model.unembed(accumulated[-1]), output, atol=1e-10)
    _close(cache.logit_lens(positions=None).values[-1], output, atol=1e-10)


def test_model_without_layer_norm_leaves_stacks_unscaled(run):
    model, _, _, cache = run
    assert model.cfg.normalization_type is None
    stack = cache.decompose_resid()
    assert torch.equal(cache.apply_ln_to_stack(stack), stack)


def test_state_space_methods_refuse_and_report_no_layers(run):
    _, _, _, cache = run
    assert cache.ssm_layers() == []
    with pytest.raises(NotImplementedError, match="no state-space"):
        cache.compute_ssm_state()
    with pytest.raises(NotImplementedError, match="no state-space"):
        cache.compute_ssm_effective_attention()


def test_attention_only_model_refuses_neuron_methods():
    model = _model(attn_only=True)
    _, cache = model.run_with_cache(_states())
    with pytest.raises(NotImplementedError, match="attention-only"):
        cache.get_neuron_results(0)
    with pytest.raises(NotImplementedError, match="attention-only"):
        cache.stack_neuron_results(1)
    stack = cache.get_full_resid_decomposition()  # heads, embed and bias only
    _close(stack.sum(0), cache["resid_post", 1])


def test_models_without_a_residual_stream_refuse_the_residual_methods():
    mlp = TinyMLP(MLPConfig(d_hidden=3, dtype="float64"))
    x = torch.rand(5, 2, dtype=torch.float64)
    _, cache = mlp.run_with_cache(x)
    assert isinstance(cache, ActivationCache) and cache["hook_pre"].shape == (5, 3)
    _close(cache.apply_slice_to_batch_dim(slice(0, 2))["hook_post"], cache["hook_post"][:2])
    for method in ("accumulated_resid", "decompose_resid", "stack_head_results", "get_full_resid_decomposition", "logit_lens"):
        with pytest.raises(NotImplementedError, match="TinyMLP has none"):
            getattr(cache, method)()
    with pytest.raises(ValueError, match="no position axis"):
        mlp.run_with_cache(x, pos_slice=0)


def test_ensemble_cache_refuses_batch_slicing_of_the_member_axis():
    ensemble = MLPEnsemble(EnsembleConfig(seeds=[0, 1, 2], dtype="float64"))
    _, cache = ensemble.run_with_cache(torch.rand(3, 4, 2, dtype=torch.float64))
    assert cache["hook_pre"].shape == (3, 4, 2)
    with pytest.raises(NotImplementedError, match=r"\[model, batch"):
        cache.apply_slice_to_batch_dim(slice(0, 2))
    with pytest.raises(NotImplementedError, match=r"\[model, batch"):
        cache.remove_batch_dim()
