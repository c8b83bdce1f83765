"""§3 of the F = m·a study: every mechanism's loss, the two kinds of ridge + plane, the seed's own
networks rebuilt by its recipe, and where ridge+valley beats ridge + plane."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from physlens.models.mlp import MLPEnsemble, seed_recipe_start
from physlens.plots.fma import plot_loss_by_mode, plot_mode_gallery, plot_preactivation_maps
from physlens.probes.mechanisms import (
    MODES,
    REFINEMENT_NAMES,
    SEED_LABELS,
    SEED_MODES,
    handcrafted_mode3_network,
    mechanism_labels,
    network_formula,
    seed_mode_labels,
    unit_statistics,
)
from physlens.probes.populations import best_member, ridge_valley_split
from physlens.stats import proportion_interval
from physlens.studies.fma.common import State, median_ci, pct, take
from physlens.systems.fma import FmaSplit, sample_fma
from physlens.training.checkpoints import save_checkpoint
from physlens.training.ensemble import EnsembleTrainConfig, train_ensemble


def run(state: State) -> None:
    """§3: every mechanism's loss, ridge + plane's two kinds, the seed's networks and the ridge+valley split."""
    clock, d, dist, lab, labels, out_dir, plane, report, result, seed, val = take(
        state, "clock", "d", "dist", "lab", "labels", "out_dir", "plane", "report", "result", "seed", "val")
    report.heading("3. The mechanisms of width-2 networks and their losses")
    _loss_tables(state)
    eval_points = sample_fma(100_000, dist, seed=seed + 77, dtype="float64")[0]
    positives, positive_rows, handcrafted = _seed_networks(state, eval_points)
    _ridge_valley(state, eval_points)
    save_checkpoint(out_dir / "width2_networks", result.ensemble, metadata={
        "labels": labels.tolist(), "val_loss": val.tolist(), "distribution": dist, "tolerance": lab["tolerance"],
        "n_train": d["n_train"], "n_val": d["n_val"],
    })  # fmt: skip
    report.metrics["mechanisms"] = {
        mode: {"count": int((labels == mode).sum()), "median_val": float(np.median(val[labels == mode])), "best_val": float(val[labels == mode].min())}
        for mode in MODES if (labels == mode).any()
    }  # fmt: skip
    _figures(state, positives, handcrafted)
    clock.lap("mechanisms and figures")
    state.update(positive_rows=positive_rows, positives=positives)


def _loss_tables(state: State) -> None:
    """Validation losses by our refinement, by the seed's modes, and of ridge + plane by where its ridge runs."""
    classes, labels, n, n_res, plane, report, seed, seed_modes, val = take(
        state, "classes", "labels", "n", "n_res", "plane", "report", "seed", "seed_modes", "val")
    mech_rows = []
    for mode in MODES:
        chosen = val[labels == mode]
        if not chosen.size:
            continue
        who = f"ours, label {mode} (not the seed's mode {mode}: §2)" if mode in SEED_MODES else "ours (the seed did not name it)"
        mech_rows.append([
            REFINEMENT_NAMES[mode], who, f"{chosen.size} ({pct(proportion_interval(int(chosen.size), n))})", median_ci(chosen, seed, n_res),
            float(chosen.min()), float(np.median(chosen) / plane.mse),
        ])  # fmt: skip
    report.table(["our refinement", "named by", "networks", "median val MSE [95% CI]", "best val MSE", "median / exact best plane"], mech_rows)
    seed_rows = []
    for mode in SEED_LABELS:
        chosen = val[seed_modes == mode]
        if chosen.size:
            seed_rows.append([mode, chosen.size, median_ci(chosen, seed, n_res), float(chosen.min())])
    report.paragraph("The same networks by the seed's own modes (§2):")
    report.table(["seed's mode", "networks", "median val MSE [95% CI]", "best val MSE"], seed_rows)
    ridge_rows = []
    for orientation in ("along", "across", "oblique"):
        chosen = val[(labels == "3") & (np.char.endswith(classes, orientation))]
        if chosen.size:
            where = {"along": "along the diagonal", "across": "across the diagonal", "oblique": "oblique to the diagonal"}[orientation]
            ridge_rows.append([f"ridge + plane, ridge {where}", chosen.size, median_ci(chosen, seed, n_res), float(chosen.min())])
    report.paragraph(
        "Ridge + plane (our refinement: one ridge and one linear unit; the seed's mode 3 is one straddling and one mainly "
        "positive unit, and §2 shows how the two overlap) has two kinds, told apart by where the ridge runs: along the diagonal m = a (a roof, min of two mirror-image "
        "planes, as in the seed's hand-crafted and cleanest mode-3 networks) or across it (a crease that only cuts off the far tips of the product distribution, where "
        "one input is large). Most of its spread in loss is this split:"
    )
    report.table(["networks", "count", "median val MSE [95% CI]", "best"], ridge_rows)


def _seed_networks(state: State, eval_points: Tensor) -> tuple[list[Any], list[list[Any]], Any]:
    """The seed's mode-3 networks, rebuilt and trained by its own recipe, and its hand-crafted design."""
    clock, dist, lab, report, st = take(state, "clock", "dist", "lab", "report", "st")
    positives, positive_rows = [], []
    starts = [seed_recipe_start(s) for s in st["positives"]]
    # the seed's recipe (Adam 1e-3, 4000 full-batch epochs), whatever this study's [train] says, in the ensemble
    # kernel: each network gets what train_mlp, the seed's own loop, gives it, to float round-off
    if starts:
        fit = train_ensemble(MLPEnsemble.from_members([model for model, _ in starts]), FmaSplit.stack([split for _, split in starts]),
                             EnsembleTrainConfig(), progress=False)  # fmt: skip
    for i, s in enumerate(st["positives"]):
        model = fit.ensemble.member(i)
        label = mechanism_labels(model, dist, tolerance=lab['tolerance'])[0]
        u = unit_statistics(model, dist)
        positives.append(model)
        positive_rows.append([
            s, float(fit.val_loss[i]), seed_mode_labels(u)[0], REFINEMENT_NAMES[label], ", ".join(f"{f:.1%}" for f in u.firing_fraction[0]),
            ", ".join(f"{c:.3f}" for c in u.linearisation_change[0]), f"`{network_formula(model, digits=3)}`",
        ])  # fmt: skip
    clock.lap("seed's positives")
    handcrafted = handcrafted_mode3_network(dtype="float64")
    with torch.no_grad():
        hc_mse = float((handcrafted(eval_points)[:, 0] - eval_points[:, 0] * eval_points[:, 1]).square().mean())
    report.paragraph(
        "The seed's two mode-3 networks, rebuilt from its seeds by its own recipe (same random draws for data and "
        "initialisation, bit for bit; 8000 / 2000 points) and trained as it trained them (full-batch Adam 1e-3, 4000 epochs, "
        "in the ensemble kernel, which gives its loop's result to float round-off), and its hand-crafted design:"
    )
    report.table(
        ["seed", "val MSE", "seed's mode", "our refinement", "firing fraction per unit", "linearisation change per unit", "formula"],
        positive_rows + [["hand-crafted", hc_mse, seed_mode_labels(handcrafted, dist)[0],
                          REFINEMENT_NAMES[mechanism_labels(handcrafted, dist, tolerance=lab['tolerance'])[0]],
                          ", ".join(f"{f:.1%}" for f in unit_statistics(handcrafted, dist).firing_fraction[0]), "",
                          f"`{network_formula(handcrafted)}`"]],
    )  # fmt: skip
    return positives, positive_rows, handcrafted


def _ridge_valley(state: State, eval_points: Tensor) -> None:
    """What the seed missed: where the best ridge+valley network beats the best ridge + plane network."""
    dist, labels, n_res, params, plane, report, seed, val = take(state, "dist", "labels", "n_res", "params", "plane", "report", "seed", "val")
    best_rv = best_member(val, labels, "ridge+valley")
    best_3 = best_member(val, labels, "3")
    if best_rv is None or best_3 is None:
        return
    split = ridge_valley_split(params, best_3, best_rv, eval_points, dist)
    share, inside, outside = split.valley_off_share, split.mse_valley_off, split.mse_elsewhere
    outputs, target_mean = split.mean_output_valley_off, split.target_mean_valley_off
    rv_vals, m3_vals = val[labels == "ridge+valley"], val[labels == "3"]
    formula = network_formula({k: v[[best_rv]] for k, v in params.items()})
    report.paragraph(
        f"**What the seed missed: ridge+valley.** The lowest losses (best {val.min():.2e}) belong to networks whose two units "
        f"are both creases, with output weights of opposite sign. The best one computes `{formula}`: a ridge "
        f"{split.ridge_angle:.0f}° from the diagonal (the roof of ridge + plane) and a valley {split.valley_angle:.0f}° from it that is off on "
        f"{share:.0%} of the data, where m + a is small. There m·a averages {target_mean:.3f}, the best ridge + plane network "
        f"{outputs[0]:.3f} and the best ridge+valley network {outputs[1]:.3f}. m·a is a saddle: concave across the "
        "diagonal, which the ridge of min of two planes follows, and convex along it, which a ridge cannot follow and "
        "a valley can. MSE where the "
        f"valley is off: ridge + plane {inside[0]:.2e}, ridge+valley {inside[1]:.2e}; elsewhere {outside[0]:.2e} and "
        f"{outside[1]:.2e} — {split.gap_share_valley_off:.0%} of the gap between the two best networks comes from "
        f"the {share:.0%} near the origin. Median validation MSE: ridge+valley {median_ci(rv_vals, seed, n_res)}, ridge + plane "
        f"{median_ci(m3_vals, seed, n_res)}, exact best plane {plane.mse:.2e}."
    )
    report.metrics["ridge_valley"] = {
        "best_formula": str(formula), "valley_off_share": share, "mse_valley_off": {"mode3": float(inside[0]), "ridge+valley": float(inside[1])},
        "mse_elsewhere": {"mode3": float(outside[0]), "ridge+valley": float(outside[1])},
    }  # fmt: skip


def _figures(state: State, positives: list[Any], handcrafted: Any) -> None:
    """Loss per mechanism, pre-activation maps of the best networks and the seed's, and the gallery."""
    data, dist, labels, params, plane, report, st, val = take(state, "data", "dist", "labels", "params", "plane", "report", "st", "val")
    report.figure("loss_by_mode", plot_loss_by_mode(val, np.vectorize(REFINEMENT_NAMES.get)(labels), modes=[REFINEMENT_NAMES[m] for m in MODES], references={"exact best plane": plane.mse, "best constant": plane.target_variance}),
                  "Validation MSE per mechanism, with the exact best plane and constant on the same distribution")  # fmt: skip
    examples: dict[str, Any] = {}
    for mode in MODES:
        best = best_member(val, labels, mode)
        if best is not None and mode != "1":
            examples[f"{REFINEMENT_NAMES[mode]} (#{best})"] = {name: value[best] for name, value in params.items()}
    examples |= {f"seed {s}": m for s, m in zip(st["positives"], positives)} | {"hand-crafted": handcrafted}
    report.figure("preactivation_maps", plot_preactivation_maps(examples, distribution=dist, inputs=data.train_inputs[0]),
                  "Each unit's pre-activation (black: its zero line) and the output, for the best network of each mechanism, the seed's two networks and its hand-crafted design")  # fmt: skip
    report.figure("gallery", plot_mode_gallery(params, np.vectorize(REFINEMENT_NAMES.get)(labels), losses=val, row_name="class",
                                               modes=[REFINEMENT_NAMES[m] for m in MODES if (labels == m).any()], distribution=dist),
                  "The best networks of each mechanism: error F̂ − m·a on the data's support, and the units' creases")  # fmt: skip
