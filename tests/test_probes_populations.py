"""Population analyses of F = m·a networks, on networks and label arrays whose answers are known."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from sklearn.metrics import adjusted_rand_score, balanced_accuracy_score

from physlens.probes.mechanisms import ACTIVE, DEAD, STRADDLING, handcrafted_mode3_network, mechanism_labels, network_parameters, region_mse
from physlens.probes.populations import _adjusted_rand
from physlens.probes.populations import (
    ari_interval,
    balanced_accuracy,
    best_member,
    crease_orientation,
    label_stability,
    label_switches,
    ridge_valley_split,
    settled_epochs,
    transfer_scores,
)
from physlens.systems.fma import sample_fma


def _params(W_in: list, b_in: list, W_out: list, b_out: list) -> dict[str, torch.Tensor]:
    """Networks from per-network lists: W_in [2, h], b_in [h], W_out [h], b_out scalar."""
    return {
        "W_in": torch.tensor(W_in, dtype=torch.float64), "b_in": torch.tensor(b_in, dtype=torch.float64),
        "W_out": torch.tensor(W_out, dtype=torch.float64)[..., None], "b_out": torch.tensor(b_out, dtype=torch.float64)[:, None],
    }  # fmt: skip


def test_crease_orientation_reads_the_zero_line_against_the_diagonal() -> None:
    # unit 0's zero line: m − a = 0 (along the diagonal); m + a = 1 (across it); m = 0.5 (45°, oblique)
    params = _params([[[1.0, 0.0], [-1.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-1.0, 1.0]]],
                     [[0.0, 0.0], [-1.0, 0.0], [-0.5, 0.0], [0.0, 0.0]], [[1.0, 1.0]] * 4, [0.0] * 4)
    states = torch.tensor([[STRADDLING, ACTIVE], [STRADDLING, DEAD], [STRADDLING, ACTIVE], [STRADDLING, STRADDLING]])
    assert crease_orientation(params, states).tolist() == ["along", "across", "oblique", ""]


def test_label_switches_count_changes_after_the_first_trained_snapshot() -> None:
    labels = np.array([["1", "1", "1"], ["2", "3", "3"], ["3", "3", "3"], ["3", "3", "2"]])  # [snapshot, model]
    out = label_switches(labels, [0, 10, 20, 30])
    assert out["n_switching"] == 2 and out["per_epoch"] == [1, 1]
    assert out["last_switch"].tolist() == [20, -1, 30]
    assert out["transitions"] == Counter({("2", "3"): 1, ("3", "2"): 1})
    with pytest.raises(ValueError, match="one snapshot per epoch"):
        label_switches(labels, [0, 10])


def test_settled_epochs_is_when_a_condition_starts_to_hold_to_the_end() -> None:
    condition = np.array([[0, 1, 1, 0], [1, 1, 0, 1], [1, 1, 1, 0]], dtype=bool)  # [snapshot, model]
    # model 0 holds from epoch 10, model 1 throughout, model 2 again from 20 after a lapse, model 3 not at the end
    assert settled_epochs(condition, [0, 10, 20]).tolist() == [10, 0, 20, -1]
    with pytest.raises(ValueError, match="one snapshot per epoch"):
        settled_epochs(condition, [0, 10])


def test_ari_interval_is_one_for_matching_groups_and_its_control_is_near_zero() -> None:
    labels = np.repeat(np.array(["a", "b", "c"]), 30)
    groups = np.repeat(np.array([2, 0, 1]), 30)
    interval, control = ari_interval(groups, labels, seed=0, n_resamples=100)
    assert interval.estimate == pytest.approx(1.0) and control < 0.1
    noisy = groups.copy()
    noisy[::7] = 0
    assert ari_interval(noisy, labels, seed=0, n_resamples=100)[0].estimate == pytest.approx(adjusted_rand_score(labels, noisy))


def test_adjusted_rand_is_scikit_learns_to_the_last_bit(rng: np.random.Generator) -> None:
    cases = [(np.zeros(5, int), np.zeros(5, int)), (np.arange(6), np.zeros(6, int)), (np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])),
             (np.array(["a", "b", "b"]), np.array([3, -1, -1]))]  # fmt: skip
    for n, k, j in ((50, 3, 4), (1024, 7, 12), (205, 2, 9)):
        truth = rng.integers(0, k, n)
        cases += [(truth, rng.integers(0, j, n)), (truth, np.where(rng.random(n) < 0.8, truth, rng.integers(0, j, n)))]
    for truth, groups in cases:
        assert _adjusted_rand(truth, groups) == adjusted_rand_score(truth, groups)
    # the bootstrap's interval is scikit-learn's index on the same resamples
    truth, groups = cases[-1]
    interval, _ = ari_interval(groups, truth, seed=3, n_resamples=50)
    rows = np.random.default_rng(3).integers(0, len(truth), size=(50, len(truth)))
    values = [adjusted_rand_score(truth[r], groups[r]) for r in rows]
    assert (interval.low, interval.high) == (np.quantile(values, 0.025), np.quantile(values, 0.975))


def test_balanced_accuracy_agrees_with_scikit_learn_and_best_member_finds_the_lowest(rng: np.random.Generator) -> None:
    truth = rng.choice(["1", "2", "3"], size=200, p=[0.1, 0.3, 0.6])
    predicted = np.where(rng.random(200) < 0.7, truth, rng.choice(["1", "2", "3"], size=200))
    assert balanced_accuracy(truth, predicted) == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert best_member(np.array([3.0, 1.0, 2.0, 0.5]), np.array(["a", "b", "b", "c"]), "b") == 1
    assert best_member(np.array([1.0]), np.array(["a"]), "z") is None
    scored = transfer_scores(truth, predicted, {"1": 0, "2": 1, "3": 2}, seed=0, n_resamples=50)
    assert scored["accuracy"].estimate == pytest.approx((truth == predicted).mean())
    assert scored["balanced"].estimate == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert sum(scored["confusion"].values()) == 200


def test_the_handcrafted_network_keeps_its_label_on_large_samples() -> None:
    params = network_parameters(handcrafted_mode3_network(dtype="float64"))
    labels = mechanism_labels(params, "product")
    train = sample_fma(2000, "product", seed=1, dtype="float64")[0][None]
    rows = label_stability(params, labels, train, "product", sizes=[20_000], repeats=2, seed=0, n_resamples=50)
    assert labels.tolist() == ["3"] and rows[0].size == 20_000 and rows[0].changed.estimate == 0.0


def test_ridge_valley_split_measures_each_region_as_region_mse_does() -> None:
    mode3 = network_parameters(handcrafted_mode3_network(dtype="float64"))
    # two width-3 networks: the roof, plus a third unit that is silent (network 0) or a valley that is
    # off where m + a < 1 (network 1)
    pair = {
        "W_in": torch.zeros(2, 2, 3, dtype=torch.float64), "b_in": torch.zeros(2, 3, dtype=torch.float64),
        "W_out": torch.zeros(2, 3, 1, dtype=torch.float64), "b_out": mode3["b_out"].repeat(2, 1),
    }  # fmt: skip
    pair["W_in"][:, :, :2], pair["b_in"][:, :2], pair["W_out"][:, :2] = mode3["W_in"], mode3["b_in"], mode3["W_out"]
    pair["W_in"][:, :, 2] = torch.tensor([1.0, 1.0], dtype=torch.float64)
    pair["b_in"][:, 2] = -1.0
    pair["W_out"][1, 2, 0] = 0.3
    points = sample_fma(5000, "product", seed=2, dtype="float64")[0]
    split = ridge_valley_split(pair, 0, 1, points)
    off = (points @ torch.tensor([1.0, 1.0], dtype=torch.float64) - 1.0) <= 0
    assert split.valley_off_share == pytest.approx(float(off.double().mean()))
    inside, outside = region_mse(pair, points, off).T
    assert_allclose(split.mse_valley_off, inside)
    assert_allclose(split.mse_elsewhere, outside)
    assert split.mse_valley_off[0] == pytest.approx(split.mse_valley_off[1])  # the valley is off there: same function


def test_discovery_ari_grid_recovers_planted_groups_and_not_shuffled_ones():
    from physlens.probes.populations import discovery_ari_grid

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 22)) * 5
    truth = rng.integers(0, 3, size=150)
    fingerprints = centres[truth] + 0.1 * rng.normal(size=(150, 22))
    grid = discovery_ari_grid(fingerprints, {"truth": truth, "shuffled": rng.permutation(truth)}, n_subsets=5, random_states=(0,), max_groups=4)
    assert grid["truth"].shape == (5, 1)
    assert grid["truth"].min() > 0.5 and grid["truth"].mean() > 0.6
    assert np.abs(grid["shuffled"]).max() < 0.3
    with pytest.raises(ValueError, match="labellings"):
        discovery_ari_grid(fingerprints, {"short": truth[:10]})
    with pytest.raises(ValueError, match="n_subsets"):
        discovery_ari_grid(fingerprints[:12], {"t": truth[:12]}, n_subsets=5)
    one_restart = discovery_ari_grid(fingerprints, {"truth": truth}, n_subsets=5, random_states=(0, 1), max_groups=4, n_init=1)
    assert one_restart["truth"].shape == (5, 2) and one_restart["truth"].mean() > 0.6
    with pytest.raises(ValueError, match="n_init"):
        discovery_ari_grid(fingerprints, {"truth": truth}, n_init=0)
