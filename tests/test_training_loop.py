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


class _GradientDescent:
    """A backend that takes its steps natively, a chunk at a time, on its own copy of ``w`` (as a kernel does)."""

    def __init__(self, w: torch.Tensor, A: torch.Tensor, b: torch.Tensor, chunk: int) -> None:
        self.w, self.own, self.A, self.b, self.chunk_steps = w, w.detach().clone(), A, b, chunk

    def run(self, start: int, stop: int) -> torch.Tensor:
        losses = []
        for _ in range(start, stop):
            err = self.A @ self.own - self.b
            losses.append(err.pow(2).mean())
            self.own -= 0.05 * 2 * self.A.T @ err / len(self.b)
        return torch.stack(losses)

    def apply(self) -> None:
        with torch.no_grad():
            self.w.copy_(self.own)


def test_a_chunked_backend_ends_where_one_step_per_chunk_does_and_reports_once_per_chunk() -> None:
    from physlens._progress import ProgressSink, reporting_progress
    from physlens.training.loop import LossCheck, SingleLossCheck, StepBackend, train_loop

    runs = []
    for chunk in (1, 7):
        w, A, b = _problem()
        backend, seen = _GradientDescent(w, A, b, chunk), []
        assert isinstance(backend, StepBackend) and isinstance(SingleLossCheck(DivergenceGuard()), LossCheck)
        recorded: list[torch.Tensor] = []
        with reporting_progress(ProgressSink(heartbeat=seen.append, heartbeat_interval=0.0)):
            run = train_loop(backend, steps=30, guard=SingleLossCheck(DivergenceGuard()), progress=False, desc="toy",
                             after_chunk=lambda start, stop, losses: recorded.append(losses),
                             final_loss=lambda: (A @ w - b).pow(2).mean())
        assert [line.split(",")[0] for line in seen] == [f"toy step {s}/30" for s in range(chunk, 30, chunk)] + ["toy step 30/30"]
        assert run.train_seconds >= 0 and run.train_cpu_seconds >= 0
        runs.append((w.detach().clone(), torch.cat(recorded), run.final_loss))
    (w1, losses1, final1), (w7, losses7, final7) = runs
    assert torch.equal(w1, w7) and torch.equal(losses1, losses7) and torch.equal(final1, final7)
    assert losses1.shape == (30,) and float(final1) < float(losses1[-1])


def test_train_loop_with_the_torch_step_is_optimise() -> None:
    from physlens.training.loop import OptimiserSteps, SingleLossCheck, train_loop

    w, A, b = _problem()
    expected = optimise([w], torch.optim.Adam([w], lr=0.05), lambda s: (A @ w - b).pow(2).mean(), steps=50, progress=False)
    w2, _, _ = _problem()
    steps = OptimiserSteps([w2], torch.optim.Adam([w2], lr=0.05), lambda s: (A @ w2 - b).pow(2).mean())
    losses: list[float] = []
    train_loop(steps, steps=50, guard=SingleLossCheck(DivergenceGuard()), progress=False,
               after_chunk=lambda start, stop, chunk: losses.extend(chunk.tolist()))
    assert losses == expected and torch.equal(w.detach(), w2.detach())


def test_the_member_check_names_every_diverged_member_after_the_last_step() -> None:
    from physlens.training._divergence import diverged_members
    from physlens.training.loop import MemberLossCheck, train_loop

    losses = torch.ones(12, 4, dtype=torch.float64)
    losses[5, 1] = float("nan")  # member 1 at step 5, in the second chunk
    losses[9:, 3] = 1e9  # member 3 from step 9
    final = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    final[2] = float("inf")  # member 2 only after the last step

    class Canned:
        chunk_steps = 4

        def run(self, start: int, stop: int) -> torch.Tensor:
            ran.append(start)
            return losses[start:stop]

        def apply(self) -> None:
            pass

    ran: list[int] = []
    check = MemberLossCheck(torch.zeros(4, dtype=torch.float64), lambda members, steps: f"members {members.tolist()} at {steps.tolist()}")
    with pytest.raises(TrainingDiverged, match=r"members \[1, 2, 3\] at \[5, 12, 9\]"):
        train_loop(Canned(), steps=12, guard=check, final_loss=lambda: final, progress=False)
    assert ran == [0, 4, 8]  # every chunk ran: the error names every member that diverged
    members, steps = diverged_members(torch.cat([losses, final[None]]), torch.ones(4, dtype=torch.float64))
    assert members.tolist() == [1, 2, 3] and steps.tolist() == [5, 12, 9]


def test_chunks_are_a_twentieth_of_the_run_or_what_the_backend_needs() -> None:
    from physlens.training.loop import PROGRESS_REPORTS, chunk_steps

    assert PROGRESS_REPORTS == 20
    assert (chunk_steps(4000), chunk_steps(4000, at_least=525), chunk_steps(5), chunk_steps(0)) == (200, 525, 1, 1)


def test_every_recipe_is_a_training_config_validated_in_one_place() -> None:
    from physlens.training import BottleneckTrainConfig, EnsembleTrainConfig, SiameseTrainConfig, TrainConfig
    from physlens.training.loop import FIELD_CHECKS, TrainingConfig

    for recipe in (TrainConfig, EnsembleTrainConfig, SiameseTrainConfig, BottleneckTrainConfig):
        assert issubclass(recipe, TrainingConfig)
    assert {"steps", "epochs", "lr", "seed", "batch_size"} <= set(FIELD_CHECKS)
    for make, message in [(lambda: TrainConfig(steps=0), "steps must be a positive integer"),
                          (lambda: EnsembleTrainConfig(epochs=0), "epochs must be a positive integer"),
                          (lambda: SiameseTrainConfig(lr=-1.0), "lr must be"),
                          (lambda: BottleneckTrainConfig(seed=-1), "seed must be a non-negative integer"),
                          (lambda: EnsembleTrainConfig(beta1=1.5), r"beta1 must be a number in \[0, 1\)"),
                          (lambda: BottleneckTrainConfig(query="first"), "query must be one of"),
                          (lambda: TrainConfig(min_lr=1.0), "min_lr must be in")]:
        with pytest.raises(ValueError, match=message):
            make()


def test_every_result_reads_its_loss_curve_the_same_way() -> None:
    from physlens.models.mlp import EnsembleConfig, MLPConfig, MLPEnsemble, TinyMLP
    from physlens.systems.fma import fma_split, fma_splits
    from physlens.training import EnsembleTrainConfig, SiameseTrainResult, TrainConfig, TrainResult, train_ensemble, train_mlp
    from physlens.training.loop import TrainingResult

    config = EnsembleTrainConfig(epochs=5, backend="eager")
    ensemble = train_ensemble(MLPEnsemble(EnsembleConfig(seeds=[0, 1])), fma_splits([0, 1], n_train=16, n_val=4), config,
                              progress=False)
    single = train_mlp(TinyMLP(MLPConfig()), fma_split(0, n_train=16, n_val=4), config)
    for result, shape in [(ensemble, (5, 2)), (single, (5,)), (TrainResult(config=TrainConfig(), losses=[2.0, 1.0]), (2,)),
                          (SiameseTrainResult(losses=[3.0]), (1,))]:
        assert isinstance(result, TrainingResult) and result.loss_curve.shape == shape
    assert torch.equal(ensemble.loss_curve, ensemble.train_loss)
    assert TrainResult(config=TrainConfig(), losses=[2.0, 1.0]).loss_curve.tolist() == [2.0, 1.0]
