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


TINY = """
[study]
name = "fma_tiny"
kind = "fma"
seed = 1
threads = 1
[data]
n_train = 64
n_val = 32
[train]
n_seeds = 24
epochs = 60
lr = 0.01
snapshot_every = 20
[scan]
n_random = 20
n_estimators = 10
[widths]
widths = [3]
n_seeds = 12
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
    assert "Algorithm scan" in report and "Wider networks" in report
    assert sum(metrics["width2"]["counts"]["seed"].values()) == 24
    assert metrics["dynamics"]["snapshot_epochs"] == [0, 20, 40, 60]
    assert "3" in metrics["wider"]
    for name in ("preactivation_maps", "gallery", "mode_over_time", "loss_by_mode"):
        assert (out / "figures" / f"{name}.png").is_file()


def test_study_refuses_bad_specs(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text(TINY.replace("n_random = 20", "n_random = 20\nholdout_fraction = 1.5"))
    with pytest.raises(StudySpecError, match="holdout_fraction"):
        run_study(spec, output_root=tmp_path / "runs", progress=False)
    spec.write_text(TINY.replace("widths = [3]", "widths = [0]"))
    with pytest.raises(StudySpecError, match="widths"):
        run_study(spec, output_root=tmp_path / "runs", progress=False)
    spec.write_text(TINY.replace("snapshot_every = 20", "snapshot_every = 20\nthreads = 1"))
    with pytest.raises(StudySpecError, match="unknown keys"):  # threads belong to [study]
        run_study(spec, output_root=tmp_path / "runs", progress=False)
    spec.write_text(TINY.replace("lr = 0.01", "lr = 0.01\nmomentum = 0.9"))
    with pytest.raises(StudySpecError, match="unknown keys"):
        run_study(spec, output_root=tmp_path / "runs", progress=False)
