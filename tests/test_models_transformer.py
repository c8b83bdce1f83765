"""The hooked oscillator transformer: hook names and shapes, masks, linearity, TransformerLens tooling."""

from __future__ import annotations

import dataclasses
import functools

import pandas as pd
import pytest
import torch
from numpy.testing import assert_allclose
from transformer_lens import patching

from physlens.models import OscillatorTransformer, TransformerConfig, attention_mask, preset_config


def _model(**overrides) -> OscillatorTransformer:
    return OscillatorTransformer(TransformerConfig(**{"dtype": "float64", **overrides}))


def _states(batch: int, pos: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, pos, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_hook_names_and_shapes_follow_transformer_lens():
    model = _model(d_model=8, n_heads=2, d_head=4, n_layers=2, attn_only=False, layer_norm=True,
                   positional_embedding=True, n_ctx=6)
    _, cache = model.run_with_cache(_states(3, 5))
    expected = {"hook_embed": (3, 5, 8), "hook_pos_embed": (3, 5, 8)}
    for layer in range(2):
        prefix = f"blocks.{layer}"
        expected.update({
            f"{prefix}.hook_resid_pre": (3, 5, 8),
            f"{prefix}.ln1.hook_scale": (3, 5, 1),
            f"{prefix}.ln1.hook_normalized": (3, 5, 8),
            f"{prefix}.attn.hook_q": (3, 5, 2, 4),
            f"{prefix}.attn.hook_k": (3, 5, 2, 4),
            f"{prefix}.attn.hook_v": (3, 5, 2, 4),
            f"{prefix}.attn.hook_attn_scores": (3, 2, 5, 5),
            f"{prefix}.attn.hook_pattern": (3, 2, 5, 5),
            f"{prefix}.attn.hook_z": (3, 5, 2, 4),
            f"{prefix}.attn.hook_result": (3, 5, 2, 8),
            f"{prefix}.hook_attn_out": (3, 5, 8),
            f"{prefix}.hook_resid_mid": (3, 5, 8),
            f"{prefix}.ln2.hook_scale": (3, 5, 1),
            f"{prefix}.ln2.hook_normalized": (3, 5, 8),
            f"{prefix}.mlp.hook_pre": (3, 5, 32),
            f"{prefix}.mlp.hook_post": (3, 5, 32),
            f"{prefix}.hook_mlp_out": (3, 5, 8),
            f"{prefix}.hook_resid_post": (3, 5, 8),
        })
    expected.update({"ln_final.hook_scale": (3, 5, 1), "ln_final.hook_normalized": (3, 5, 8)})
    assert {name: tuple(value.shape) for name, value in cache.items()} == expected
    assert model.cfg.n_key_value_heads == 2


def test_attention_only_model_has_no_mlp_hooks():
    names = set(_model().hook_dict)
    assert "blocks.0.hook_resid_mid" not in names and "blocks.0.mlp.hook_pre" not in names
    assert {"hook_embed", "blocks.0.attn.hook_result", "blocks.0.hook_resid_post"} <= names


def test_head_results_sum_to_the_attention_output():
    model = _model(d_model=8, n_heads=4, d_head=2)
    _, cache = model.run_with_cache(_states(2, 7))
    assert_allclose(cache["blocks.0.attn.hook_result"].sum(dim=2).numpy(), cache["blocks.0.hook_attn_out"].numpy(), atol=1e-12)


def test_attention_patterns_respect_masks():
    for causal, window in [(True, None), (True, 3), (False, 2), (False, None)]:
        model = _model(causal=causal, attn_window=window, n_ctx=8)
        _, cache = model.run_with_cache(_states(2, 8), names_filter="blocks.0.attn.hook_pattern")
        pattern = cache["blocks.0.attn.hook_pattern"]
        allowed = attention_mask(8, causal, window)
        assert torch.all(pattern[..., ~allowed] == 0)
        assert_allclose(pattern.sum(-1).numpy(), 1.0, atol=1e-12)


def test_causal_model_ignores_the_future_and_non_causal_does_not():
    x = _states(1, 6)
    y = x.clone()
    y[:, 4:] += 1.0
    causal, full = _model(causal=True, seed=1), _model(causal=False, seed=1)
    assert torch.equal(causal(x)[:, :4], causal(y)[:, :4])
    assert not torch.allclose(full(x)[:, :4], full(y)[:, :4])


def test_window_one_model_is_exactly_linear_in_its_input():
    # The seed's finding: with attention restricted to one step, the softmax is identically 1.
    model = _model(attn_window=1, embed_bias=False, unembed_bias=False, d_model=4, n_heads=2, d_head=2, n_layers=2, seed=3)
    x, y = _states(4, 10, seed=1), _states(4, 10, seed=2)
    assert_allclose(model(2.5 * x - 0.7 * y).detach().numpy(),
                    (2.5 * model(x) - 0.7 * model(y)).detach().numpy(), atol=1e-12)
    # ... and each position is mapped independently by the same matrix.
    single = model(x.reshape(40, 1, 2)).reshape(4, 10, 2)
    assert_allclose(single.detach().numpy(), model(x).detach().numpy(), atol=1e-12)


def test_wider_window_makes_the_model_nonlinear():
    model = _model(attn_window=None, embed_bias=False, unembed_bias=False, seed=3)
    x, y = _states(4, 10, seed=1), _states(4, 10, seed=2)
    assert not torch.allclose(model(x + y), model(x) + model(y), atol=1e-6)


def test_presets():
    ola, nla = preset_config("OLA"), preset_config("nLA")
    assert (ola.n_layers, ola.d_model, ola.n_heads, ola.causal) == (1, 2, 1, True)
    assert (nla.n_layers, nla.d_model, nla.d_head, nla.causal, nla.n_ctx) == (8, 32, 16, False, 40)
    assert preset_config("OLA", attn_window=1).attn_window == 1
    with pytest.raises(ValueError, match="preset must be one of"):
        preset_config("GPT")


def test_initialisation_is_seeded():
    a, b, c = _model(seed=5), _model(seed=5), _model(seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.W_E, c.W_E)


def test_run_with_hooks_and_hooks_context_intervene():
    model = _model(seed=2)
    x = _states(2, 5)

    def zero(activation, hook):
        return torch.zeros_like(activation)

    ablated = model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_result", zero)])
    with model.hooks(fwd_hooks=[("blocks.0.hook_attn_out", zero)]):
        also_ablated = model(x)
    assert_allclose(ablated.detach().numpy(), also_ablated.detach().numpy(), atol=1e-12)
    assert not torch.allclose(ablated, model(x))
    # the hooks are gone afterwards
    assert torch.equal(model(x), model(x))
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_transformer_lens_patching_runs_on_the_model():
    model = _model(d_model=4, n_heads=2, d_head=2, n_layers=2, causal=False, seed=4).eval()
    clean, corrupted = _states(3, 5, seed=1), _states(3, 5, seed=2)
    clean_out, clean_cache = model.run_with_cache(clean)
    index_df = pd.DataFrame([(layer, pos) for layer in range(2) for pos in range(5)], columns=["layer", "pos"])

    def distance_to_clean(out: torch.Tensor) -> torch.Tensor:
        return (out - clean_out).pow(2).sum(dim=(1, 2))

    # get_act_patch_resid_pre fixes index_axis_names and infers positions from token ids, so for
    # continuous [batch, pos, 2] inputs the generic function is called with an explicit index_df.
    result = patching.generic_activation_patch(
        model, corrupted, clean_cache, distance_to_clean, patching.layer_pos_patch_setter, "resid_pre",
        index_df=index_df, reduce="none",
    )
    assert isinstance(result, patching.PatchingResult)
    assert result.mean().shape == (10,)
    assert torch.isfinite(result.stderr()).all()

    # Patching every position of layer 0's residual stream from the clean run restores the clean output.
    def patch_all(activation, hook):
        return clean_cache[hook.name]

    restored = model.run_with_hooks(corrupted, fwd_hooks=[("blocks.0.hook_resid_pre", patch_all)])
    assert_allclose(restored.detach().numpy(), clean_out.detach().numpy(), atol=1e-12)


@pytest.mark.parametrize(
    "states, message",
    [
        (torch.zeros(2, 5), r"states must have shape \[batch, pos, 2\]"),
        (torch.zeros(2, 5, 3, dtype=torch.float64), r"states must have shape \[batch, pos, 2\]"),
        (torch.zeros(2, 41, 2, dtype=torch.float64), "n_ctx is 40"),
        (torch.zeros(2, 0, 2, dtype=torch.float64), "n_ctx is 40"),
        (torch.zeros(2, 5, 2, dtype=torch.float32), "dtype"),
    ],
)
@pytest.mark.unchecked_types
def test_bad_inputs_are_refused(states, message):
    with pytest.raises(ValueError, match=message):
        _model()(states)


def test_unknown_hook_names_are_refused_with_a_suggestion():
    model = _model()
    x = _states(1, 3)
    with pytest.raises(ValueError, match="did you mean"):
        model.run_with_cache(x, names_filter=["blocks.0.hook_resid_prе"])
    with pytest.raises(ValueError, match="unknown hook name"):
        model.run_with_hooks(x, fwd_hooks=[("blocks.3.hook_resid_pre", lambda a, hook: a)])
    with pytest.raises(ValueError, match="unknown hook name"):
        model.check_hook_names("hook_nothing")


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(d_model=0), "d_model must be a positive integer"), (dict(attn_window=0), "attn_window"),
     (dict(n_key_value_heads=3), "n_key_value_heads"), (dict(dtype="int64"), "dtype"), (dict(device="last"), "device must be a torch device"),
     (dict(n_layers=1.5), "n_layers must be a positive integer")],
)
@pytest.mark.unchecked_types
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**kwargs)


def test_sees_future_flags_leaky_configurations():
    assert TransformerConfig(causal=False).sees_future
    assert TransformerConfig(causal=False, attn_window=3).sees_future
    assert not TransformerConfig(causal=False, attn_window=1).sees_future
    assert not TransformerConfig(causal=True).sees_future


@pytest.mark.parametrize("preset", ["OLA", "nLA"])
@pytest.mark.parametrize("dtype", ["float32", "float64", torch.float32, torch.float64])
def test_cfg_dtype_is_a_torch_dtype_and_serialises_to_its_name(preset, dtype):
    """TransformerLens code allocates with dtype=model.cfg.dtype; configs and checkpoints keep the name."""
    import json

    model = OscillatorTransformer(preset_config(preset, dtype=dtype))
    assert isinstance(model.cfg.dtype, torch.dtype) and model.cfg.dtype == model.W_E.dtype
    assert torch.zeros(2, dtype=model.cfg.dtype).dtype == model.W_E.dtype
    saved = json.loads(json.dumps(model.config_dict()))
    assert saved["dtype"] == str(model.W_E.dtype).removeprefix("torch.")
    assert TransformerConfig(**saved) == model.cfg
    rebuilt = OscillatorTransformer.from_config_dict(saved)
    assert rebuilt.cfg == model.cfg and rebuilt.W_E.dtype == model.W_E.dtype


@pytest.mark.parametrize("name", ["oscillator_variable", "oscillator_variable_gamma"])
def test_shipped_checkpoints_with_string_dtypes_load(name):
    from pathlib import Path

    from physlens.training import load_checkpoint, read_checkpoint_config

    path = Path(__file__).parents[1] / "docs" / "tutorials" / "models" / name
    stored = read_checkpoint_config(path)["config"]
    assert stored["dtype"] == "float32"
    model, _ = load_checkpoint(path)
    assert model.cfg.dtype is torch.float32
    assert {name: model.config_dict()[name] for name in stored} == stored  # fields added since default to what it was


def test_stacked_weight_views():
    model = _model(n_layers=3, d_model=4, n_heads=2, d_head=2)
    assert model.W_Q.shape == (3, 2, 4, 2) and model.W_O.shape == (3, 2, 2, 4)
    assert torch.equal(model.W_V[1], model.blocks[1].attn.W_V)


def test_models_are_built_in_eval_mode():
    model = _model()
    assert not model.training and not any(module.training for module in model.modules())


def test_loss_return_type_is_the_mean_squared_error():
    model = _model(d_model=4, n_heads=2, d_head=2, seed=6)
    x, y = _states(3, 6, seed=1), _states(3, 6, seed=2)
    expected = ((model(x) - y) ** 2).mean()
    torch.testing.assert_close(model(x, return_type="loss", targets=y), expected)
    output, loss = model(x, return_type="both", targets=y)
    torch.testing.assert_close(output, model(x))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(model(x, "loss", targets=y, loss_positions="last"), ((model(x)[:, -1] - y[:, -1]) ** 2).mean())
    assert model(x, return_type=None) is None
    with pytest.raises(ValueError, match="needs targets shaped like states"):
        model(x, return_type="loss")
    with pytest.raises(ValueError, match="return_type must be"):
        model(x, return_type="logits")
    with pytest.raises(ValueError, match="targets are only used"):
        model(x, targets=y)


def _gradient_at(model, name, x, y):
    """d loss / d activation, found by adding a zero tensor at the hook and differentiating w.r.t. it."""
    shift = {}

    def add_zero(activation, hook):
        shift["zero"] = torch.zeros_like(activation, requires_grad=True)
        return activation + shift["zero"]

    loss = model.run_with_hooks(x, return_type="loss", targets=y, fwd_hooks=[(name, add_zero)])
    return torch.autograd.grad(loss, shift["zero"])[0]


def test_gradient_caching_with_a_loss_returning_forward():
    model = _model(d_model=4, n_heads=2, d_head=2, n_layers=2, attn_only=False, seed=7)
    x, y = _states(3, 6, seed=1), _states(3, 6, seed=2)
    loss, cache = model.run_with_cache(x, return_type="loss", targets=y, incl_bwd=True)
    assert loss.ndim == 0
    for name in ("hook_embed", "blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.mlp.hook_post", "blocks.1.hook_resid_post"):
        assert_allclose(cache[name + "_grad"].numpy(), _gradient_at(model, name, x, y).numpy(), atol=1e-12)
    model.zero_grad()
    with pytest.raises(ValueError, match="return_type='loss'"):
        model.run_with_cache(x, incl_bwd=True)


def test_backward_hooks_through_run_with_hooks():
    model = _model(d_model=4, n_heads=2, d_head=2, n_layers=2, seed=8)
    x, y = _states(2, 5, seed=3), _states(2, 5, seed=4)
    seen = {}

    def record(grad, hook):
        seen[hook.name] = grad.detach().clone()

    name = "blocks.1.hook_attn_out"
    loss = model.run_with_hooks(x, return_type="loss", targets=y, bwd_hooks=[(name, record)], reset_hooks_end=False)
    loss.backward()
    model.reset_hooks()
    assert_allclose(seen[name].numpy(), _gradient_at(model, name, x, y).numpy(), atol=1e-12)
    assert all(not hp.bwd_hooks for hp in model.hook_dict.values())


def test_stacked_mlp_views_and_missing_mlp():
    model = _model(n_layers=2, d_model=4, n_heads=2, d_head=2, attn_only=False)
    assert model.W_in.shape == (2, 4, 16) and model.W_out.shape == (2, 16, 4)
    assert model.b_in.shape == (2, 16) and model.b_out.shape == (2, 4)
    assert torch.equal(model.W_out[1], model.blocks[1].mlp.W_out)
    with pytest.raises(AttributeError, match="W_in"):  # attention-only: hasattr(model, "W_in") is False
        _model().W_in


def test_ov_and_qk_circuits_are_transformer_lens_factored_matrices():
    from transformer_lens import FactoredMatrix
    from transformer_lens.utilities import composition_scores

    model = _model(n_layers=2, d_model=4, n_heads=2, d_head=2, seed=9)
    ov, qk = model.OV, model.QK
    assert isinstance(ov, FactoredMatrix) and ov.shape == (2, 2, 4, 4)
    w_v, w_o, w_q, w_k = (getattr(model, n).detach() for n in ("W_V", "W_O", "W_Q", "W_K"))
    assert_allclose(ov.AB.detach().numpy(), (w_v @ w_o).numpy(), atol=1e-12)
    assert_allclose(qk.AB.detach().numpy(), (w_q @ w_k.transpose(-1, -2)).numpy(), atol=1e-12)
    assert_allclose(ov[1, 0].AB.detach().numpy(), (w_v[1, 0] @ w_o[1, 0]).numpy(), atol=1e-12)
    assert_allclose(model.blocks[1].attn.QK.AB.detach().numpy(), qk.AB[1].detach().numpy(), atol=1e-12)
    # the SVD of the factored form equals the SVD of the full product (rank d_head = 2)
    assert_allclose(ov.S.detach().numpy(), torch.linalg.svdvals(w_v @ w_o)[..., :2].numpy(), atol=1e-10)
    # TransformerLens's circuit code: Q-composition of layer-0 heads into layer-1 heads
    scores = composition_scores(ov[0], qk[1])  # [head 0, head 1]
    left, right = (w_v[0] @ w_o[0]), (w_q[1] @ w_k[1].transpose(-1, -2))
    expected = torch.linalg.matrix_norm(left[:, None] @ right[None]) / (
        torch.linalg.matrix_norm(left)[:, None] * torch.linalg.matrix_norm(right)[None]
    )
    assert_allclose(scores.detach().numpy(), expected.numpy(), atol=1e-10)


def _hand_patch_heads(model, corrupted, clean_cache, metric, name):
    """Patch every head's activation at all positions, one (layer, head) at a time."""
    values = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            hook_name = f"blocks.{layer}.attn.hook_{name}"

            def patch(activation, hook, head=head):
                activation = activation.clone()
                if name == "pattern":
                    activation[:, head] = clean_cache[hook.name][:, head]
                else:
                    activation[:, :, head] = clean_cache[hook.name][:, :, head]
                return activation

            with torch.no_grad():
                values[layer, head] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(hook_name, patch)]))
    return values


@pytest.mark.parametrize(
    "helper", ["get_act_patch_resid_pre", "get_act_patch_resid_mid", "get_act_patch_attn_out", "get_act_patch_mlp_out",
               "get_act_patch_attn_head_out_by_pos", "get_act_patch_attn_head_q_by_pos", "get_act_patch_attn_head_v_by_pos",
               "get_act_patch_attn_head_pattern_by_pos", "get_act_patch_attn_head_pattern_dest_src_pos",
               "get_act_patch_block_every", "get_act_patch_attn_head_by_pos_every"],
)
def test_transformer_lens_sweeps_over_positions_are_refused_with_the_physlens_name(helper):
    model = _model(d_model=4, n_heads=2, d_head=2, n_layers=2, attn_only=False, seed=4)
    clean, corrupted = _states(3, 6, seed=1), _states(3, 6, seed=2)
    _, cache = model.run_with_cache(clean)
    with pytest.raises(ValueError, match=r"last axis.*6 positions.*physlens\.probes\.patching\.get_act_patch_"):
        getattr(patching, helper)(model, corrupted, cache, lambda out: out[:, -1, 0].mean())


class _LoggingTransformer(OscillatorTransformer):
    """A user's subclass that wraps run_with_hooks, as a logging or timing layer would."""

    calls = 0

    def run_with_hooks(self, *model_args, **kwargs):
        type(self).calls += 1
        return super().run_with_hooks(*model_args, **kwargs)


def _decorated(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        return method(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("wrap", ["subclass override", "decorator", "two decorators"])
def test_a_wrapper_around_run_with_hooks_does_not_switch_the_refusal_off(wrap, monkeypatch):
    # The refusal used to look at the immediate caller of run_with_hooks only, so any layer between
    # TransformerLens's sweep and the model (the runtime type checker of the test run is one) let
    # the sweep run and return a grid of the wrong shape.
    model = _model(d_model=4, n_heads=2, d_head=2, n_layers=2, seed=4)
    if wrap == "subclass override":
        model = _LoggingTransformer(model.cfg)
    else:
        layers = 2 if wrap == "two decorators" else 1
        method = model.run_with_hooks
        for _ in range(layers):
            method = _decorated(method)
        monkeypatch.setattr(model, "run_with_hooks", method)
    clean, corrupted = _states(3, 6, seed=1), _states(3, 6, seed=2)
    _, cache = model.run_with_cache(clean)
    with pytest.raises(ValueError, match=r"last axis.*6 positions.*physlens\.probes\.patching\.get_act_patch_resid_pre"):
        patching.get_act_patch_resid_pre(model, corrupted, cache, lambda out: out[:, -1, 0].mean())
    # explicit cells still run through the same wrapper
    index_df = pd.DataFrame([(0, pos) for pos in range(6)], columns=["layer", "pos"])
    result = patching.generic_activation_patch(model, corrupted, cache, lambda out: out[:, -1, 0].mean(),
                                               patching.layer_pos_patch_setter, "resid_pre", index_df=index_df)
    assert result.shape == (6,)
    if wrap == "subclass override":
        assert _LoggingTransformer.calls >= 7


@pytest.mark.parametrize("name", ["out", "q", "k", "v", "pattern"])
def test_transformer_lens_all_position_head_sweeps_are_right(name):
    model = _model(d_model=4, n_heads=2, d_head=2, n_layers=2, causal=False, seed=4)
    clean, corrupted = _states(3, 6, seed=1), _states(3, 6, seed=2)
    _, cache = model.run_with_cache(clean)

    def metric(out):
        return out[:, -1, 0].mean()

    result = getattr(patching, f"get_act_patch_attn_head_{name}_all_pos")(model, corrupted, cache, metric)
    expected = _hand_patch_heads(model, corrupted, cache, metric, "z" if name == "out" else name)
    assert_allclose(result.numpy(), expected.numpy(), atol=1e-6)
    assert not torch.allclose(result, torch.full_like(result, float(metric(model(corrupted)).detach())))


def test_freshly_built_and_loaded_models_run_transformer_lens_patching(tmp_path):
    from physlens.training.checkpoints import load_checkpoint, save_checkpoint

    model = _model(d_model=4, n_heads=2, d_head=2, seed=5)
    model.train()
    save_checkpoint(tmp_path / "ckpt", model)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert not loaded.training and not any(m.training for m in loaded.modules())
    clean, corrupted = _states(2, 4, seed=1), _states(2, 4, seed=2)
    _, cache = loaded.run_with_cache(clean)
    result = patching.get_act_patch_attn_head_out_all_pos(loaded, corrupted, cache, lambda out: out.sum())
    assert result.shape == (1, 2)


def test_split_qkv_input_changes_nothing_until_patched():
    model = _model(d_model=4, n_heads=2, d_head=2, n_layers=2, layer_norm=True, attn_only=False, seed=12)
    x = _states(2, 5)
    plain = model(x)
    model.set_use_split_qkv_input(True)
    try:
        out, cache = model.run_with_cache(x)
        assert cache["blocks.1.attn.hook_k_input"].shape == (2, 5, 2, 4)
        assert_allclose(out.detach().numpy(), plain.detach().numpy(), atol=1e-12)
    finally:
        model.set_use_split_qkv_input(False)
    assert "blocks.1.attn.hook_k_input" not in model.run_with_cache(x)[1]


@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_transformer_lens_direct_path_patching_runs_and_is_right(component):
    model = _model(d_model=4, n_heads=2, d_head=2, n_layers=3, causal=False, seed=13)
    clean, corrupted = _states(3, 5, seed=1), _states(3, 5, seed=2)
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)

    def metric(out):
        return out[:, -1, 0].mean()

    result = patching.get_act_patch_direct_path(model, corrupted, clean_cache, corrupted_cache, metric, 0, 1, component, verbose=False)
    assert not model.cfg.use_split_qkv_input  # restored
    # by hand, without the split input: head 1 of layer 0 writes delta; only head h of layer l reads it,
    # through its own projection (no LayerNorm here), so add delta @ W_{component}[l, h] to that head's hook_{component}
    w_o = model.blocks[0].attn.W_O[1]
    delta = (clean_cache["blocks.0.attn.hook_z"][:, :, 1] - corrupted_cache["blocks.0.attn.hook_z"][:, :, 1]) @ w_o
    for layer in (1, 2):
        for head in range(2):
            projection = getattr(model.blocks[layer].attn, f"W_{component.upper()}")[head]

            def add(activation, hook, head=head, projection=projection):
                activation = activation.clone()
                activation[:, :, head] += delta @ projection
                return activation

            with torch.no_grad():
                expected = metric(model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.attn.hook_{component}", add)]))
            assert float(result[layer, head]) == pytest.approx(float(expected), abs=1e-6)
    assert torch.all(result[0] == 0)


def test_svd_interpreter_reads_ov_directions_out_through_the_unembedding():
    from transformer_lens import SVDInterpreter

    model = _model(d_model=4, n_heads=2, d_head=3, n_layers=2, attn_only=False, seed=14)
    vectors = SVDInterpreter(model).get_singular_vectors("OV", layer_index=1, num_vectors=2, head_index=0)
    assert vectors.shape == (2, 1, 2)  # [output component, 1, singular direction]
    _, _, vh = torch.linalg.svd((model.W_V[1, 0] @ model.W_O[1, 0]).detach())
    expected = model.W_U.detach().T @ vh[:2].T  # singular vectors are defined up to sign
    assert_allclose(vectors[:, 0].abs().numpy(), expected.abs().numpy(), atol=1e-10)
    assert SVDInterpreter(model).get_singular_vectors("w_in", layer_index=0, num_vectors=2).shape == (2, 1, 2)


def test_tokenizer_tools_are_refused_loudly():
    from transformer_lens.head_detector import detect_head
    from transformer_lens.model_protocol import TransformerLensModel

    model = _model()
    assert isinstance(model, TransformerLensModel)
    with pytest.raises(NotImplementedError, match="continuous states, not tokens"):
        detect_head(model, "a prompt", "previous_token_head")
    with pytest.raises(NotImplementedError, match="continuous states, not tokens"):
        model.to_str_tokens(_states(1, 3))


def test_scale_by_first_state_makes_the_model_exactly_scale_equivariant_and_keeps_it_causal():
    cfg = TransformerConfig(d_model=8, n_layers=2, n_heads=2, d_head=4, n_ctx=10, causal=True, attn_only=False,
                            positional_embedding=True, scale_by_first_state=True, dtype="float64", seed=3)
    model = OscillatorTransformer(cfg).eval()
    states = torch.randn(5, 10, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        out = model(states)
        for factor in (1e-3, 0.37, 25.0):
            torch.testing.assert_close(model(factor * states), factor * out, rtol=1e-12, atol=1e-14)
        # The scale comes from the first state, which every position sees: later states still cannot reach earlier outputs.
        changed = states.clone()
        changed[:, 6:] += 1.0
        torch.testing.assert_close(model(changed)[:, :6], out[:, :6], rtol=0, atol=0)
    _, cache = model.run_with_cache(states, names_filter="hook_input_scale")
    torch.testing.assert_close(cache["hook_input_scale"][:, 0, 0], torch.linalg.vector_norm(states[:, 0], dim=-1))
    # Without it the same network is not scale-equivariant (biases and GELU see the amplitude).
    plain = OscillatorTransformer(dataclasses.replace(cfg, scale_by_first_state=False)).eval()
    with torch.no_grad():
        assert not torch.allclose(plain(3.0 * states), 3.0 * plain(states))


def test_scale_by_first_state_refuses_an_attention_window():
    with pytest.raises(ValueError, match="scale_by_first_state passes the first state's size"):
        TransformerConfig(scale_by_first_state=True, attn_window=1)
