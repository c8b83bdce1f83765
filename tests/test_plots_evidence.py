"""The evidence figures draw the numbers of the results they are given, with their labels."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import torch
from numpy.testing import assert_allclose

from physlens.plots import plot_algorithm_comparison, plot_group_patching, plot_steering, plot_swap_test
from physlens.probes.algorithms import AlgorithmComparison
from physlens.stats import Interval

RNG = np.random.default_rng(np.random.SeedSequence(11))


def test_swap_figure_scatters_both_components_and_draws_the_fitted_slope():
    true = RNG.normal(size=(20, 2))
    result = SimpleNamespace(true_difference=true, model_difference=0.8 * true, slope=Interval(0.8, 0.7, 0.9, 0.95, 20))
    fig = plot_swap_test(result)
    ax = fig.axes[0]
    for c, points in enumerate(ax.collections):
        assert_allclose(points.get_offsets(), np.c_[true[:, c], 0.8 * true[:, c]])
    identity, fit = ax.lines
    assert_allclose(identity.get_ydata(), identity.get_xdata())
    assert_allclose(fit.get_ydata(), 0.8 * fit.get_xdata())
    assert ax.get_xlabel() == "true difference of next states" and ax.get_legend() is not None
    plt.close(fig)


def test_steering_figure_draws_the_median_shift_of_each_direction_and_the_identity():
    alphas = np.array([-0.5, 0.0, 0.5])
    shift, control = RNG.normal(size=(3, 9)), RNG.normal(size=(3, 9))
    fig = plot_steering(SimpleNamespace(alphas=alphas, omega0_shift=shift, control_shift=control), title="t")
    ax = fig.axes[0]
    probe, random, identity = ax.lines
    assert_allclose(probe.get_ydata(), np.median(shift, axis=1))
    assert_allclose(random.get_ydata(), np.median(control, axis=1))
    assert_allclose(identity.get_ydata(), alphas)
    assert ax.get_title() == "t" and ax.get_ylabel() == "ω0 of the rollout − unsteered"
    plt.close(fig)


def test_group_patching_figure_draws_each_groups_mean_recovery_per_layer():
    means = {"context": torch.tensor([1.0, 0.2, -0.1]), "last": torch.tensor([0.0, 0.5, 0.9])}
    result = SimpleNamespace(layers=[0, 1, 2], groups=list(means), site="resid_pre",
                             mean=means.__getitem__, stderr=lambda group: torch.full((3,), 0.05))
    fig = plot_group_patching(result)
    ax = fig.axes[0]
    assert len(ax.containers) == 2
    for container, group in zip(ax.containers, means):
        data_line = container.lines[0]
        assert_allclose(data_line.get_ydata(), means[group].numpy())
        assert_allclose(data_line.get_xdata(), [0, 1, 2])
    assert ax.get_xlabel() == "layer whose resid_pre is patched"
    plt.close(fig)


def test_algorithm_figure_draws_the_model_and_every_candidate_on_four_panels():
    ks = [2, 3, 4]
    series = {"a": np.array([0.1, 0.2, 0.3]), "b": np.array([0.3, 0.2, 0.1])}
    comparison = AlgorithmComparison(ks, 5, np.array([1e-3, 1e-2, 1e-1]), np.array([0.5, 0.4, 0.3]), series, series,
                                     series, series, n_trajectories=4)
    fig = plot_algorithm_comparison(comparison)
    one_step, rollout, shared, rollout_shared = fig.axes[:4]
    assert_allclose(one_step.lines[0].get_ydata(), [1e-3, 1e-2, 1e-1])
    assert_allclose(rollout.lines[0].get_ydata(), [0.5, 0.4, 0.3])
    assert_allclose(shared.lines[0].get_ydata(), series["a"])
    assert "after 5 rollout steps" in rollout.get_title()
    plt.close(fig)
