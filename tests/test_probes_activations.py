"""Activation collection: hooks, positions, labels, chunking, errors."""

from __future__ import annotations

import pytest
import torch

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.probes.activations import collect_activations, iter_activations, resolve_positions
from physlens.systems import OscillatorSystem, Uniform


@pytest.fixture
def model() -> OscillatorTransformer:
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=8, dtype="float64")
    return OscillatorTransformer(cfg).eval()


@pytest.fixture
def data():
    return OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64").sample(10, 8, seed=0)


def test_collect_matches_run_with_cache_at_selected_positions(model, data):
    names = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_result", "blocks.0.attn.hook_pattern"]
    acts = collect_activations(model, data, names, positions=[0, -1], batch_size=3)
    _, cache = model.run_with_cache(data.states, names_filter=names)
    torch.testing.assert_close(acts.acts[names[0]], cache[names[0]][:, [0, 7]])
    torch.testing.assert_close(acts.acts[names[1]], cache[names[1]][:, [0, 7]])
    torch.testing.assert_close(acts.acts[names[2]], cache[names[2]][:, :, [0, 7]].movedim(2, 1))  # query positions
    assert acts.positions == [0, 7]
    assert acts.features(names[1]).shape == (10, 2, 2 * 4)
    torch.testing.assert_close(acts.labels["energy"], data.energy[:, [0, 7]])
    torch.testing.assert_close(acts.labels["omega0"], data.omega0)


def test_positions_none_keeps_whole_activation_and_chunks_cover_everything(model, data):
    chunks = list(iter_activations(model, data.states, ["hook_embed"], positions=None, batch_size=4))
    assert [c[0] for c in chunks] == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert chunks[0][1]["hook_embed"].shape == (4, 8, 4)
    assert not chunks[0][1]["hook_embed"].requires_grad


def test_seq_len_cuts_trajectories(model):
    long = OscillatorSystem(dtype="float64").sample(4, 20, seed=1)
    acts = collect_activations(model, long, ["hook_embed"], seq_len=8, positions="all")
    assert acts.acts["hook_embed"].shape == (4, 8, 4)
    assert acts.labels["energy"].shape == (4, 8)


def test_bad_input(model, data):
    with pytest.raises(ValueError, match="unknown hook names"):
        collect_activations(model, data, ["blocks.5.hook_resid_post"])
    with pytest.raises(ValueError, match="out of range"):
        collect_activations(model, data, ["hook_embed"], positions=[8])
    with pytest.raises(ValueError, match="one entry per example"):
        collect_activations(model, data, ["hook_embed"], labels={"omega0": torch.ones(3)})
    with pytest.raises(ValueError, match="must not repeat"):
        resolve_positions([1, -7], 8)
    with pytest.raises(ValueError, match="'all'"):
        resolve_positions("last", 8)


def test_tools_work_on_a_plain_hooked_root_module():
    """Not a physlens model: a bare TransformerLens HookedRootModule with one hook point."""
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.HookedRootModule import HookedRootModule

    from physlens.probes.linear_probe import probe_sweep

    class Plain(HookedRootModule):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(2, 3, dtype=torch.float64)
            with torch.no_grad():  # fixed weights: no draw from the global generator
                self.linear.weight.copy_(torch.tensor([[1.0, 0.5], [-0.3, 1.0], [0.2, 0.7]]))
                self.linear.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
            self.hook_hidden = HookPoint()
            self.setup()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.hook_hidden(self.linear(x))

    model = Plain().eval()
    data = OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64").sample(30, 5, seed=0)
    acts = collect_activations(model, data, ["hook_hidden"], positions=[4])
    torch.testing.assert_close(acts.acts["hook_hidden"][:, 0], model(data.states)[:, 4].detach())
    labels = {"x": data.states[:, :, 0]}
    result = probe_sweep(model, data.states, ["hook_hidden"], labels=labels, targets=["x"], control_model=None)
    assert result.r2.min() > 1 - 1e-9  # the hidden layer is affine in x
