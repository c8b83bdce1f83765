"""The TransformerLens calls a notebook makes on the oscillator transformer: each works as it does
there, or refuses with a message that names the physlens counterpart."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.utilities import get_act_name

from physlens.models import OscillatorTransformer
from physlens.models.transformer import preset_config


def _model(**overrides) -> OscillatorTransformer:
    return OscillatorTransformer(preset_config("nLA", n_layers=3, d_model=8, d_head=4, n_ctx=8, dtype="float64", seed=2, **overrides))


def _states(batch: int = 3, n_pos: int = 7) -> torch.Tensor:
    return torch.randn(batch, n_pos, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.unchecked_types
@pytest.mark.parametrize("text", ["The oscillator", ["one", "two"]])
def test_text_input_names_the_state_tensor(text) -> None:
    with pytest.raises(ValueError, match=r"\[batch, pos, 2\] tensor"):
        _model()(text)


def test_return_type_logits_names_output() -> None:
    with pytest.raises(ValueError, match="return_type='output'"):
        _model()(_states(), return_type="logits")


@pytest.mark.parametrize("options", [{}, dict(scale_by_first_state=True, attn_only=False, layer_norm=True)])
def test_stop_at_layer_returns_the_residual_stream_there(options) -> None:
    model, states = _model(**options), _states()
    _, cache = model.run_with_cache(states)
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(model(states, stop_at_layer=layer), cache["resid_pre", layer])
    torch.testing.assert_close(model(states, stop_at_layer=-1), cache["resid_pre", model.cfg.n_layers - 1])
    torch.testing.assert_close(model(states, stop_at_layer=model.cfg.n_layers), cache["resid_post", -1])
    with pytest.raises(ValueError, match="stop_at_layer"):
        model(states, stop_at_layer=4)
    with pytest.raises(ValueError, match="no loss"):
        model(states, return_type="loss", targets=states, stop_at_layer=1)


def test_return_cache_object_false_gives_the_dict() -> None:
    model, states = _model(), _states()
    output, activations = model.run_with_cache(states, return_cache_object=False)
    _, cache = model.run_with_cache(states)
    assert isinstance(activations, dict) and activations.keys() == cache.cache_dict.keys()
    torch.testing.assert_close(activations["blocks.1.hook_resid_post"], cache["resid_post", 1])


def test_pos_slice_keeps_the_input_scale_whole() -> None:
    """The issue's reproduction: run_with_cache(pos_slice=5) on a scale_by_first_state model raised IndexError."""
    model, states = _model(scale_by_first_state=True), _states()
    output, cache = model.run_with_cache(states, pos_slice=5)
    _, full = model.run_with_cache(states)
    torch.testing.assert_close(cache["hook_input_scale"], full["hook_input_scale"])
    torch.testing.assert_close(cache["resid_pre", 1], full["resid_pre", 1][:, 5:6])  # TransformerLens keeps the axis
    stack = cache.get_full_resid_decomposition()  # [part, batch, 1, d_model] at position 5
    attrs = cache.logit_attrs(stack, tokens=0)
    torch.testing.assert_close(attrs.sum(0) + model.b_U[0] * cache["hook_input_scale"][:, 0], output[:, 5:6, 0])


def test_embed_unembed_and_pos_embed_modules() -> None:
    model, states = _model(positional_embedding=True), _states()
    _, cache = model.run_with_cache(states)
    assert model.embed.W_E is model.W_E and model.unembed.W_U is model.W_U and model.pos_embed.W_pos is model.W_pos
    torch.testing.assert_close(model.embed(states), cache["hook_embed"])
    torch.testing.assert_close(model.pos_embed(states), cache["hook_pos_embed"])
    resid = cache["resid_post", -1]
    torch.testing.assert_close(model.unembed(resid), resid @ model.W_U + model.b_U)
    with pytest.raises(AttributeError, match="positional_embedding=False"):
        _model().pos_embed


def test_attention_biases_are_zeros_and_accumulated_bias_agrees() -> None:
    model = _model(attn_only=False)
    assert model.b_O.shape == (3, 8) and not model.b_O.any()
    assert model.b_Q.shape == model.b_K.shape == model.b_V.shape == (3, 2, 4)
    torch.testing.assert_close(model.accumulated_bias(3), model.b_O.sum(0) + model.b_out.sum(0))


def test_loss_fn_is_the_forward_loss() -> None:
    model, states = _model(), _states()
    inputs, targets = states[:, :-1], states[:, 1:]
    output = model(inputs)
    torch.testing.assert_close(model.loss_fn(output, targets), model(inputs, return_type="loss", targets=targets))
    per_position = model.loss_fn(output, targets, per_token=True)
    assert per_position.shape == (3, 6)
    torch.testing.assert_close(per_position.mean(), model.loss_fn(output, targets))


def test_tl_named_parameters_and_set_use_attn_result() -> None:
    model, states = _model(), _states()
    assert dict(model.tl_named_parameters()).keys() == model.tl_parameters().keys()
    before = model(states)
    for flag in (True, False):
        model.set_use_attn_result(flag)
        torch.testing.assert_close(model(states), before)
        assert "blocks.0.attn.hook_result" in model.run_with_cache(states)[1]


def test_transformer_lens_config_fields() -> None:
    cfg = _model(attn_only=False, positional_embedding=True).cfg
    assert (cfg.act_fn, cfg.positional_embedding_type, cfg.d_vocab_out) == ("gelu", "standard", 2)
    assert (cfg.use_attn_result, cfg.use_hook_mlp_in, cfg.use_attn_in, cfg.default_prepend_bos) == (True, False, False, False)
    cfg = _model().cfg
    assert cfg.act_fn is None and cfg.positional_embedding_type is None


def test_a_missing_activation_is_named() -> None:
    _, cache = _model().run_with_cache(_states())
    with pytest.raises(KeyError, match="layer_norm=False"):
        cache[get_act_name("scale", 0, "ln1")]
    with pytest.raises(KeyError, match="attn_only=True"):
        cache["mlp_out", 0]
    _, partial = _model().run_with_cache(_states(), names_filter="hook_embed")
    with pytest.raises(KeyError, match="names_filter"):
        partial["resid_pre", 0]


def test_generate_names_rollout() -> None:
    with pytest.raises(NotImplementedError, match="rollout"):
        _model().generate("Once upon a time")
