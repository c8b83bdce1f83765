"""Steering along a probe direction: if a model reads ω0 from a direction, pushing along it changes the frequency.

A linear probe at one site (hook × position) gives a direction w with reading ŷ = w·a + b. Adding
α·w/‖w‖² to the activation moves that reading by exactly α. If the model uses the direction as its
estimate of ω0, its rollouts then oscillate at a shifted frequency, which is read off the rolled-out
states by in-context least squares (no labels). The same push along a random direction of equal
size is the control. A probe remembers the model it was fitted on, and steering another model with
it is refused.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from physlens._validation import check_choice, check_finite_float, check_nonnegative_int, check_positive_int
from physlens.probes.activations import capture_activations, check_hooks, model_device, model_dtype, position_axis
from physlens.probes.linear_probe import DEFAULT_ALPHAS, LinearProbe
from physlens.stats import Interval, bootstrap_interval
from physlens.systems.oscillator import Trajectories, fit_propagator, parameters_from_propagator
from physlens.training.rollouts import ResidualPush, last_position_step, rollout


def model_fingerprint(model: torch.nn.Module) -> str:
    """A SHA-256 digest of a model's class, parameter names, shapes, dtypes and values."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{list(data.shape)}:{data.dtype}".encode())
        digest.update(data.numpy().tobytes() if data.dtype != torch.bfloat16 else data.float().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class ProbeDirection:
    """A linear probe for ``target`` at one site, with the fingerprint of the model it was fitted on."""

    hook: str  # hook name of the site
    position: int  # position of the site (non-negative)
    target: str  # the label the probe reads
    coef: Tensor  # [d] probe weights w
    intercept: float  # probe intercept b
    cv_r2: float  # held-out R² of the probe (grouped cross-validation)
    fingerprint: str  # model_fingerprint of the model it was fitted on

    @property
    def unit_push(self) -> Tensor:
        """w/‖w‖²: the activation change that moves the probe's reading by 1."""
        return self.coef / self.coef.pow(2).sum()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (weights as a list)."""
        return {"hook": self.hook, "position": self.position, "target": self.target, "coef": self.coef.tolist(),
                "intercept": self.intercept, "cv_r2": self.cv_r2, "fingerprint": self.fingerprint}


def fit_probe_direction(
    model: torch.nn.Module,
    trajectories: Trajectories,
    hook: str,
    position: int,
    target: str,
    *,
    seq_len: int,
    n_folds: int = 5,
    seed: int = 0,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> ProbeDirection:
    """Fit a ridge probe for ``target`` at ``hook``, ``position`` on the first ``seq_len`` states of
    ``trajectories`` (folds by trajectory) and return its direction."""
    check_hooks(model, [hook])
    seq_len = check_positive_int("seq_len", seq_len)
    position = check_nonnegative_int("position", position)
    if position >= seq_len:
        raise ValueError(f"position must be < seq_len={seq_len}, got {position}")
    labels = trajectories.labels()
    if target not in labels:
        raise ValueError(f"target must be one of {sorted(labels)}, got {target!r}")
    label = labels[target]
    y = (label[:, position] if label.ndim == 2 else label).double().cpu().numpy()
    inputs = trajectories.states[:, :seq_len].to(device=model_device(model), dtype=model_dtype(model))
    activation = capture_activations(model, inputs, [hook], [position])[hook][:, 0]
    X = activation.reshape(len(activation), -1).double().cpu().numpy()
    probe = LinearProbe(alphas=alphas, n_folds=n_folds, seed=seed).fit(X, y, groups=np.arange(len(y)))
    coef = torch.as_tensor(probe.coef_, dtype=torch.float64)
    if float(coef.pow(2).sum()) == 0:
        raise ValueError(f"the probe for {target!r} at {hook} position {position} has zero weights: there is no direction to steer along")
    return ProbeDirection(hook, position, target, coef, float(probe.intercept_), float(probe.cv_r2_), model_fingerprint(model))


@dataclass
class SteeringResult:
    """Frequency of steered rollouts against the push α along the probe direction and a random one."""

    alphas: list[float]
    omega0_shift: np.ndarray  # [alpha, traj] ω0 read off the steered rollout minus the unsteered one
    control_shift: np.ndarray  # [alpha, traj] the same for a random direction of equal size
    slope: Interval  # median over trajectories of the per-trajectory slope dω0/dα, with a bootstrap interval
    control_slope: Interval  # the same for the random direction
    valid_fraction: float  # share of rollouts whose map is an underdamped rotation (a frequency exists)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: medians per α and the slopes."""
        return {
            "alphas": self.alphas,
            "median_omega0_shift": np.nanmedian(self.omega0_shift, axis=1).tolist(),
            "median_control_shift": np.nanmedian(self.control_shift, axis=1).tolist(),
            "slope": self.slope.to_dict(),
            "control_slope": self.control_slope.to_dict(),
            "valid_fraction": self.valid_fraction,
        }


def _steered_frequency(model: Any, direction: ProbeDirection, push: Tensor, contexts: Tensor, n_steps: int, dt: float,
                       every_position: bool) -> Tensor:
    resid_mid = re.fullmatch(r"blocks\.(\d+)\.hook_resid_mid", direction.hook)
    if resid_mid is not None and (every_position or direction.position < contexts.shape[1]):
        # at a block's resid_mid the unhooked rollout step adds the push itself, as the hook below would
        step = last_position_step(model, push=ResidualPush(int(resid_mid.group(1)), push.to(contexts).reshape(-1),
                                                           None if every_position else direction.position))
        if step is not None:
            return parameters_from_propagator(fit_propagator(rollout(step, contexts, n_steps).double().cpu()), dt)["omega0"]

    def add(activation: Tensor, hook: Any) -> Tensor:
        if position_axis(hook.name) != 1:
            raise ValueError(f"steering needs a hook with positions on axis 1, got {hook.name!r}")
        if activation.shape[1] <= direction.position:
            raise ValueError(f"the rollout window has {activation.shape[1]} positions; the probe sits at position {direction.position}")
        shape = activation.shape[2:]
        where = slice(None) if every_position else direction.position
        activation[:, where] += push.to(activation).reshape(shape)
        return activation

    with model.hooks(fwd_hooks=[(direction.hook, add)]):
        path = rollout(model, contexts, n_steps)
    return parameters_from_propagator(fit_propagator(path.double().cpu()), dt)["omega0"]


def steering_sweep(
    model: Any,
    direction: ProbeDirection,
    contexts: Trajectories,
    alphas: Sequence[float],
    *,
    n_steps: int = 20,
    positions: str = "probe",
    seed: int = 0,
    n_resamples: int = 2000,
) -> SteeringResult:
    """Roll the model out from ``contexts`` with α·w/‖w‖² added at the probe's hook, for every α,
    and measure the frequency of each rollout; a random direction of the same size is the control.

    ``positions="probe"`` pushes only at the probe's own position; ``"all"`` at every position of
    the window (the same direction, assumed to carry ω0 wherever the context has revealed it).
    Steer at a layer with computation after it: at the last layer's output the push can only add
    a constant to the prediction, never change the frequency the model computes.
    """
    check_choice("positions", positions, ("probe", "all"))
    if direction.fingerprint != model_fingerprint(model):
        raise ValueError(
            f"direction was fitted on another model (fingerprint {direction.fingerprint[:12]}…, this model "
            f"{model_fingerprint(model)[:12]}…): fit the probe on the model you steer"
        )
    alphas = [check_finite_float("alphas", a) for a in alphas]
    if len(alphas) < 2 or 0.0 not in alphas:
        raise ValueError(f"alphas must hold 0 (the unsteered reference) and at least one other push, got {alphas}")
    n_steps = check_positive_int("n_steps", n_steps)
    if n_steps < 3:
        raise ValueError(f"n_steps must be >= 3 to read a frequency off the rollout, got {n_steps}")
    generator = torch.Generator().manual_seed(check_nonnegative_int("seed", seed))
    push = direction.unit_push
    random = torch.randn(push.shape, generator=generator, dtype=torch.float64)
    random = random / torch.linalg.vector_norm(random) * torch.linalg.vector_norm(push)
    states = contexts.states.to(device=model_device(model), dtype=model_dtype(model))
    every = positions == "all"
    base = _steered_frequency(model, direction, 0 * push, states, n_steps, contexts.dt, every)

    def shifts(unit: Tensor) -> np.ndarray:
        # α = 0 adds zeros: that rollout is the base itself, so its shift is exactly 0 (NaN where the base has no frequency)
        return np.stack([(base - base if a == 0 else _steered_frequency(model, direction, a * unit, states, n_steps, contexts.dt, every)
                          - base).numpy() for a in alphas])

    shift, control = shifts(push), shifts(random)
    valid = np.isfinite(shift).all(axis=0) & np.isfinite(control).all(axis=0)
    if int(valid.sum()) < 2:
        raise ValueError("fewer than 2 steered rollouts stay underdamped rotations at every α: no frequency can be read; use smaller alphas")
    a = np.asarray(alphas)[:, None]

    def slopes(values: np.ndarray) -> np.ndarray:
        return (a * values[:, valid]).sum(axis=0) / (a**2).sum()

    slope = bootstrap_interval(slopes(shift), n_resamples=n_resamples, seed=seed)
    control_slope = bootstrap_interval(slopes(control), n_resamples=n_resamples, seed=seed)
    return SteeringResult(alphas, shift, control, slope, control_slope, float(valid.mean()))


__all__ = ["ProbeDirection", "SteeringResult", "fit_probe_direction", "model_fingerprint", "steering_sweep"]
