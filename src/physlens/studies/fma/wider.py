"""§8 of the F = m·a study: wider networks and two hidden layers, labelled by their creases where
they have labels and grouped by their function fingerprints everywhere."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from physlens.models.mlp import DeepEnsembleConfig, DeepMLPEnsemble
from physlens.probes.discovery import compare_groups, summarise_fingerprints
from physlens.probes.mechanisms import crease_labels, unit_states, unit_statistics
from physlens.probes.populations import ari_interval
from physlens.studies.fma.common import State, ci, cpu_params, discover, median_ci, take, train_networks
from physlens.systems.fma import fma_splits
from physlens.training.deep import train_deep_ensemble
from physlens.training.ensemble import EnsembleTrainConfig


def run(state: State) -> None:
    """§8: wider networks and two hidden layers."""
    clock, plane, report, wd = take(state, "clock", "plane", "report", "wd")
    report.heading("8. Wider networks and two hidden layers")
    report.paragraph(
        "Labels for one hidden layer of any width: constant (every unit dead), plane (no crease), or r·v· (the numbers of "
        "ridges and valleys). The discovery runs on the same function fingerprints as at width 2; for two hidden layers, "
        "where units have no such labels, each group is described by how its functions bend: the RMS of the second "
        "differences and the share that is concave."
    )
    wide_rows, wide_metrics = [], {}
    for width in wd["widths"]:
        row, wide_metrics[str(width)] = _one_layer(state, width)
        wide_rows.append(row)
        clock.lap(f"width {width}")
    row, deep_metrics = _two_layers(state)
    wide_rows.append(row)
    report.table(["networks", "count", "median val MSE [95% CI]", "best", "most common labels", "groups (BIC)",
                  "adjusted Rand vs labels", "largest groups: size: majority label, median val"], wide_rows)  # fmt: skip
    report.paragraph(f"Exact best plane on this distribution: {plane.mse:.2e}.")
    wide_metrics["deep"] = deep_metrics
    report.metrics["wider"] = wide_metrics
    clock.lap("two hidden layers")


def _one_layer(state: State, width: int) -> tuple[list[Any], dict[str, Any]]:
    """Train networks of one hidden layer of ``width`` units; label them by their creases and group them."""
    disc_opts, dist, lab, n_res, opts, progress, seed, seeds = take(
        state, "disc_opts", "dist", "lab", "n_res", "opts", "progress", "seed", "seeds")
    wide, _ = train_networks(seeds[f"width{width}"], opts, width=width, progress=progress)
    wide_params, wide_val = cpu_params(wide), wide.val_loss.numpy().astype(float)
    state.setdefault("wide", {})[f"width {width}"] = (wide_params, wide_val)
    wide_stats = unit_statistics(wide_params, dist)
    wide_classes = crease_labels(unit_states(wide_stats, tolerance=lab["tolerance"]), wide_stats)
    _, wide_disc = discover(wide_params, dist, disc_opts, seed)
    comparison = compare_groups(wide_disc.labels_, wide_classes)
    ari, control = ari_interval(wide_disc.labels_, wide_classes, seed, n_res)
    top = Counter(wide_classes.tolist()).most_common(4)
    row = [
        f"width {width}", len(wide_val), median_ci(wide_val, seed, n_res), float(wide_val.min()),
        ", ".join(f"{c} {k}" for c, k in top), wide_disc.n_groups_, f"{ci(ari)} (shuffled ≤ {control:.2f})",
        "; ".join(f"{int((wide_disc.labels_ == g).sum())}: {comparison.majority[g][0]}, {np.median(wide_val[wide_disc.labels_ == g]):.1e}"
                  for g in range(min(wide_disc.n_groups_, 4))),
    ]  # fmt: skip
    metrics = {"median_val": float(np.median(wide_val)), "best_val": float(wide_val.min()), "classes": dict(Counter(wide_classes.tolist())),
               "n_groups": wide_disc.n_groups_, "ari": ari.estimate}  # fmt: skip
    return row, metrics


def _two_layers(state: State) -> tuple[list[Any], dict[str, Any]]:
    """Train networks of two hidden layers, which have no labels: group them and say how their functions bend."""
    d, disc_opts, dist, n_res, progress, seed, seeds, t, wd = take(
        state, "d", "disc_opts", "dist", "n_res", "progress", "seed", "seeds", "t", "wd")
    deep_cfg = DeepEnsembleConfig(seeds=seeds["deep"], d_hidden=wd["deep_hidden"], dtype=d["dtype"], device=d["device"])
    deep_data = fma_splits(seeds["deep"], dist, n_train=d["n_train"], n_val=d["n_val"], dtype=d["dtype"])
    deep = train_deep_ensemble(DeepMLPEnsemble(deep_cfg), deep_data, EnsembleTrainConfig(epochs=t["epochs"], lr=t["lr"]), progress=progress)
    deep_val = deep.val_loss.numpy().astype(float)
    state.setdefault("wide", {})[f"hidden {'×'.join(map(str, wd['deep_hidden']))}"] = (deep.ensemble, deep_val)
    deep_fp, deep_disc = discover(deep.ensemble, dist, disc_opts, seed)
    summary = summarise_fingerprints(deep_fp)

    def concave(group: int) -> str:
        shares = summary.concave_share[deep_disc.labels_ == group]
        return f"{np.nanmedian(shares):.0%}" if np.isfinite(shares).any() else "— (no bend)"

    deep_groups = "; ".join(
        f"{int((deep_disc.labels_ == g).sum())}: val {np.median(deep_val[deep_disc.labels_ == g]):.1e}, bend "
        f"{np.median(summary.bend[deep_disc.labels_ == g]):.2f}, concave {concave(g)}"
        for g in range(min(deep_disc.n_groups_, 5))
    )
    row = [f"hidden {'×'.join(map(str, wd['deep_hidden']))}", len(deep_val), median_ci(deep_val, seed, n_res), float(deep_val.min()),
           "—", deep_disc.n_groups_, "—", deep_groups]  # fmt: skip
    metrics = {"hidden": wd["deep_hidden"], "median_val": float(np.median(deep_val)), "best_val": float(deep_val.min()), "n_groups": deep_disc.n_groups_}
    return row, metrics
