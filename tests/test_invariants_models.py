"""Siamese tower and bottleneck network: hooks, checks, checkpoints, and training that finds the invariant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from physlens.models import MODEL_REGISTRY, BottleneckConfig, BottleneckNetwork, SiameseConfig, SiameseTower
from physlens.systems import CentralPotentialSystem, OscillatorSystem, Uniform, angular_momentum, propagator
from physlens.training import (
    BottleneckTrainConfig,
    SiameseTrainConfig,
    contrastive_loss,
    load_checkpoint,
    make_pairs,
    oscillator_windows,
    pair_accuracy,
    save_checkpoint,
    train_bottleneck,
    train_siamese,
)


def test_siamese_tower_hooks_and_shapes() -> None:
    model = SiameseTower(SiameseConfig(d_hidden=8, n_layers=2, d_latent=3))
    assert model.hook_names == [
        "blocks.0.hook_pre", "blocks.0.hook_post", "blocks.1.hook_pre", "blocks.1.hook_post", "hook_latent"
    ]
    states = torch.randn(5, 4)
    latent, cache = model.run_with_cache(states, names_filter="hook_latent")
    assert latent.shape == (5, 3)
    torch.testing.assert_close(cache["hook_latent"], latent)
    other = torch.randn(5, 4)
    distance = model.pair_distance(states, other)
    torch.testing.assert_close(distance, model.pair_distance(other, states))
    torch.testing.assert_close(distance, torch.linalg.vector_norm(model(states) - model(other), dim=-1))
    assert "SiameseTower" in MODEL_REGISTRY and "BottleneckNetwork" in MODEL_REGISTRY


@pytest.mark.unchecked_types
def test_models_refuse_bad_input() -> None:
    model = SiameseTower(SiameseConfig(d_hidden=4))
    with pytest.raises(ValueError, match=r"\[batch, 4\]"):
        model(torch.randn(3, 2))
    with pytest.raises(ValueError, match="finite"):
        model(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="dtype"):
        model(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="same shape"):
        model.pair_distance(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="activation"):
        SiameseConfig(activation="sigmoid")
    network = BottleneckNetwork(BottleneckConfig(d_in=6, d_out=2, d_side=2, d_hidden=4))
    with pytest.raises(ValueError, match="side must be given"):
        network(torch.randn(3, 6))
    with pytest.raises(ValueError, match="batch size"):
        network(torch.randn(3, 6), torch.randn(2, 2))
    plain = BottleneckNetwork(BottleneckConfig(d_in=6, d_out=1, d_hidden=4))
    with pytest.raises(ValueError, match="side must be None"):
        plain(torch.randn(3, 6), torch.randn(3, 2))


def test_bottleneck_routes_through_one_neuron(tmp_path) -> None:
    model = BottleneckNetwork(BottleneckConfig(d_in=6, d_out=2, d_side=2, d_hidden=8, seed=3))
    inputs, side = torch.randn(7, 6), torch.randn(7, 2)
    out, cache = model.run_with_cache(inputs, side, names_filter="hook_bottleneck")
    assert out.shape == (7, 2) and cache["hook_bottleneck"].shape == (7, 1)
    # the output depends on the inputs only through the bottleneck: patch it and the output follows
    patched = model.run_with_hooks(
        inputs, side, fwd_hooks=[("hook_bottleneck", lambda act, hook: torch.zeros_like(act))]
    )
    blank = model.run_with_hooks(
        torch.randn(7, 6), side, fwd_hooks=[("hook_bottleneck", lambda act, hook: torch.zeros_like(act))]
    )
    torch.testing.assert_close(patched, blank)
    save_checkpoint(tmp_path / "ckpt", model)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    torch.testing.assert_close(loaded(inputs, side), out)


def test_make_pairs_labels_and_gap(torch_gen: torch.Generator) -> None:
    orbits = CentralPotentialSystem(dtype="float64").sample(50, 6, seed=0, random_times=True)
    pairs = make_pairs(orbits, 400, generator=torch_gen, min_gap=0.3)
    assert len(pairs) == 400 and int(pairs.same.sum()) == 200
    gap = (angular_momentum(pairs.first) - angular_momentum(pairs.second)).abs()
    assert float(gap[pairs.same].max()) < 1e-10
    assert float(gap[~pairs.same].min()) >= 0.3
    with pytest.raises(ValueError, match="min_gap"):
        make_pairs(orbits, 10, generator=torch_gen, min_gap=-1.0)
    with pytest.raises(ValueError, match="lower min_gap"):
        make_pairs(orbits, 10, generator=torch_gen, min_gap=100.0)


def test_contrastive_loss_matches_its_definition() -> None:
    distance = torch.tensor([0.0, 0.5, 0.2, 2.0])
    same = torch.tensor([True, True, False, False])
    expected = (0.0 + 0.25 + 0.8**2 + 0.0) / 4
    assert float(contrastive_loss(distance, same, margin=1.0)) == pytest.approx(expected)


def test_siamese_training_learns_angular_momentum() -> None:
    system = CentralPotentialSystem(min_perihelion=0.2)
    train = system.sample(600, 12, seed=0, random_times=True)
    test = system.sample(200, 12, seed=1, random_times=True)
    model = SiameseTower(SiameseConfig(d_hidden=32, seed=0))
    result = train_siamese(model, train, SiameseTrainConfig(steps=800, batch_size=256, min_gap=0.3), progress=False)
    assert np.mean(result.losses[-50:]) < 0.3 * np.mean(result.losses[:50])
    with torch.no_grad():
        latent = model(test.states.reshape(-1, 4))[:, 0].numpy()
    correlation = np.corrcoef(latent, test.angular_momentum.reshape(-1).numpy())[0, 1]
    assert abs(correlation) > 0.9
    gapped = make_pairs(test, 2000, generator=torch.Generator().manual_seed(0), min_gap=0.3)
    assert pair_accuracy(model, gapped, result.threshold) > 0.85


def test_independent_query_targets_follow_the_exact_propagator(torch_gen: torch.Generator) -> None:
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64")
    batch = system.sample(20, 5, seed=2)
    inputs, side, target = oscillator_windows(batch, 4, generator=torch_gen)
    assert inputs.shape == (20, 8)
    expected = torch.einsum("bij,bj->bi", propagator(batch.omega0, batch.gamma, batch.dt), side)
    torch.testing.assert_close(target, expected)
    inputs, side, target = oscillator_windows(batch, 4, query="last")
    torch.testing.assert_close(side, batch.states[:, 3])
    torch.testing.assert_close(target, batch.states[:, 4])
    with pytest.raises(ValueError, match="generator"):
        oscillator_windows(batch, 4)
    with pytest.raises(ValueError, match="window"):
        oscillator_windows(batch, 5, query="last")


def test_bottleneck_training_reduces_the_loss() -> None:
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0))
    model = BottleneckNetwork(BottleneckConfig(d_in=8, d_out=2, d_side=2, d_hidden=16))
    losses = train_bottleneck(model, system, BottleneckTrainConfig(steps=150, batch_size=128, window=4), progress=False)
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:5])
    wrong = BottleneckNetwork(BottleneckConfig(d_in=6, d_out=2, d_side=2, d_hidden=4))
    with pytest.raises(ValueError, match="d_in"):
        train_bottleneck(wrong, system, BottleneckTrainConfig(steps=1, window=4), progress=False)


def test_best_threshold_separates_known_distances() -> None:
    from physlens.training import StatePairs, best_threshold

    model = SiameseTower(SiameseConfig(n_layers=0, dtype="float64"))
    with torch.no_grad():
        model.W_out.copy_(torch.tensor([[1.0], [0.0], [0.0], [0.0]]))  # latent = x
    gaps = torch.tensor([0.1, 0.2, 0.3, 0.9, 1.0, 1.1, 0.5], dtype=torch.float64)
    first = torch.zeros(7, 4, dtype=torch.float64)
    second = first.clone()
    second[:, 0] = gaps
    same = torch.tensor([True, True, True, False, False, False, False])
    pairs = StatePairs(first, second, same)
    threshold = best_threshold(model, pairs)
    # same pairs at 0.1, 0.2, 0.3, different ones from 0.5 up: the cut falls halfway, at 0.4
    assert threshold == pytest.approx(0.4)
    assert pair_accuracy(model, pairs, threshold) == 1.0
    # move one same pair beyond every different one: it can only be missed
    second[2, 0] = 2.0
    assert pair_accuracy(model, pairs, best_threshold(model, pairs)) == pytest.approx(6 / 7)
