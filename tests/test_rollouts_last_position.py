"""The rollout's last-position step equals the hooked forward, and is used only where nothing watches the model."""

from __future__ import annotations

import itertools

import pytest
import torch
from numpy.testing import assert_allclose

from physlens.models.organisms import LeastSquaresOrganism
from physlens.models.transformer import OscillatorTransformer, TransformerConfig
from physlens.training.rollouts import ROLLOUT_CHUNK, ResidualPush, last_position_step, rollout


def _model(**options) -> OscillatorTransformer:
    cfg = TransformerConfig(**{"n_layers": 2, "d_model": 8, "n_heads": 2, "d_head": 4, "n_ctx": 12, "dtype": "float64", "seed": 3,
                               **options})
    model = OscillatorTransformer(cfg).eval()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # non-zero biases and norms, so every term the fast step computes is exercised
        for parameter in model.parameters():
            parameter += 0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
    return model


def _hooked_rollout(model: OscillatorTransformer, context: torch.Tensor, n_steps: int) -> torch.Tensor:
    history, out = context, []
    with torch.no_grad():
        for _ in range(n_steps):
            next_state = model(history)[:, -1:]
            out.append(next_state)
            history = torch.cat([history[:, 1:], next_state], dim=1)
    return torch.cat(out, dim=1)


CONFIGS = [
    dict(causal=causal, attn_window=window, attn_only=attn_only, layer_norm=norm, attn_bias=bias, scale_by_first_state=scale,
         positional_embedding=positions)
    for causal, window, attn_only, norm, bias, scale, positions in itertools.product(
        [True, False], [None, 3], [False, True], [False, True], [False, True], [False, True], [False, True])
    if not (scale and window)  # the config refuses the pair
]


@pytest.mark.parametrize("options", CONFIGS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_last_position_step_equals_the_hooked_forward(options):
    model = _model(**options)
    states = torch.randn(ROLLOUT_CHUNK + 5, 10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))  # two chunks
    step = last_position_step(model)
    assert step is not None
    with torch.no_grad():
        expected = model(states)[:, -1:]
    assert_allclose(step(states).numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)
    assert_allclose(rollout(model, states[:20], 6, fast=True).numpy(), _hooked_rollout(model, states[:20], 6).numpy(), rtol=1e-10, atol=1e-10)
    # without fast=True a rollout is the model's own forward pass, bit for bit, so it compares exactly with a hooked one
    assert torch.equal(rollout(model, states[:20], 6), _hooked_rollout(model, states[:20], 6))


def test_a_hook_anywhere_sends_the_rollout_through_the_hooked_forward():
    model = _model(causal=True, attn_only=False, scale_by_first_state=True, positional_embedding=True)
    context = torch.randn(4, 10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    plain = rollout(model, context, 3, fast=True)

    def zero(activation, hook):
        return torch.zeros_like(activation)

    with model.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", zero)]):
        assert last_position_step(model) is None
        ablated = rollout(model, context, 3, fast=True)
        expected = _hooked_rollout(model, context, 3)
    assert_allclose(ablated.numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)
    assert float((ablated - plain).abs().max()) > 1e-6  # the hook did act
    assert last_position_step(model) is not None  # and leaves no trace


def test_other_predictors_have_no_last_position_step():
    class Subclass(OscillatorTransformer):  # may compute anything in its own forward
        pass

    assert last_position_step(torch.nn.Identity()) is None
    assert last_position_step(LeastSquaresOrganism(window=4)) is None
    assert last_position_step(Subclass(_model().cfg)) is None


def _hooked_pushed_rollout(model: OscillatorTransformer, push: ResidualPush, context: torch.Tensor, n_steps: int) -> torch.Tensor:
    def add(activation, hook):
        where = slice(None) if push.position is None else push.position
        activation[:, where] += push.vector
        return activation

    with model.hooks(fwd_hooks=[(f"blocks.{push.layer}.hook_resid_mid", add)]):
        return _hooked_rollout(model, context, n_steps)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("position", [9, 4, None])
def test_a_push_at_resid_mid_equals_a_hook_that_adds_it(causal, layer, position):
    model = _model(causal=causal, attn_only=False, layer_norm=True, scale_by_first_state=True, positional_embedding=True)
    vector = torch.randn(model.cfg.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    push = ResidualPush(layer, vector, position)
    context = torch.randn(ROLLOUT_CHUNK + 3, 10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    step = last_position_step(model, push=push)
    assert step is not None
    pushed = rollout(step, context, 5)
    assert_allclose(pushed.numpy(), _hooked_pushed_rollout(model, push, context, 5).numpy(), rtol=1e-10, atol=1e-10)
    moved = float((pushed - rollout(model, context, 5, fast=True)).abs().max())  # the same step without the push
    if position == 4 and layer == 1:  # the last block's resid_mid at an earlier position feeds only that position's output
        assert moved == 0.0
    else:
        assert moved > 1e-6


def test_a_push_outside_the_model_or_the_window_is_refused():
    model = _model()
    vector = torch.ones(model.cfg.d_model, dtype=torch.float64)
    with pytest.raises(ValueError, match="push.layer"):
        last_position_step(model, push=ResidualPush(2, vector, None))
    with pytest.raises(ValueError, match="push.vector"):
        last_position_step(model, push=ResidualPush(0, vector[:3], None))
    step = last_position_step(model, push=ResidualPush(0, vector, 10))
    with pytest.raises(ValueError, match="the push sits at position 10"):
        step(torch.randn(2, 10, 2, dtype=torch.float64))


def test_predictor_placement_is_the_first_parameters_else_the_inputs():
    from physlens.models.reference import InContextLeastSquares
    from physlens.training.rollouts import predictor_placement

    model = OscillatorTransformer(TransformerConfig(d_model=4, n_layers=1, n_heads=1, d_head=4, n_ctx=4, dtype="float32", seed=0))
    like = torch.zeros(2, 3, 2, dtype=torch.float64)
    assert predictor_placement(model, like) == (torch.float32, torch.device("cpu"))
    assert predictor_placement(InContextLeastSquares(), like) == (torch.float64, torch.device("cpu"))
    assert predictor_placement(lambda states: states, like.to(torch.float16)) == (torch.float16, torch.device("cpu"))
