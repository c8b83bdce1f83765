"""§7 of the F = m·a study: the width-2 networks' mechanisms at every training snapshot."""

from __future__ import annotations

import numpy as np

from physlens.plots.fma import plot_mode_over_time
from physlens.probes.mechanisms import MODES, REFINEMENT_NAMES, mechanism_labels
from physlens.probes.populations import label_switches
from physlens.studies.fma.common import State, take


def run(state: State) -> None:
    """§7: mechanisms through training."""
    clock, dist, lab, n, params, report, result = take(state, "clock", "dist", "lab", "n", "params", "report", "result")
    epochs = result.snapshot_epochs
    snapshot_labels = np.stack([
        mechanism_labels({name: result.snapshots[name][k] for name in params}, dist, tolerance=lab['tolerance']) for k in range(len(epochs))
    ])  # fmt: skip
    dynamics = label_switches(snapshot_labels, epochs) if len(epochs) > 2 else None
    report.heading("7. Mechanisms during training")
    named = np.vectorize(REFINEMENT_NAMES.get)(snapshot_labels)
    report.figure("mode_over_time", plot_mode_over_time(epochs, named, modes=[REFINEMENT_NAMES[m] for m in MODES]),
                  "Share of networks per class of our refinement at every snapshot")
    if dynamics is not None:
        late = dynamics["last_switch"][dynamics["last_switch"] >= 0]
        report.bullets([
            f"{dynamics['n_switching']} of {n} networks change mechanism after epoch {epochs[1]}",
            "epoch of the last change: " + (f"median {int(np.median(late))}, 90% by {int(np.quantile(late, 0.9))}" if late.size else "none"),
        ])
        report.table([f"mechanism at epoch {epochs[1]}", f"at epoch {epochs[-1]}", "networks"],
                     [[REFINEMENT_NAMES[a], REFINEMENT_NAMES[b], c] for (a, b), c in dynamics["transitions"].most_common(10)])  # fmt: skip
        report.metrics["dynamics"] = {"snapshot_epochs": epochs, "n_switching": dynamics["n_switching"],
                                      "transitions": {f"{a}->{b}": c for (a, b), c in dynamics["transitions"].items()}}  # fmt: skip
    clock.lap("dynamics")

