"""The unit scan on networks whose units' roles are known (planted among dead, duplicated and
cancelling units, one and two hidden layers), its ablation check, and its refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from physlens.models.mlp import EnsembleConfig, MLPEnsemble
from physlens.probes.discovery import network_layers
from physlens.probes.mechanisms import handcrafted_mode3_network, network_parameters, unit_states
from physlens.probes.unit_scan import (
    MECHANISM_ROLES,
    UNIT_ROLES,
    UnitScan,
    ablation_check,
    ablation_checks,
    exact_unit_roles,
    planted_networks,
    role_scores,
    unit_roles,
)
from physlens.probes.unit_scan import _groups, _null_mse
from physlens.systems.fma import fma_splits, optimal_plane, sample_fma
from physlens.training.ensemble import EnsembleTrainConfig, train_ensemble


@pytest.mark.parametrize("width", [6, 12])
def test_planted_roles_are_found_exactly(width):
    params, truth = planted_networks(30, width, n_dead=1, n_duplicates=1, n_cancelling=1, seed=width)
    assert set(truth.ravel()) == set(UNIT_ROLES)
    found = unit_roles(params, n_points=2048)
    assert (found.roles[0] == truth).all()
    scores = role_scores(found.roles[0], truth)
    for role in (*UNIT_ROLES, "mechanism"):
        assert scores[role].precision.estimate == 1.0 and scores[role].recall.estimate == 1.0
        assert scores[role].false_positive_rate.estimate == 0.0
    # duplicates of the ridge are flagged redundant, and nothing else is
    assert (found.redundant[0] == (truth == "crease")).all()


def test_noisy_planted_networks_keep_high_power_and_few_false_positives():
    params, truth = planted_networks(60, 10, n_dead=2, n_duplicates=1, n_cancelling=1, noise=0.005, seed=7)
    scores = role_scores(unit_roles(params, n_points=2048).roles[0], truth)
    assert scores["mechanism"].recall.estimate == 1.0  # no unit the fit depends on is missed
    assert scores["dead"].recall.estimate == 1.0
    assert scores["crease"].false_positive_rate.estimate < 0.05  # a cancelling pair left unbalanced by the noise is a real crease
    assert scores["cancelling"].recall.estimate > 0.8


def test_the_answer_depends_on_the_network():
    # the same scan on networks of another mechanism: all units dead, or a plane, gives other roles
    dead = {"W_in": -torch.ones(1, 2, 4, dtype=torch.float64), "b_in": -torch.ones(1, 4, dtype=torch.float64),
            "W_out": torch.ones(1, 4, 1, dtype=torch.float64), "b_out": torch.zeros(1, 1, dtype=torch.float64)}
    assert unit_roles(dead).roles[0].tolist() == [["dead"] * 4]
    plane = {**dead, "W_in": torch.ones(1, 2, 4, dtype=torch.float64), "b_in": torch.ones(1, 4, dtype=torch.float64)}
    assert unit_roles(plane).roles[0].tolist() == [["linear"] * 4]


def test_two_hidden_layers():
    # layer 1: a planted width-6 network; layer 2: unit 0 carries its output (always positive, so linear),
    # unit 1 never fires, unit 2 fires but is read out with weight 0
    params, truth = planted_networks(5, 6, n_dead=1, n_duplicates=0, n_cancelling=1, seed=3)
    K = 10.0
    n = params["W_in"].shape[0]
    W2 = torch.zeros(n, 6, 3, dtype=torch.float64)
    W2[:, :, 0] = params["W_out"][..., 0]
    W2[:, :, 2] = params["W_out"][..., 0]
    b2 = torch.stack([params["b_out"][:, 0] + K, torch.full((n,), -50.0, dtype=torch.float64), params["b_out"][:, 0] + K], dim=1)
    W3 = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64).reshape(1, 3, 1).expand(n, 3, 1)
    layers = [(params["W_in"], params["b_in"]), (W2, b2), (W3, torch.full((n, 1), -K, dtype=torch.float64))]
    found = unit_roles(layers, n_points=2048)
    assert found.widths == (6, 3)
    assert (found.roles[0] == truth).all()
    assert found.roles[1].tolist() == [["linear", "dead", "dead"]] * n


def test_ablation_separates_the_mechanism_from_the_rest():
    params, truth = planted_networks(20, 8, n_dead=2, n_duplicates=1, n_cancelling=1, seed=11)
    check = ablation_check(params, unit_roles(params, n_points=2048), n_points=20_000, seed=5)
    assert np.allclose(check.without_rest, check.intact, rtol=1e-9)  # dead and cancelling units do no work
    assert np.allclose(check.without_random, check.intact[:, None], rtol=1e-9)  # nor does any random set of them
    assert (check.without_creases >= check.plane_mse).all()  # what is left is a plane
    assert (check.without_mechanism > check.constant_mse).all()
    assert check.passed().all() and (check.p_value() == 1 / (1 + 200)).all()


def _swap(roles, a, b):
    """The same scan result with the units of roles ``a`` and ``b`` exchanged: the scan given the wrong units."""
    return dataclasses.replace(roles, roles=[np.where(r == a, b, np.where(r == b, a, r)) for r in roles.roles])


def test_the_ablation_check_passes_true_roles_and_fails_wrong_units():
    # noisy planted networks: cancelling pairs no longer cancel exactly and some networks are worse than the
    # best plane, so the verdict rests on each network's own error
    params, truth = planted_networks(60, 8, n_dead=3, n_duplicates=1, n_cancelling=1, noise=0.005, seed=4)
    roles = dataclasses.replace(unit_roles(params, n_points=4096), roles=[truth])  # the planted truth, the scan's groups
    check = ablation_check(params, roles, n_points=20_000, seed=8)
    assert check.necessary().all() and check.others_unnecessary().all() and check.passed().all()
    assert (check.p_value() < 0.05).all()
    # the wrong units: dead units called creases cost nothing when removed, and the null then holds the real creases
    wrong = ablation_check(params, _swap(roles, "crease", "dead"), n_points=20_000, seed=8)
    assert not wrong.necessary().any() and not wrong.others_unnecessary().any() and not wrong.passed().any()
    # cancelling units called creases matter alone, but a random set of units outside the mechanism now holds
    # the real creases, so the others are not unnecessary
    swapped = ablation_check(params, _swap(roles, "crease", "cancelling"), n_points=20_000, seed=8)
    assert not swapped.passed().any()
    # the verdict is relative: the same networks with a tolerance above what the creases cost pass nothing
    assert not dataclasses.replace(check, rel_tolerance=np.sqrt(check.crease_ratio.max()) - 1 + 1e-9).necessary().any()


def test_the_null_is_exact_for_one_hidden_layer():
    # the quadratic form of one hidden layer against a forward pass: the same network, with a second hidden
    # layer of one always-positive unit that passes the output through (so removals go through the forward path)
    params, _ = planted_networks(6, 8, n_dead=2, n_duplicates=1, n_cancelling=1, noise=0.01, seed=2)
    n, K = params["W_in"].shape[0], 10.0
    shallow = network_layers(params)
    deep = [shallow[0], (params["W_out"], params["b_out"] + K), (torch.ones(n, 1, 1, dtype=torch.float64), torch.full((n, 1), -K, dtype=torch.float64))]
    points = sample_fma(2048, "product", seed=1, dtype="float64")[0]
    target = points[:, 0] * points[:, 1]
    masks = [np.random.default_rng(0).random((5, n, 8)) < 0.4]
    fast = _null_mse(shallow, points, target, masks)
    slow = _null_mse(deep, points, target, [*masks, np.zeros((5, n, 1), dtype=bool)])
    assert fast.shape == (5, n)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-15)


def _numpy_output(layers, points, remove=None, linearise=None):
    """Reference forward pass in NumPy: in hidden layer l, units remove[l] ([model, width]) set to 0 and
    units linearise[l] passed through without their ReLU."""
    hidden = np.broadcast_to(points.numpy(), (layers[0][0].shape[0], *points.shape))
    for index, (W, b) in enumerate(layers):
        pre = hidden @ W.numpy() + b.numpy()[:, None, :]
        if index == len(layers) - 1:
            return pre[..., 0]
        post = np.maximum(pre, 0)
        if linearise is not None and linearise[index] is not None:
            post = np.where(linearise[index][:, None, :], pre, post)
        if remove is not None and remove[index] is not None:
            post = np.where(remove[index][:, None, :], 0.0, post)
        hidden = post
    raise AssertionError("unreachable")


def _random_layers(rng: np.random.Generator, n_models: int, hidden: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Normal weights and biases of ``n_models`` networks with two inputs, these hidden widths and one output."""
    return [(torch.from_numpy(rng.normal(size=(n_models, fan_in, fan_out))), torch.from_numpy(rng.normal(size=(n_models, fan_out))))
            for fan_in, fan_out in zip([2, *hidden], [*hidden, 1])]


@pytest.mark.parametrize("hidden", [[5], [3, 4]])
def test_unit_roles_measures_what_removing_and_linearising_do(hidden):
    # every change unit_roles reports, against a NumPy forward pass with the unit (or its group) ablated;
    # planted duplicates and cancelling pairs make groups of more than one unit
    planted, _ = planted_networks(7, 8, n_dead=1, n_duplicates=1, n_cancelling=1, noise=0.01, seed=5)
    rng = np.random.default_rng(0)
    layers = network_layers(planted) if hidden == [5] else _random_layers(rng, 7, hidden)
    found = unit_roles(layers, n_points=512, seed=3)
    points = sample_fma(512, "product", seed=3, dtype="float64")[0]
    scale = optimal_plane("product").target_variance ** 0.5
    base = _numpy_output(layers, points)
    n_layers = len(layers) - 1
    for index in range(n_layers):
        width = layers[index][0].shape[2]
        for j in range(width):
            one = np.zeros((7, width), dtype=bool)
            one[:, j] = True
            group = found.group[index] == found.group[index][:, j : j + 1]
            for measured, kind, mask in ((found.removal_change, "remove", one), (found.group_removal_change, "remove", group),
                                         (found.group_linearisation_change, "linearise", group)):  # fmt: skip
                masks = [mask if layer == index else None for layer in range(n_layers)]
                output = _numpy_output(layers, points, **{kind: masks})
                expected = np.sqrt(np.mean((output - base) ** 2, axis=1)) / scale
                np.testing.assert_allclose(measured[index][:, j], expected, rtol=1e-9, atol=1e-12)


def test_groups_of_networks_with_and_without_shared_activations():
    # planted networks (a duplicated crease and a cancelling pair share activations) beside random ones (no two
    # units alike), in one batch: every change against a NumPy forward pass, and the groups against a plain loop
    planted, _ = planted_networks(5, 8, n_dead=2, n_duplicates=1, n_cancelling=1, noise=0.0, seed=3)
    rng = np.random.default_rng(5)
    params = {k: torch.cat([v, torch.from_numpy(rng.normal(size=v.shape))]) for k, v in planted.items()}
    layers = network_layers(params)
    found = unit_roles(params, n_points=512, seed=4)
    points = sample_fma(512, "product", seed=4, dtype="float64")[0]
    scale = optimal_plane("product").target_variance ** 0.5
    base = _numpy_output(layers, points)
    groups = found.group[0]
    assert (groups[:5] != np.arange(8)).any(1).all() and (groups[5:] == np.arange(8)).all()
    for j in range(8):
        one = np.zeros((10, 8), dtype=bool)
        one[:, j] = True
        group = groups == groups[:, j : j + 1]
        for measured, kind, mask in ((found.removal_change, "remove", one), (found.group_removal_change, "remove", group),
                                     (found.group_linearisation_change, "linearise", group)):  # fmt: skip
            expected = np.sqrt(np.mean((_numpy_output(layers, points, **{kind: [mask]}) - base) ** 2, axis=1)) / scale
            np.testing.assert_allclose(measured[0][:, j], expected, rtol=1e-9, atol=1e-12)
    # the grouping rule, unit by unit: a loud unit joins the first earlier loud unit whose activation it is proportional to
    post = torch.from_numpy(np.maximum(points.numpy() @ layers[0][0].numpy() + layers[0][1].numpy()[:, None, :], 0))
    post[7, :, 3] = 0.0  # a silent unit is a group of its own
    post[8, :, 5] = 2.5 * post[8, :, 1]  # a copy of an earlier unit joins its group
    norms = post.norm(dim=1).numpy()
    loud = norms > 1e-9 * norms.max(1, keepdims=True)
    expected = np.tile(np.arange(8), (10, 1))
    for m in range(10):
        for j in range(8):
            for k in range(j):
                a, b = post[m, :, j].numpy(), post[m, :, k].numpy()
                if loud[m, j] and loud[m, k] and a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= 0.999:
                    expected[m, j] = expected[m, k]
                    break
    np.testing.assert_array_equal(_groups(post, 0.999, 1e-9), expected)
    assert expected[8, 5] == 1 and expected[7, 3] == 3


def test_the_null_of_deeper_networks_is_one_forward_pass_per_draw():
    rng = np.random.default_rng(1)
    layers = [(torch.from_numpy(rng.normal(size=(9, a, b))), torch.from_numpy(rng.normal(size=(9, b)))) for a, b in ((2, 3), (3, 2), (2, 1))]
    points = sample_fma(1024, "product", seed=2, dtype="float64")[0]
    target = points[:, 0] * points[:, 1]
    masks = [rng.random((40, 9, 3)) < 0.3, rng.random((40, 9, 2)) < 0.3]  # few units, so draws repeat sets
    expected = np.stack([np.mean((_numpy_output(layers, points, remove=[m[d] for m in masks] + [None]) - target.numpy()) ** 2, axis=1)
                         for d in range(40)])  # fmt: skip
    np.testing.assert_allclose(_null_mse(layers, points, target, masks), expected, rtol=1e-12)


@pytest.mark.parametrize("hidden", [[8], [3, 4]])
def test_ablation_check_errors_are_numpy_forward_passes_and_shared_work_changes_nothing(hidden):
    # every error of the check against a NumPy forward pass with the units of each role removed (linear units
    # linearised for the rest), for several sets of roles of the same networks checked together and alone
    planted, truth = planted_networks(9, 8, n_dead=2, n_duplicates=1, n_cancelling=1, noise=0.01, seed=6)
    rng = np.random.default_rng(4)
    layers = network_layers(planted) if hidden == [8] else _random_layers(rng, 9, hidden)
    found = unit_roles(layers, n_points=1024, seed=2)
    shuffled = dataclasses.replace(found, roles=[np.stack([rng.permutation(row) for row in r]) for r in found.roles])
    together = ablation_checks(layers, [found, _swap(found, "crease", "dead"), shuffled], n_points=3000, n_draws=30, seed=7)
    points = sample_fma(3000, "product", seed=7, dtype="float64")[0]
    target = (points[:, 0] * points[:, 1]).numpy()

    def mse(**masks):
        return np.mean((_numpy_output(layers, points, **masks) - target) ** 2, axis=1)

    for roles, check in zip([found, _swap(found, "crease", "dead"), shuffled], together):
        alone = ablation_check(layers, roles, n_points=3000, n_draws=30, seed=7)
        for field in dataclasses.fields(check):
            np.testing.assert_array_equal(getattr(check, field.name), getattr(alone, field.name))
        kinds = lambda *names: [np.isin(r, names) for r in roles.roles] + [None]  # noqa: E731
        np.testing.assert_allclose(check.intact, mse(), rtol=1e-12)
        np.testing.assert_allclose(check.without_creases, mse(remove=kinds("crease")), rtol=1e-12)
        np.testing.assert_allclose(check.without_mechanism, mse(remove=kinds(*MECHANISM_ROLES)), rtol=1e-12)
        np.testing.assert_allclose(check.without_rest, mse(remove=kinds("dead", "cancelling"), linearise=kinds("linear")), rtol=1e-12)
    with pytest.raises(ValueError, match="roles were found on networks"):
        ablation_checks(layers, [found, unit_roles(planted_networks(4, 8, seed=1)[0], n_points=256)], n_points=256)


def test_trained_networks_and_the_ablation_check():
    seeds = list(range(12))
    ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds, d_hidden=6, dtype="float64"))
    data = fma_splits(seeds, "product", n_train=256, n_val=64, dtype="float64")
    train_ensemble(ensemble, data, EnsembleTrainConfig(epochs=400, lr=1e-2), progress=False)
    roles = unit_roles(ensemble, n_points=4096)
    check = ablation_check(ensemble, roles, n_points=20_000, seed=9)
    has_crease = (roles.roles[0] == "crease").any(1)
    assert has_crease.any()
    assert (check.without_creases[has_crease] >= check.plane_mse * 0.999).all()
    assert check.necessary()[has_crease].all() and not check.necessary()[~has_crease].any()
    # with one hidden layer, the scan's crease units agree with the exact quadrature states of each unit alone
    # wherever no two units share an activation
    exact = unit_states(ensemble).numpy()
    single = ~roles.redundant[0] & (roles.roles[0] != "cancelling")
    agree = (np.where(exact == 2, "crease", np.where(exact == 1, "linear", "dead")) == roles.roles[0])[single]
    assert agree.mean() > 0.9


def test_the_scan_is_calibrated_on_planted_networks_and_refuses_other_architectures():
    params, truth = planted_networks(20, 8, n_dead=2, n_duplicates=1, n_cancelling=1, noise=0.005, seed=2)
    scan = UnitScan(n_points=1024).fit(params, truth)
    assert scan.tolerance_ in scan.tolerances and max(scan.accuracy_.values()) == scan.accuracy_[scan.tolerance_]
    assert scan.roles(params).widths == (8,)
    other, _ = planted_networks(3, 6, seed=1)
    with pytest.raises(ValueError, match="hidden widths"):
        scan.roles(other)
    with pytest.raises(RuntimeError, match="not fitted"):
        UnitScan().roles(params)
    with pytest.raises(ValueError, match="truth"):
        UnitScan().fit(params, truth[:, :4])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="width must hold every planted unit"):
        planted_networks(2, 4, n_dead=1, n_duplicates=1, n_cancelling=1)
    with pytest.raises(ValueError, match="distribution"):
        unit_roles(planted_networks(1, 6)[0], "gaussian")
    with pytest.raises(ValueError, match="distribution"):
        UnitScan("gaussian")
    with pytest.raises(ValueError, match="base_roles"):
        planted_networks(2, 8, base=planted_networks(2, 6)[0], base_roles=np.array([["crease"] * 5] * 2))
    with pytest.raises(ValueError, match="predicted and truth"):
        role_scores(np.array([["dead"]]), np.array([["dead", "dead"]]))
    with pytest.raises(ValueError, match="noise"):
        planted_networks(1, 6, noise=-1.0)
    params, _ = planted_networks(2, 6)
    with pytest.raises(ValueError, match="roles were found"):
        ablation_check(planted_networks(2, 8)[0], unit_roles(params))
    for key, value in (("rel_tolerance", -0.1), ("quantile", 0.0), ("quantile", 1.5), ("n_draws", 0)):
        with pytest.raises(ValueError, match=key):
            ablation_check(params, unit_roles(params), **{key: value})


def test_planted_into_trained_networks_of_another_recipe():
    seeds = [3, 4, 5, 6]
    ensemble = MLPEnsemble(EnsembleConfig(seeds=seeds, d_hidden=2, dtype="float64", init_scale=3.0))
    train_ensemble(ensemble, fma_splits(seeds, "uniform", n_train=256, n_val=64, dtype="float64"), EnsembleTrainConfig(epochs=300, lr=1e-2), progress=False)
    base_roles = unit_roles(ensemble, "uniform", n_points=4096).roles[0]
    params, truth = planted_networks(4, 8, n_dead=1, n_duplicates=1, n_cancelling=1, seed=0, base=ensemble, base_roles=base_roles)
    found = unit_roles(params, "uniform", n_points=4096)
    assert (found.roles[0] == truth).mean() > 0.95
    assert set(MECHANISM_ROLES) <= set(UNIT_ROLES)


def test_rejudging_at_another_tolerance_is_the_same_as_scanning_at_it():
    params, _ = planted_networks(30, 8, n_dead=2, n_duplicates=1, n_cancelling=1, noise=0.02, seed=6)
    measured = unit_roles(params, n_points=1024, tolerance=0.01)
    for tolerance in (0.0, 0.04, 0.3):
        direct = unit_roles(params, n_points=1024, tolerance=tolerance)
        again = measured.at_tolerance(tolerance)
        assert all((a == d).all() for a, d in zip(again.roles, direct.roles))
        assert all((a == d).all() for a, d in zip(again.redundant, direct.redundant))
    # the answer depends on the tolerance: at a huge one every unit is dead
    assert (measured.at_tolerance(10.0).roles[0] == "dead").all()
    with pytest.raises(ValueError, match="tolerance"):
        measured.at_tolerance(-1.0)


def test_exact_roles_of_the_handcrafted_pair_and_of_a_silenced_unit():
    # the seed's hand-crafted mode-3 network: a ridge along the diagonal and a linear unit
    params = network_parameters(handcrafted_mode3_network(dtype="float64"))
    assert exact_unit_roles(params).tolist() == [["crease", "linear"]]
    silenced = dict(params, W_out=params["W_out"] * torch.tensor([0.0, 1.0], dtype=torch.float64)[:, None])
    assert exact_unit_roles(silenced).tolist() == [["dead", "linear"]]
    # at a tolerance larger than any change a unit can make, every unit does nothing
    assert exact_unit_roles(params, tolerance=100.0).tolist() == [["dead", "dead"]]


@pytest.mark.parametrize("hidden", [[8], [3, 2]])
def test_scans_in_blocks_of_networks_are_the_scans_of_all_networks_at_once(monkeypatch, hidden):
    # 7 networks: with room for 2 per block the last block holds one; each network is scanned on its own, so the
    # roles and groups must be the same and every change and MSE the same to round-off (a batch of one network may
    # take another matrix-product kernel) as with all networks in one block
    import physlens.probes.unit_scan as unit_scan

    planted, _ = planted_networks(7, 8, n_dead=1, n_duplicates=1, n_cancelling=1, noise=0.01, seed=5)  # groups of several units
    layers = network_layers(planted) if hidden == [8] else _random_layers(np.random.default_rng(4), 7, hidden)
    results = []
    for block_values in (1 << 30, 2 * 512 * max(hidden)):
        monkeypatch.setattr(unit_scan, "_BLOCK_VALUES", block_values)
        roles = unit_roles(layers, n_points=512, seed=0)
        wrong = dataclasses.replace(roles, roles=[np.where(r == "crease", "dead", "crease") for r in roles.roles])
        results.append((roles, ablation_checks(layers, [roles, wrong], n_points=512, n_draws=20, seed=1)))
    assert len(unit_scan._model_blocks(layers, 512)) == 4
    (one, one_checks), (blocked, blocked_checks) = results
    for field in ("roles", "group"):
        for a, b in zip(getattr(one, field), getattr(blocked, field)):
            np.testing.assert_array_equal(a, b)
    for field in ("removal_change", "group_removal_change", "group_linearisation_change"):
        for a, b in zip(getattr(one, field), getattr(blocked, field)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    for a, b in zip(one_checks, blocked_checks):
        np.testing.assert_array_equal(a.n_creases, b.n_creases)
        np.testing.assert_array_equal(a.passed(), b.passed())
        for field in ("intact", "without_creases", "without_mechanism", "without_rest", "without_random"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-12, atol=1e-15)
