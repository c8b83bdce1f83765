"""Training and rollout figures: panels, scales and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from physlens.plots import plot_loss_curve, plot_phase_space, plot_rollout_error


def test_loss_curve_draws_one_or_several_named_curves():
    single = plot_loss_curve([1.0, 0.1, 0.01])
    assert isinstance(single, Figure) and len(single.axes[0].lines) == 1
    assert single.axes[0].get_yscale() == "log" and single.axes[0].get_legend() is None
    several = plot_loss_curve({"a": torch.tensor([1.0, 0.5]), "b": [2.0, 1.0, 0.5]})
    assert [line.get_label() for line in several.axes[0].lines] == ["a", "b"]
    with pytest.raises(ValueError, match="non-empty 1-d"):
        plot_loss_curve([])
    with pytest.raises(ValueError, match=r"losses\['b'\]"):
        plot_loss_curve({"a": [1.0], "b": [[1.0]]})


def test_phase_space_has_one_panel_per_example_with_truth_and_model():
    true = torch.randn(6, 20, 2)
    fig = plot_phase_space(true, true + 0.1, n_examples=3)
    assert len(fig.axes) == 3
    x_true, _ = fig.axes[0].lines[0].get_data()
    np.testing.assert_allclose(x_true, true[0, :, 0].numpy())
    with pytest.raises(ValueError, match=r"\[traj, step, 2\]"):
        plot_phase_space(true, true[:, :5])


def test_rollout_error_plots_the_median_per_step():
    error = torch.tensor([[1e-3, 1e-2], [3e-3, 3e-2], [2e-3, 2e-2]])
    fig = plot_rollout_error({"model": error})
    _, median = fig.axes[0].lines[0].get_data()
    np.testing.assert_allclose(median, [2e-3, 2e-2])
    with pytest.raises(ValueError, match=r"\[traj, step\]"):
        plot_rollout_error(torch.zeros(3))


def test_rollout_error_axis_ignores_exact_zeros():
    import numpy as np

    from physlens.plots.training import plot_rollout_error

    exact = np.zeros((8, 20))
    exact[:, 5:] = 1e-15  # an exact reference: 0 at the first steps, round-off after
    model = np.full((8, 20), 1e-6)
    fig = plot_rollout_error({"oracle": exact, "model": model})
    low, high = fig.axes[0].get_ylim()
    assert low >= 1e-16 and high <= 1e-5  # set from the positive values, not dragged to ~1e-300 by the zeros
    all_zero = plot_rollout_error({"exact": np.zeros((4, 5)), "model": model[:4, :5]})
    assert "exactly 0 at every step" in all_zero.axes[0].get_legend().get_texts()[0].get_text()
