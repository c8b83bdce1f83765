"""The one optimisation loop: it steps as torch's optimiser does, stops diverged runs, and resumes."""

from __future__ import annotations

import pytest
import torch
from numpy.testing import assert_allclose

from physlens.training import TrainingDiverged
from physlens.training.loop import DivergenceGuard, optimise


def _problem(seed: int = 0) -> tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    A = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    b = torch.randn(20, generator=generator, dtype=torch.float64)
    return torch.nn.Parameter(torch.zeros(3, dtype=torch.float64)), A, b


def test_steps_equal_a_hand_written_loop_and_reach_least_squares() -> None:
    w, A, b = _problem()
    optimizer = torch.optim.Adam([w], lr=0.05)
    losses = optimise([w], optimizer, lambda step: (A @ w - b).pow(2).mean(), steps=3000, progress=False)
    reference = torch.linalg.lstsq(A, b[:, None]).solution[:, 0]  # the exact optimum
    assert_allclose(w.detach(), reference, atol=1e-6)
    w2, _, _ = _problem()
    optimizer2 = torch.optim.Adam([w2], lr=0.05)
    hand = []
    for _ in range(3000):
        loss = (A @ w2 - b).pow(2).mean()
        hand.append(float(loss.detach()))
        optimizer2.zero_grad()
        loss.backward()
        optimizer2.step()
    assert losses == hand
    assert torch.equal(w.detach(), w2.detach())


def test_callbacks_run_in_order_and_a_resumed_run_ends_where_an_uninterrupted_one_does() -> None:
    w, A, b = _problem()
    calls = []
    optimise([w], torch.optim.SGD([w], lr=0.01), lambda s: (A @ w - b).pow(2).mean(), steps=3, progress=False,
             before_step=lambda s: calls.append(("before", s)), after_step=lambda s, v: calls.append(("after", s)))
    assert calls == [("before", 0), ("after", 0), ("before", 1), ("after", 1), ("before", 2), ("after", 2)]
    w_full, _, _ = _problem()
    full = optimise([w_full], torch.optim.SGD([w_full], lr=0.01), lambda s: (A @ w_full - b).pow(2).mean(), steps=10, progress=False)
    w_part, _, _ = _problem()
    optimizer = torch.optim.SGD([w_part], lr=0.01)
    part = optimise([w_part], optimizer, lambda s: (A @ w_part - b).pow(2).mean(), steps=4, progress=False)
    resumed = optimise([w_part], optimizer, lambda s: (A @ w_part - b).pow(2).mean(), steps=10, start_step=4, losses=part,
                       progress=False)
    assert resumed == full and torch.equal(w_part.detach(), w_full.detach())


def test_a_blow_up_is_stopped_with_the_guards_words() -> None:
    w, A, b = _problem()
    guard = DivergenceGuard(what="toy training", hint="lower lr")
    with pytest.raises(TrainingDiverged, match="toy training diverged.*lower lr"):
        optimise([w], torch.optim.SGD([w], lr=10.0), lambda s: (A @ w - b).pow(2).mean(), steps=200, guard=guard, progress=False)
    w, A, b = _problem()
    with pytest.raises(TrainingDiverged, match="became nan"):
        optimise([w], torch.optim.SGD([w], lr=0.01), lambda s: (A @ w - b).pow(2).mean() * float("nan"), steps=2, progress=False)


def test_gradient_clipping_bounds_the_step() -> None:
    w, A, b = _problem()
    optimise([w], torch.optim.SGD([w], lr=1.0), lambda s: 1e6 * (A @ w - b).pow(2).mean(), steps=1, grad_clip=0.5, progress=False)
    assert float(w.detach().norm()) == pytest.approx(0.5)


def test_bad_counts_are_named() -> None:
    w, A, b = _problem()
    with pytest.raises(ValueError, match="steps"):
        optimise([w], torch.optim.SGD([w], lr=0.1), lambda s: w.sum(), steps=-1)
    with pytest.raises(ValueError, match="log_every"):
        optimise([w], torch.optim.SGD([w], lr=0.1), lambda s: w.sum(), steps=1, log_every=0)
