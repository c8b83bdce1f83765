"""Direct attribution, the logit lens and residual decompositions sum to the model's output on every
preset and option, or are refused with the reason: nothing in between.

The sums are checked against the forward pass itself: the full decomposition against the final
residual stream, ``logit_attrs`` over it (plus the unembedding bias's share) against the
prediction, and the logit lens's last entry against the prediction.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from physlens.models import OscillatorTransformer
from physlens.models.transformer import preset_config

OPTIONS = {
    "plain": {},
    "mlp_pos_embed": dict(attn_only=False, positional_embedding=True),
    "layer_norm": dict(layer_norm=True),
    "layer_norm_mlp": dict(layer_norm=True, attn_only=False, positional_embedding=True),
    "layer_norm_no_unembed_bias": dict(layer_norm=True, unembed_bias=False),
    "scale_by_first_state": dict(scale_by_first_state=True),
    "scale_by_first_state_mlp_ln": dict(scale_by_first_state=True, attn_only=False, layer_norm=True),
    "split_qkv": dict(use_split_qkv_input=True, attn_only=False),
    "window_no_bias": dict(causal=False, attn_window=3, embed_bias=False, unembed_bias=False),
}
SHRINK = {"OLA": {}, "nLA": dict(n_layers=2, d_model=8, d_head=4)}
CASES = [(preset, option) for preset in SHRINK for option in OPTIONS]


def build(preset: str, option: str) -> OscillatorTransformer:
    """A model with every parameter away from its initial value (biases and norm weights included)."""
    model = OscillatorTransformer(preset_config(preset, **SHRINK[preset], **OPTIONS[option], n_ctx=8, dtype="float64", seed=5))
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model


def _states() -> torch.Tensor:
    states = torch.randn(4, 6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return states * torch.tensor([0.3, 1.0, 2.5, 7.0], dtype=torch.float64)[:, None, None]  # scales that differ


def _bias_share(model: OscillatorTransformer, cache, component: int) -> torch.Tensor:
    """What the unembedding bias adds to output ``component``: b_U, times the input scale if any."""
    b_u = model.b_U[component]
    if model.cfg.scale_by_first_state:
        return b_u * cache["hook_input_scale"][:, :, 0]  # [batch, 1]
    return b_u * torch.ones(cache["hook_embed"].shape[0], 1, dtype=torch.float64)


def _check_everything(model: OscillatorTransformer, states: torch.Tensor) -> None:
    output, cache = model.run_with_cache(states)
    n = model.cfg.n_layers
    final = cache["resid_post", n - 1]
    torch.testing.assert_close(cache.decompose_resid().sum(0), final)
    torch.testing.assert_close(cache.accumulated_resid()[-1], final)
    for expand in (True, False):
        stack = cache.get_full_resid_decomposition(expand_neurons=expand)
        torch.testing.assert_close(stack.sum(0), final)
        for component in range(model.cfg.d_in):
            attrs = cache.logit_attrs(stack, tokens=component)  # [part, batch, pos]
            torch.testing.assert_close(attrs.sum(0) + _bias_share(model, cache, component), output[..., component])
            last = cache.get_full_resid_decomposition(expand_neurons=expand, pos_slice=-1)
            attrs = cache.logit_attrs(last, tokens=component, pos_slice=-1)  # [part, batch]
            torch.testing.assert_close(attrs.sum(0) + _bias_share(model, cache, component)[..., 0], output[:, -1, component])
            some = cache.logit_attrs(stack, tokens=component, batch_slice=[1, 3])  # two examples
            torch.testing.assert_close(some.sum(0) + _bias_share(model, cache, component)[[1, 3]], output[[1, 3], :, component])
    diff = cache.logit_attrs(cache.decompose_resid(), tokens=0, incorrect_tokens=1).sum(0)
    expected = output[..., 0] - output[..., 1] - (_bias_share(model, cache, 0) - _bias_share(model, cache, 1))
    torch.testing.assert_close(diff, expected)
    lens = cache.logit_lens()
    torch.testing.assert_close(lens.values[-1], output[:, -1])
    torch.testing.assert_close(cache.logit_lens(batch_slice=2).values[-1], output[2, -1])
    one = cache.logit_attrs(stack, tokens=0, batch_slice=2)  # [part, pos] of example 2
    torch.testing.assert_close(one.sum(0) + _bias_share(model, cache, 0)[2], output[2, :, 0])
    lens = cache.logit_lens(positions=None, targets=1)
    torch.testing.assert_close(lens.values[-1, ..., 0], output[..., 1])
    direction = model.W_U[:, 0]
    for expand in (True, False):
        projected = cache.get_full_resid_decomposition(expand_neurons=expand, apply_ln=True, project_output_onto=direction)
        torch.testing.assert_close(projected.sum(0), model.ln_final(final) @ direction)
    if model.cfg.layer_norm:
        normed = cache.decompose_resid(apply_ln=True).sum(0)
        torch.testing.assert_close(normed, model.ln_final(final))


@pytest.mark.parametrize(("preset", "option"), CASES)
def test_every_decomposition_sums_to_the_output(preset: str, option: str) -> None:
    model = build(preset, option)
    states = _states()
    if model.cfg.layer_norm:
        output, cache = model.run_with_cache(states)
        stack = cache.get_full_resid_decomposition()
        with pytest.raises(ValueError, match="fold_layer_norm"):
            cache.logit_attrs(stack, tokens=0)
        with pytest.raises(ValueError, match="fold_layer_norm"):
            cache.decompose_resid(apply_ln=True)
        with pytest.raises(ValueError, match="fold_layer_norm"):
            cache.get_full_resid_decomposition(apply_ln=True, project_output_onto=model.W_U[:, 0])
        lens = cache.logit_lens()  # the real ln_final: exact before folding too
        torch.testing.assert_close(lens.values[-1], output[:, -1])
        model.fold_layer_norm()
        torch.testing.assert_close(model(states), output)
    _check_everything(model, states)


LN_CASES = [(preset, option) for preset in SHRINK for option in ("layer_norm", "layer_norm_mlp", "layer_norm_no_unembed_bias",
                                                                     "scale_by_first_state_mlp_ln", "split_qkv_ln")]
OPTIONS["split_qkv_ln"] = dict(use_split_qkv_input=True, attn_only=False, layer_norm=True)


@pytest.mark.parametrize(("preset", "option"), LN_CASES)
def test_folding_norms_with_biases_keeps_the_output_and_makes_every_norm_recipe_exact(preset: str, option: str) -> None:
    """Every norm has a random weight and a nonzero bias; ln1's bias goes into new b_Q, b_K, b_V."""
    model = build(preset, option)
    assert all(bool((block.ln1.b != 0).all()) for block in model.blocks)
    states = _states()
    before = model(states)
    model.fold_layer_norm()
    torch.testing.assert_close(model(states), before, rtol=1e-12, atol=1e-12)  # float64 round-off
    norms = [model.ln_final] + [norm for block in model.blocks for norm in (block.ln1, getattr(block, "ln2", None)) if norm is not None]
    assert all(bool((norm.w == 1).all()) and bool((norm.b == 0).all()) for norm in norms)
    assert model.cfg.attn_bias and {"blocks.0.attn.b_Q", "blocks.0.attn.b_K", "blocks.0.attn.b_V"} <= set(dict(model.named_parameters()))
    for weight in (model.W_Q, model.W_K, model.W_V, model.W_U):  # reading weights centred over d_model
        torch.testing.assert_close(weight.mean(dim=-2), torch.zeros_like(weight.mean(dim=-2)), rtol=0, atol=1e-14)
    _, cache = model.run_with_cache(states)
    for layer in range(model.cfg.n_layers):
        # Direct attribution into the attention: the parts of the stream, centred, divided by ln1's cached scale
        # (one per head with split inputs) and read by W_Q, plus b_Q, sum to the queries the model computed.
        parts = cache.decompose_resid(layer=layer)  # [part, batch, pos, d_model]
        scale = cache[f"blocks.{layer}.ln1.hook_scale"]  # [batch, pos, 1], or [batch, pos, head, 1] with split inputs
        scale = scale if model.cfg.use_split_qkv_input else scale[..., None, :]
        centred = parts - parts.mean(dim=-1, keepdim=True)
        queries = torch.einsum("cbpd,hde->cbphe", centred, model.W_Q[layer]) / scale
        torch.testing.assert_close(queries.sum(0) + model.b_Q[layer], cache["q", layer])
        if not model.cfg.use_split_qkv_input:  # the cache's own recipe, refused through an unfolded ln1
            normed = cache.decompose_resid(layer=layer, apply_ln=True).sum(0)
            torch.testing.assert_close(normed, cache[f"blocks.{layer}.ln1.hook_normalized"])
    _check_everything(model, states)


@pytest.mark.parametrize("option", ["layer_norm_mlp", "split_qkv_ln"])
def test_fold_layer_norm_is_transformer_lens_own_recipe(option: str) -> None:
    """TransformerLens's ProcessWeights.fold_layer_norm (fold_biases, center_weights), run on the same
    weights under its names, gives the same folded weights."""
    from transformer_lens.weight_processing import ProcessWeights

    model = build("nLA", option)
    theirs = ProcessWeights.fold_layer_norm({k: v.detach().clone() for k, v in model.tl_parameters().items()}, model.cfg)
    ours = {k: v.detach() for k, v in model.fold_layer_norm().tl_parameters().items()}
    for name, value in ours.items():
        # TransformerLens names the biases of a config with n_key_value_heads the grouped-query way, _b_Q ...
        reference = theirs.get(name, theirs.get(name.replace(".b_", "._b_")))
        torch.testing.assert_close(value, reference, rtol=1e-13, atol=1e-14, msg=name)
    unfolded = build("nLA", option).fold_layer_norm(center_weights=False)
    assert float(unfolded.W_Q.detach().mean(dim=-2).abs().max()) > 1e-3  # centring is what moved the means
    torch.testing.assert_close(unfolded(_states()), build("nLA", option)(_states()), rtol=1e-12, atol=1e-12)


def test_a_model_with_folded_ln1_biases_saves_and_loads(tmp_path: Path) -> None:
    from physlens.training import load_checkpoint, save_checkpoint

    model = build("OLA", "layer_norm_mlp")
    states = _states()
    before = model(states)
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "folded", model.fold_layer_norm()))
    assert loaded.cfg.attn_bias and bool(loaded.b_Q.any())
    torch.testing.assert_close(loaded(states), before, rtol=1e-12, atol=1e-12)


def test_transformer_lens_readout_without_the_cache_refuses_on_scale_by_first_state() -> None:
    from transformer_lens.tools.analysis.logit_lens import logit_lens, logit_readout

    model = build("OLA", "scale_by_first_state")
    states = _states()
    _, cache = model.run_with_cache(states)
    for call in (lambda: logit_lens(model, states), lambda: logit_readout(model, cache["resid_post", 0])):
        with pytest.raises(ValueError, match="hook_input_scale"):
            call()
    with pytest.raises(ValueError, match="logits"):
        cache.logit_lens(return_type="probs")
    _, partial = model.run_with_cache(states, names_filter=lambda name: name.endswith("resid_post"))
    with pytest.raises(ValueError, match="names_filter"):
        partial.logit_lens()


def test_shipped_checkpoint_attribution_is_exact() -> None:
    """The issue's reproduction: on the shipped scale_by_first_state model, logit_attrs missed by 30-60 %."""
    from physlens.training import load_checkpoint

    path = Path(__file__).parents[1] / "docs" / "tutorials" / "models" / "oscillator_variable"
    model, _ = load_checkpoint(path)
    assert model.cfg.scale_by_first_state
    states = _states().to(model.W_E.dtype)
    output, cache = model.run_with_cache(states)
    stack = cache.get_full_resid_decomposition(expand_neurons=False, pos_slice=-1)
    for component in range(2):
        attrs = cache.logit_attrs(stack, tokens=component, pos_slice=-1)
        share = model.b_U[component] * cache["hook_input_scale"][:, 0, 0] if model.b_U is not None else 0.0
        torch.testing.assert_close(attrs.sum(0) + share, output[:, -1, component], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cache.logit_lens().values[-1], output[:, -1], rtol=1e-5, atol=1e-6)


def test_a_folded_model_saves_and_loads(tmp_path: Path) -> None:
    from physlens.training import load_checkpoint, save_checkpoint

    model = build("nLA", "layer_norm_no_unembed_bias")
    states = _states()
    before = model(states)
    model.fold_layer_norm()
    assert model.cfg.unembed_bias and "b_U" in dict(model.named_parameters())  # ln_final's bias had to go somewhere
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "folded", model))
    torch.testing.assert_close(loaded(states), before)
    _, cache = loaded.run_with_cache(states)
    attrs = cache.logit_attrs(cache.get_full_resid_decomposition(), tokens=1)
    torch.testing.assert_close(attrs.sum(0) + loaded.b_U[1], before[..., 1])
