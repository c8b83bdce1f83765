"""No hook can change a parameter or another activation: every hooked activation is its own tensor.

For every hook of every preset and option, an in-place edit of one element must do exactly what
the same edit made on a copy does (TransformerLens clones where a view would alias, its issue
#157): same output, same activations everywhere else, parameters untouched, and a later hook-free
run unchanged. Checked with the edit made inside a hook and made on the cache afterwards, with
and without autograd.
"""

from __future__ import annotations

import pytest
import torch

from physlens.models import OscillatorTransformer
from physlens.models.transformer import preset_config

OPTIONS = {
    "plain": {},
    "pos_embed": dict(positional_embedding=True),
    "layer_norm_mlp": dict(layer_norm=True, attn_only=False, positional_embedding=True),
    "scale_by_first_state": dict(scale_by_first_state=True, attn_only=False),
    "split_qkv": dict(use_split_qkv_input=True, layer_norm=True),
    "split_qkv_plain": dict(use_split_qkv_input=True),
    "window_no_bias": dict(causal=False, attn_window=3, embed_bias=False, unembed_bias=False),
}
SHRINK = {"OLA": {}, "nLA": dict(n_layers=2, d_model=8, d_head=4)}  # nLA's layout, small enough to sweep


def build(preset: str, option: str) -> OscillatorTransformer:
    cfg = preset_config(preset, **SHRINK[preset], **OPTIONS[option], n_ctx=8, dtype="float64", seed=3)
    model = OscillatorTransformer(cfg)
    with torch.no_grad():  # non-trivial LayerNorm weights and biases, so no edit hides behind an identity
        for name, param in model.named_parameters():
            if name.endswith((".w", ".b")):
                param.add_(0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(7), dtype=param.dtype))
    return model


CASES = [(preset, option) for preset in SHRINK for option in OPTIONS]


def _states() -> torch.Tensor:
    return torch.randn(3, 6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _first(tensor: torch.Tensor) -> tuple[int, ...]:
    return (0,) * tensor.ndim


def _run_edited(model: OscillatorTransformer, states: torch.Tensor, name: str, in_place: bool) -> tuple[torch.Tensor, dict]:
    """Run with one element of ``name`` raised by 1 (in place or on a copy); every activation kept by
    reference, as TransformerLens's caching hooks keep them."""
    seen: dict[str, torch.Tensor] = {}

    def edit(tensor, hook):
        target = tensor if in_place else tensor.clone()
        target[_first(target)] += 1.0
        return target

    def keep(tensor, hook):
        seen[hook.name] = tensor.detach()

    fwd_hooks = [(name, edit)] + [(hook_name, keep) for hook_name in model.hook_dict]
    output = model.run_with_hooks(states, fwd_hooks=fwd_hooks)
    return output.detach(), seen


def _reached_hooks(model: OscillatorTransformer, states: torch.Tensor) -> list[str]:
    _, cache = model.run_with_cache(states)
    return list(cache.keys())


@pytest.mark.parametrize(("preset", "option"), CASES)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_in_place_hook_edit_equals_edit_of_a_copy(preset: str, option: str, grad: bool) -> None:
    model = build(preset, option)
    states = _states()
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        reference = model(states).clone()
    failures = []
    for name in _reached_hooks(model, states):
        with torch.set_grad_enabled(grad):
            out_copy, acts_copy = _run_edited(model, states, name, in_place=False)
            out_in_place, acts_in_place = _run_edited(model, states, name, in_place=True)
        if not torch.equal(out_copy, out_in_place):
            failures.append(f"{name}: output differs from the edit on a copy by {(out_copy - out_in_place).abs().max():.3g}")
        for other, value in acts_copy.items():
            if not torch.equal(value, acts_in_place[other]):
                failures.append(f"{name}: in-place edit changed {other} by {(value - acts_in_place[other]).abs().max():.3g}")
        for pname, before in params.items():
            if not torch.equal(before, dict(model.named_parameters())[pname]):
                failures.append(f"{name}: in-place edit moved parameter {pname}")
                dict(model.named_parameters())[pname].data.copy_(before)
        with torch.no_grad():
            if not torch.equal(model(states), reference):
                failures.append(f"{name}: a later hook-free run changed")
        if not torch.equal(states, _states()):
            failures.append(f"{name}: in-place edit rewrote the caller's input")
            states = _states()
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("preset", "option"), CASES)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_editing_the_cache_changes_no_parameter_and_no_other_entry(preset: str, option: str, grad: bool) -> None:
    model = build(preset, option)
    states = _states()
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        reference = model(states).clone()
    failures = []
    for name in _reached_hooks(model, states):
        with torch.set_grad_enabled(grad):
            _, cache = model.run_with_cache(states)
        before = {key: value.clone() for key, value in cache.items()}
        cache[name][_first(cache[name])] += 1.0
        for key, value in before.items():
            if key != name and not torch.equal(value, cache[key]):
                failures.append(f"cache[{name!r}] edit changed cache[{key!r}]")
        changed = (cache[name] != before[name]).sum().item()
        if changed != 1:
            failures.append(f"cache[{name!r}]: editing one element changed {changed}")
        for pname, value in params.items():
            if not torch.equal(value, dict(model.named_parameters())[pname]):
                failures.append(f"cache[{name!r}] edit moved parameter {pname}")
                dict(model.named_parameters())[pname].data.copy_(value)
        with torch.no_grad():
            if not torch.equal(model(states), reference):
                failures.append(f"cache[{name!r}] edit changed a later hook-free run")
    assert not failures, "\n".join(failures)


def test_zeroing_pos_embed_of_one_example_leaves_w_pos_and_the_others() -> None:
    """The issue's reproduction: run_with_hooks(x[:1], [("hook_pos_embed", z.zero_())]) rewrote W_pos."""
    model = build("OLA", "pos_embed")
    states = _states()
    w_pos = model.W_pos.detach().clone()
    with torch.no_grad():
        before = model(states).clone()
        model.run_with_hooks(states[:1], fwd_hooks=[("hook_pos_embed", lambda z, hook: z.zero_())])
        torch.testing.assert_close(model.W_pos, w_pos, rtol=0, atol=0)
        torch.testing.assert_close(model(states), before, rtol=0, atol=0)


def test_zeroing_one_heads_query_input_touches_nothing_else() -> None:
    """The issue's reproduction: zeroing head 0's hook_q_input zeroed every head's k and v input and resid."""
    model = build("nLA", "split_qkv")
    states = _states()

    def zero_head0(z, hook):
        z[:, :, 0] = 0.0
        return z

    def zero_head0_copy(z, hook):
        z = z.clone()
        z[:, :, 0] = 0.0
        return z

    with torch.no_grad():
        _, cache = model.run_with_cache(states)
        out = model.run_with_hooks(states, fwd_hooks=[("blocks.0.attn.hook_q_input", zero_head0)])
        expected = model.run_with_hooks(states, fwd_hooks=[("blocks.0.attn.hook_q_input", zero_head0_copy)])
        _, edited = model.run_with_cache(states)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert (out - model(states)).abs().max() > 0  # the edit did something
    for key in cache.keys():
        torch.testing.assert_close(edited[key], cache[key], rtol=0, atol=0)
