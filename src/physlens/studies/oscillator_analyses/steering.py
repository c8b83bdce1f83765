"""The ``[analyses.steering]`` section: add a probe direction for the target to the residual stream and read
the frequency of the steered rollouts."""

from __future__ import annotations

from typing import Any

import numpy as np

from physlens.models.base import HookedModel
from physlens.plots.evidence import plot_steering
from physlens.probes.steering import fit_probe_direction, steering_sweep
from physlens.studies.oscillator_analyses.common import AnalysisContext, _check_positive, _check_varies, _error, _short_site, expand_hooks
from physlens.studies.report import format_number
from physlens.systems.oscillator import LABEL_NAMES, OscillatorSystem


def check(opts: dict[str, Any], model: HookedModel, system: OscillatorSystem, seq_len: int) -> None:
    """Check the ``[analyses.steering]`` options ``opts`` against ``model``, ``system`` and ``seq_len`` before any training."""
    _check_positive("steering", opts, ("n_trajectories", "n_probe_trajectories", "n_steps"))
    if opts["n_steps"] < 3:
        raise _error("steering", "n_steps", f"must be >= 3 to read a frequency off the rollout, got {opts['n_steps']}")
    alphas = opts["alphas"]
    if not isinstance(alphas, list) or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in alphas) or 0 not in alphas or len(alphas) < 2:
        raise _error("steering", "alphas", f"must be a list of numbers holding 0 and at least one push, got {alphas!r}")
    expand_hooks(model, opts["hooks"], "[analyses.steering] hooks")
    if not -seq_len <= opts["position"] < seq_len:
        raise _error("steering", "position", f"{opts['position']} is outside the {seq_len} positions of the context")
    if opts["positions"] not in ("probe", "all"):
        raise _error("steering", "positions", f"must be 'probe' (push at the probe's position) or 'all', got {opts['positions']!r}")
    if opts["target"] not in LABEL_NAMES:
        raise _error("steering", "target", f"must be a label from {list(LABEL_NAMES)}, got {opts['target']!r}")
    if opts["target"] in ("omega0", "Omega", "omega0_sq", "cos_Omega_dt"):
        _check_varies("steering", system, "omega0", 1e-9)


def run(ctx: AnalysisContext, opts: dict[str, Any]) -> None:
    """Steer along the fitted probe direction at every hook and add the table, figure and finding."""
    hooks = expand_hooks(ctx.model, opts["hooks"], "[analyses.steering] hooks")
    position = opts["position"] % ctx.seq_len
    target = opts["target"]
    train = ctx.sample("steering probe trajectories", opts["n_probe_trajectories"], ctx.seq_len)
    contexts = ctx.sample("steering contexts", opts["n_trajectories"], ctx.seq_len)
    alphas = [float(a) for a in opts["alphas"]]
    report = ctx.report
    report.heading(f"Intervention: steering along the {target} probe direction", level=3)
    report.paragraph(
        f"At each site a ridge probe for {target} gives a direction w; adding α·w/‖w‖² there moves the probe's reading by α "
        f"({'at the probe position only' if opts['positions'] == 'probe' else 'at every position'}). For every α the model rolls "
        f"out {opts['n_steps']} steps from {len(contexts)} contexts with the push applied at every step, and ω0 is read off the "
        "rollout by least squares. If the model used the direction as its ω0, the rollout's ω0 would move by about α. Control: a "
        "random direction of the same size. Slopes: median over trajectories of dω0/dα with a 95 % bootstrap interval. (At the "
        "last layer's output a push can only add a constant to the prediction: no computation follows it.)"
    )
    rows, results, best = [], {}, None
    for hook in hooks:
        site = (hook, position)
        direction = fit_probe_direction(ctx.model, train, hook, position, target, seq_len=ctx.seq_len, seed=ctx.stream("steering probe folds"))
        try:
            result = steering_sweep(ctx.model, direction, contexts, alphas, n_steps=opts["n_steps"], positions=opts["positions"],
                                    seed=ctx.stream("steering control direction"))
        except ValueError as error:  # no readable frequency in the steered or the randomly pushed rollouts
            rows.append([_short_site(site), direction.cv_r2, f"skipped: {error}", "", ""])
            results[f"{hook}@{position}"] = {"skipped": str(error), "direction": direction.to_dict()}
            continue
        rows.append([_short_site(site), direction.cv_r2, result.slope.format(), result.control_slope.format(),
                     f"{format_number(100 * result.valid_fraction)} %"])
        results[f"{hook}@{position}"] = {**result.to_dict(), "direction": direction.to_dict()}
        if best is None or abs(result.slope.estimate) > abs(best[1].slope.estimate):
            best = (site, result)
    report.table(["site", "probe R²", "slope dω0/dα [95 % CI]", "random direction", "rollouts with a readable frequency"], rows)
    ctx.metrics["steering"] = {"sites": results, "positions": opts["positions"], "target": target}
    if best is None:
        best_r2 = max(entry["direction"]["cv_r2"] for entry in results.values())
        pushes = [float(np.linalg.norm(entry["direction"]["coef"])) for entry in results.values()]
        why = (f" The probes there decode {target} poorly (best held-out R² {format_number(best_r2)}), and a push α·w/‖w‖² grows as "
               f"the probe's weights shrink (‖w/‖w‖²‖ up to {format_number(1 / max(min(pushes), 1e-300))}): such pushes say nothing "
               "about how the model uses a direction." if best_r2 < 0.5 else "")
        ctx.findings.append("Steering was skipped at every site: for fewer than 2 contexts did the steered and the randomly "
                            "pushed rollouts stay oscillations with a readable frequency at every α." + why)
        return
    site, result = best
    ctx.metrics["steering"]["largest"] = {"site": list(site), "slope": result.slope.to_dict(), "control_slope": result.control_slope.to_dict()}
    report.figure("steering", plot_steering(result, title=f"steering along the {target} direction at {_short_site(site)}"),
                  f"ω0 of steered rollouts minus the unsteered rollout against the push α, at the site with the largest slope ({_short_site(site)}).")
    slope, control = result.slope, result.control_slope
    if slope.low > 0.5:
        verdict = "the model reads this direction as its ω0"
    elif slope.low > 0 and slope.low > control.high:
        verdict = (f"the push moves the rollout's frequency in the right direction but by only {format_number(100 * slope.estimate)} % "
                   "of what reading the direction as ω0 would: the probe decodes ω0 far better than the model uses its direction")
    else:
        verdict = "the push changes the frequency no more than a random push of the same size: the probe decodes ω0 but the model does not use that direction"
    ctx.findings.append(
        f"Steering along the {target} probe direction at {len(hooks)} sites (position {position}): the largest effect, at "
        f"{_short_site(site)}, is dω0/dα = {slope.format()} against {control.format()} for a random direction — {verdict}."
    )
