"""F = m·a figures and the end-to-end study on a tiny spec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from physlens.models.mlp import EnsembleConfig, MLPEnsemble
from physlens.plots.fma import (
    plot_loss_by_mode,
    plot_mode_gallery,
    plot_mode_over_time,
    plot_preactivation_maps,
    plot_roc_curves,
)
from physlens.probes.mechanisms import handcrafted_mode3_network
from physlens.probes.scan import roc_auc
from physlens.studies import STUDY_KINDS, StudySpecError, run_study
from physlens.systems.fma import optimal_plane
from physlens.training.checkpoints import load_checkpoint


def test_figures_have_one_panel_per_item():
    ensemble = MLPEnsemble(EnsembleConfig(seeds=list(range(6))))
    labels = np.array(["1", "2", "2", "3", "other", "3"])
    fig = plot_preactivation_maps({"hand-crafted": handcrafted_mode3_network(), "random": ensemble.member(0)})
    assert isinstance(fig, Figure) and len(fig.axes) >= 2 * 3
    gallery = plot_mode_gallery(ensemble, labels, losses=np.linspace(0.01, 0.1, 6), modes=["1", "2", "3"], per_mode=2)
    titles = [ax.get_title() for ax in gallery.axes if ax.get_title()]
    assert sum("mode 2" in t for t in titles) == 2 and sum("mode 1" in t for t in titles) == 1
    roc = plot_roc_curves({"a": roc_auc([1.0, 2.0], [0.0])})
    assert "AUC 1.000" in roc.axes[0].get_legend().get_texts()[0].get_text()
    time_fig = plot_mode_over_time([0, 10, 20], np.array([["1", "2"], ["2", "2"], ["2", "3"]]))
    assert len(time_fig.axes[0].collections) == 3
    assert isinstance(plot_loss_by_mode(np.array([0.1, 0.2, 0.3]), np.array(["1", "2", "2"])), Figure)
    with pytest.raises(ValueError, match="labels must have one entry per network"):
        plot_mode_gallery(ensemble, labels[:3])
    with pytest.raises(ValueError, match="labels must have shape"):
        plot_mode_over_time([0, 1], np.array([["1"]]))
    with pytest.raises(ValueError, match="at least one"):
        plot_preactivation_maps({})


def test_gallery_and_maps_draw_each_units_kink_exactly_where_its_preactivation_is_zero():
    # two units whose zero lines cross the square [0, 2]² (m = 1 and m + a = 1.5) and one whose line misses it (a = 5)
    W_in = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]], dtype=torch.float64)
    params = {"W_in": W_in, "b_in": torch.tensor([[-1.0, -1.5, -5.0]], dtype=torch.float64),
              "W_out": torch.ones(1, 3, 1, dtype=torch.float64), "b_out": torch.zeros(1, 1, dtype=torch.float64)}  # fmt: skip
    gallery = plot_mode_gallery(params, np.array(["x"]), per_mode=1)
    maps = plot_preactivation_maps({"x": params})
    for lines in (gallery.axes[0].get_lines(), [line for ax in maps.axes[:3] for line in ax.get_lines()]):
        kinks = [np.stack(line.get_data(), axis=1) for line in lines if line.get_color() == "k"]
        assert len(kinks) == 2
        for ends in kinks:
            on_line = [np.isclose(ends[:, 0], 1.0).all(), np.allclose(ends.sum(1), 1.5)]
            assert sum(on_line) == 1  # both ends on one unit's zero line
            assert np.all((ends >= -1e-12) & (ends <= 2 + 1e-12)) and np.any(np.isclose(ends, 0) | np.isclose(ends, 2), axis=1).all()
    assert gallery.axes[0].get_xlim() == (0.0, 2.0) and gallery.axes[0].get_ylim() == (0.0, 2.0)


TINY = """
[study]
name = "fma_tiny"
kind = "fma"
seed = 1
threads = 1
[data]
n_train = 64
n_val = 64
[train]
n_seeds = 40
epochs = 300
lr = 0.01
snapshot_every = 100
[labels]
stability_sizes = [64, 256]
stability_repeats = 2
[seed_test]
positives = []
n_random = 30
[scan]
n_random = 20
n_estimators = 10
n_resamples = 20
[transfer]
n_seeds = 12
other_size_n_seeds = 8
other_size_n_train = 200
other_size_n_val = 50
init_scales = [0.5]
[discovery]
n_points = 32
max_groups = 4
[widths]
widths = [3]
n_seeds = 12
deep_n_seeds = 12
[units]
n_planted = 20
n_points = 512
"""


def test_study_runs_end_to_end_and_reports(tmp_path):
    assert STUDY_KINDS["fma"] == "physlens.studies.fma"
    spec = tmp_path / "fma_tiny.toml"
    spec.write_text(TINY)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = run_study(spec, output_root=tmp_path / "runs", progress=False)
        assert torch.get_num_threads() == 2  # the study's thread setting is undone afterwards
    finally:
        torch.set_num_threads(before)
    report = (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    for heading in ("1. Do the networks multiply?", "2. Mechanism labels", "3. The mechanisms", "4. Mechanisms found without labels",
                    "5. The seed's mode-3 score", "6. The algorithm scan", "7. Mechanisms during training", "8. Wider networks",
                    "9. Which units do the work"):
        assert heading in report, heading
    assert report.index("1. Do the networks multiply?") < report.index("2. Mechanism labels")  # the task check leads
    assert metrics["task"]["exact_plane"] == pytest.approx(optimal_plane("product").mse)
    assert sum(metrics["labels"]["counts"].values()) == 40
    assert sum(metrics["labels"]["seed_mode_counts"].values()) == 40  # the seed's modes, beside our refinement
    assert "seed's mode" in report and "our refinement" in report
    units = metrics["unit_scan"]
    assert units["tolerance"] in (0.01, 0.02, 0.04, 0.08)
    assert units["planted"]["no noise"]["mechanism"]["recall"] == 1.0
    ablation = units["ablation"]
    assert {"trained, width 3", "trained, hidden 2×2"} <= set(ablation)
    # the ablation check, calibrated: it passes the scan's (right) roles of planted networks and fails the wrong units
    assert ablation["planted (held out), the scan's roles"]["passed"] >= 0.9
    assert ablation["planted, wrong units: creases and dead units swapped"]["passed"] == 0.0
    assert set(metrics["labels"]["stability"]) == {"64", "256"}
    assert metrics["dynamics"]["snapshot_epochs"] == [0, 100, 200, 300]
    assert "3" in metrics["wider"] and "deep" in metrics["wider"]
    assert set(metrics["transfer"]) >= {"uniform inputs", "initialisation ×0.5"}
    for name in ("preactivation_maps", "gallery", "mode_over_time", "loss_by_mode", "discovery_gallery"):
        assert (out / "figures" / f"{name}.png").is_file()
    networks, metadata = load_checkpoint(out / "width2_networks")
    assert networks.n_models == 40 and len(metadata["labels"]) == 40


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("n_random = 20", "n_random = 20\nholdout_fraction = 1.5"), "holdout_fraction"),
        (("widths = [3]", "widths = [0]"), "widths"),
        (("deep_n_seeds = 12", "deep_n_seeds = 12\ndeep_hidden = [2]"), "deep_hidden"),
        (("snapshot_every = 100", "snapshot_every = 100\nthreads = 1"), "unknown keys"),  # threads belong to [study]
        (("lr = 0.01", "lr = 0.01\nmomentum = 0.9"), "unknown keys"),
        (("[widths]", "[width]"), "unknown sections"),
        (("init_scales = [0.5]", "init_scales = [0.0]"), "init_scales"),
        (("positives = []", "positives = [-3]"), "positives"),
        (("n_train = 64", "n_train = 64\ndistribution = 'normal'"), "distribution"),
        (("stability_repeats = 2", "stability_repeats = 2\ntolerance = 2.0"), "tolerance"),
        (("n_planted = 20", "n_planted = 20\nplanted_width = 4"), "planted_width"),
        (("n_planted = 20", "n_planted = 20\nnoise = -0.1"), "noise"),
    ],
)
def test_study_refuses_bad_specs_before_training(tmp_path, edit, message):
    spec = tmp_path / "bad.toml"
    spec.write_text(TINY.replace(*edit))
    with pytest.raises(StudySpecError, match=message):
        run_study(spec, output_root=tmp_path / "runs", progress=False)
