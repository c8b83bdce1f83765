"""The Ray backend: the same sweep as Ray tasks on an embedded two-CPU Ray gives the same table as
the trials run in this process, failures included, with every trial's files shipped back to the driver."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from physlens.sweeps import load_sweep, run_sweep

from test_sweeps import SWEEP, _science, _write

ray = pytest.importorskip("ray", reason="the ray extra is not installed")


@pytest.mark.slow  # starting Ray and its workers takes 10-30 s; CI runs the slow tests
def test_ray_sweep_matches_the_local_sweep(tmp_path):
    study = _write(tmp_path, SWEEP)
    local = run_sweep(load_sweep(study), output_root=tmp_path / "local", workers=0, progress=False)
    remote = run_sweep(load_sweep(study), output_root=tmp_path / "ray", backend="ray", workers=2, progress=False)
    assert not ray.is_initialized()  # the embedded Ray started for the sweep is shut down after it
    assert remote.n_finished == 2 and len(remote.failures) == 2
    assert all("seq_len must be <= the model's n_ctx" in error for error in remote.failures.values())
    pd.testing.assert_frame_equal(_science(remote.table), _science(local.table))
    for name in remote.table.loc[remote.table["status"] == "finished", "trial"]:
        run = remote.directory / "trials" / name
        assert {"report.md", "metrics.json", "study.toml", "trial.json", "figures", "checkpoints", "model"} <= {
            p.name for p in run.iterdir()}
        assert json.loads((run / "trial.json").read_text())["trial"] == name
