"""Training loops for invariant learners: a Siamese tower on Kepler orbits and a bottleneck network on
oscillator windows.

The Siamese tower learns from pairs of states: "same" pairs come from one orbit, "different" pairs
from two orbits drawn at random (the slides' protocol), or, with ``min_gap`` > 0, two orbits whose
angular momenta differ by at least that much, which tells the network which quantity separates them. A contrastive loss pulls same
pairs together and pushes different pairs at least ``margin`` apart in the latent, so the latent
has to be a conserved quantity of the orbit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from physlens._validation import (
    check_choice,
    check_finite_float,
    check_positive_float,
    check_positive_int,
)
from physlens.models.siamese import BottleneckNetwork, SiameseTower
from physlens.systems.central import OrbitTrajectories, angular_momentum
from physlens.systems.oscillator import OscillatorSystem, Trajectories, propagator
from physlens.training.loop import DivergenceGuard, TrainingConfig, TrainingResult, optimise


@dataclass
class StatePairs:
    """Pairs of orbit states with a same-orbit flag: ``first[i]``, ``second[i]`` and ``same[i]``."""

    first: Float[Tensor, "pair 4"]
    second: Float[Tensor, "pair 4"]
    same: Tensor  # [pair] bool

    def __len__(self) -> int:
        return self.first.shape[0]


def make_pairs(
    orbits: OrbitTrajectories,
    n_pairs: int,
    *,
    generator: torch.Generator,
    min_gap: float = 0.0,
    same_fraction: float = 0.5,
) -> StatePairs:
    """Draw ``n_pairs`` pairs of states from ``orbits``: a ``same_fraction`` of them from one orbit
    (two distinct stored states), the rest from two different orbits.

    With ``min_gap > 0`` a different pair must have |L_a − L_b| ≥ ``min_gap`` (redrawn until it does),
    which makes a latent that grows steadily with L the easiest way to separate the pairs. With
    ``min_gap = 0`` different pairs are a plain random permutation, as in the slides' test set.
    """
    n_pairs = check_positive_int("n_pairs", n_pairs)
    min_gap = check_finite_float("min_gap", min_gap)
    if min_gap < 0:
        raise ValueError(f"min_gap must be >= 0, got {min_gap}")
    same_fraction = check_finite_float("same_fraction", same_fraction)
    if not 0 <= same_fraction <= 1:
        raise ValueError(f"same_fraction must be in [0, 1], got {same_fraction}")
    n_orbits, n_steps = orbits.states.shape[:2]
    if n_orbits < 2 or n_steps < 2:
        raise ValueError(f"orbits must hold at least 2 orbits of at least 2 states, got {n_orbits} x {n_steps}")
    device = orbits.states.device

    def draw(high: int, size: int) -> Tensor:
        return torch.randint(high, (size,), generator=generator, device=generator.device).to(device)

    n_same = int(round(same_fraction * n_pairs))
    n_diff = n_pairs - n_same
    orbit_ang = angular_momentum(orbits.states[:, 0])
    # same pairs: one orbit, two distinct steps
    orbit_s = draw(n_orbits, n_same)
    step_a = draw(n_steps, n_same)
    step_b = (step_a + 1 + draw(n_steps - 1, n_same)) % n_steps
    # different pairs: two orbits, redrawn where they are equal or closer than min_gap in L
    orbit_a, orbit_b = draw(n_orbits, n_diff), draw(n_orbits, n_diff)
    for _ in range(100):
        bad = (orbit_a == orbit_b) | ((orbit_ang[orbit_a] - orbit_ang[orbit_b]).abs() < min_gap)
        if not bool(bad.any()):
            break
        orbit_b = torch.where(bad, draw(n_orbits, n_diff), orbit_b)
    else:
        raise ValueError(f"could not find different pairs with |ΔL| >= min_gap = {min_gap:g}; lower min_gap")
    first = torch.cat([orbits.states[orbit_s, step_a], orbits.states[orbit_a, draw(n_steps, n_diff)]])
    second = torch.cat([orbits.states[orbit_s, step_b], orbits.states[orbit_b, draw(n_steps, n_diff)]])
    same = torch.cat([torch.ones(n_same, dtype=torch.bool, device=device), torch.zeros(n_diff, dtype=torch.bool, device=device)])
    return StatePairs(first, second, same)


def contrastive_loss(distance: Float[Tensor, " pair"], same: Tensor, margin: float) -> Tensor:
    """Mean of d² over same pairs and max(0, margin − d)² over different pairs (Hadsell et al. 2006)."""
    pull = distance**2
    push = F.relu(margin - distance) ** 2
    return torch.where(same, pull, push).mean()


@dataclass
class SiameseTrainConfig(TrainingConfig):
    """How to train a :class:`~physlens.models.SiameseTower` on a fixed pool of orbits."""

    steps: int = 3000  # optimizer steps
    batch_size: int = 512  # pairs per step, drawn fresh from the pool
    lr: float = 1e-2  # AdamW learning rate (cosine-decayed to lr/100); smaller rates sit long on a plateau
    margin: float = 1.0  # latent distance different pairs are pushed beyond
    min_gap: float = 0.0  # different training pairs differ in L by at least this much; 0: random pairs, the slides' protocol
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    seed: int = 0  # seed of the pair draws

    def check_recipe(self) -> None:
        """Check ``min_gap`` and ``weight_decay`` (the rest is checked by :class:`~physlens.training.loop.TrainingConfig`)."""
        if check_finite_float("min_gap", self.min_gap) < 0:
            raise ValueError(f"min_gap must be >= 0, got {self.min_gap}")
        if check_finite_float("weight_decay", self.weight_decay) < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class SiameseTrainResult(TrainingResult):
    """Loss curve of a Siamese run and the latent-distance threshold for calling a pair "same"."""

    losses: list[float] = field(default_factory=list)
    threshold: float = 0.5  # pairs closer than this in the latent are called "same"


def train_siamese(
    model: SiameseTower, orbits: OrbitTrajectories, config: SiameseTrainConfig, *, progress: bool = True
) -> SiameseTrainResult:
    """Train ``model`` in place with the contrastive loss on pairs drawn from ``orbits`` every step.

    The decision threshold is half the margin, the midpoint between where the loss puts same
    pairs (0) and different pairs (≥ margin). Raises ``TrainingDiverged`` (a ``FloatingPointError``)
    if the loss stops being finite or rises far above its start.
    """
    if not isinstance(model, SiameseTower):
        raise TypeError(f"model must be a SiameseTower, got {type(model).__name__}")
    dtype = next(model.parameters()).dtype
    orbits = orbits.to(device=model.device, dtype=dtype)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps, eta_min=config.lr / 100)
    result = SiameseTrainResult(threshold=config.margin / 2)
    model.train()

    last: list = []  # the current step's pairs: the loss after the last update is checked on them again

    def step_loss(step: int) -> Tensor:
        pairs = make_pairs(orbits, config.batch_size, generator=generator, min_gap=config.min_gap)
        last[:] = [pairs]
        return contrastive_loss(model.pair_distance(pairs.first, pairs.second), pairs.same, config.margin)

    # reference: the first loss, or the margin² a collapsed latent costs each different pair
    guard = DivergenceGuard(what="Siamese training", hint=f"lower lr (now {config.lr:g})", target_scale=lambda: config.margin**2)
    optimise(list(model.parameters()), optimizer, step_loss, steps=config.steps, losses=result.losses, guard=guard,
             scheduler=schedule, progress=progress, desc="siamese",
             final_loss=lambda: contrastive_loss(model.pair_distance(last[0].first, last[0].second), last[0].same, config.margin))
    model.eval()
    return result


_ACTIVATION_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {"tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu, "silu": F.silu}


def train_siamese_towers(
    models: list[SiameseTower], orbits: OrbitTrajectories, configs: list[SiameseTrainConfig], *, progress: bool = True
) -> list[SiameseTrainResult]:
    """Train several towers of one architecture at once, each as :func:`train_siamese` would train it alone.

    Every tower keeps its own initialisation and draws its own pairs from its own ``configs[k].seed``;
    the weights of all towers are stacked and every step is one batched matrix product per layer.
    AdamW and the cosine schedule act element by element, and the summed loss gives each tower the
    gradient of its own loss, so tower k follows the trajectory :func:`train_siamese` gives it, up to
    floating-point summation order. The configs may differ only in ``seed``. Raises
    ``TrainingDiverged`` if any tower's loss stops being finite or rises far above its start.
    """
    if not models or len(models) != len(configs):
        raise ValueError(f"models and configs must be non-empty lists of one length, got {len(models)} and {len(configs)}")
    for model in models:
        if not isinstance(model, SiameseTower):
            raise TypeError(f"models must hold SiameseTowers, got {type(model).__name__}")
    shared = {key: value for key, value in vars(configs[0]).items() if key != "seed"}
    for k, config in enumerate(configs):
        if {key: value for key, value in vars(config).items() if key != "seed"} != shared:
            raise ValueError(f"configs must differ only in seed; configs[{k}] differs from configs[0] in "
                             f"{sorted(key for key in shared if getattr(config, key) != shared[key])}")  # fmt: skip
    cfg = models[0].cfg
    for k, model in enumerate(models):
        if {key: v for key, v in vars(model.cfg).items() if key != "seed"} != {key: v for key, v in vars(cfg).items() if key != "seed"}:
            raise ValueError(f"models must share one architecture; models[{k}] differs from models[0]")
    config, activation = configs[0], _ACTIVATION_FUNCTIONS[cfg.activation]
    dtype = next(models[0].parameters()).dtype
    orbits = orbits.to(device=models[0].device, dtype=dtype)
    # [tower, fan_in, fan_out] weights and [tower, 1, fan_out] biases, one leaf tensor per layer
    n_blocks = len(models[0].blocks)
    weights = [torch.stack([m.blocks[i].W.detach() for m in models]).requires_grad_() for i in range(n_blocks)]
    biases = [torch.stack([m.blocks[i].b.detach() for m in models]).unsqueeze(1).requires_grad_() for i in range(n_blocks)]
    W_out = torch.stack([m.W_out.detach() for m in models]).requires_grad_()
    b_out = torch.stack([m.b_out.detach() for m in models]).unsqueeze(1).requires_grad_()
    parameters = [*weights, *biases, W_out, b_out]
    generators = [torch.Generator().manual_seed(c.seed) for c in configs]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps, eta_min=config.lr / 100)
    results = [SiameseTrainResult(threshold=config.margin / 2) for _ in models]

    def step_loss(step: int) -> Tensor:
        pairs = [make_pairs(orbits, config.batch_size, generator=g, min_gap=config.min_gap) for g in generators]
        hidden = torch.stack([torch.cat([p.first, p.second]) for p in pairs])  # [tower, 2·pair, d_in]
        for W, b in zip(weights, biases):
            hidden = activation(torch.baddbmm(b, hidden, W))
        latent = torch.baddbmm(b_out, hidden, W_out)  # [tower, 2·pair, d_latent]
        n = len(pairs[0])
        distance = torch.linalg.vector_norm(latent[:, :n] - latent[:, n:], dim=-1)  # [tower, pair]
        losses = torch.stack([contrastive_loss(distance[k], p.same, config.margin) for k, p in enumerate(pairs)])
        for result, value in zip(results, losses.detach().tolist()):
            result.losses.append(value)
        worst = int(torch.argmax(torch.where(torch.isfinite(losses), losses, torch.inf)))
        # the guard watches the worst tower; the sum carries every tower's own gradient
        return losses.sum() - losses.sum().detach() + losses[worst].detach()

    guard = DivergenceGuard(what="Siamese training (batched towers)", hint=f"lower lr (now {config.lr:g})", target_scale=lambda: config.margin**2)
    optimise(parameters, optimizer, step_loss, steps=config.steps, guard=guard, scheduler=schedule, progress=progress, desc="siamese towers")
    with torch.no_grad():
        for k, model in enumerate(models):
            for i, block in enumerate(model.blocks):
                block.W.copy_(weights[i][k])
                block.b.copy_(biases[i][k, 0])
            model.W_out.copy_(W_out[k])
            model.b_out.copy_(b_out[k, 0])
            model.eval()
    return results


@torch.no_grad()
def pair_accuracy(model: SiameseTower, pairs: StatePairs, threshold: float) -> float:
    """Fraction of pairs classified correctly by "same iff latent distance < threshold"."""
    threshold = check_positive_float("threshold", threshold)
    dtype = next(model.parameters()).dtype
    distance = model.pair_distance(pairs.first.to(model.device, dtype), pairs.second.to(model.device, dtype))
    return float(((distance < threshold) == pairs.same.to(distance.device)).double().mean())


@torch.no_grad()
def best_threshold(model: SiameseTower, pairs: StatePairs) -> float:
    """The latent-distance threshold that classifies ``pairs`` best (choose it on training pairs,
    then report accuracy on held-out ones): the midpoint between consecutive sorted distances with
    the most correct calls."""
    dtype = next(model.parameters()).dtype
    distance = model.pair_distance(pairs.first.to(model.device, dtype), pairs.second.to(model.device, dtype))
    return _best_distance_threshold(distance.double().cpu(), pairs.same.cpu())


def _best_distance_threshold(distance: Tensor, same: Tensor) -> float:
    """The threshold on ``distance`` that calls the most pairs right ("same" below it)."""
    order = torch.argsort(distance)
    sorted_distance, same = distance[order], same[order].double()
    # threshold after the k smallest distances: k calls "same"; correct = same among them + different after
    correct = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(2 * same - 1, 0)]) + (1 - same).sum()
    k = int(torch.argmax(correct))
    if k == 0:
        return float(sorted_distance[0]) / 2 or 1e-12
    if k == len(sorted_distance):
        return float(sorted_distance[-1]) * 1.001 + 1e-12
    return float(0.5 * (sorted_distance[k - 1] + sorted_distance[k])) or 1e-12


@torch.no_grad()
def quantity_pair_accuracy(quantity: Callable[[Tensor], Tensor], fit_pairs: StatePairs, test_pairs: StatePairs) -> float:
    """The accuracy on ``test_pairs`` of a latent that is a known ``quantity`` of the state (e.g. the
    energy alone): "same" iff |q(a) − q(b)| is below the threshold that is best on ``fit_pairs``.

    The control that tells whether a pair accuracy can say which invariant a network learned: if
    another conserved quantity separates the same pairs as well, it cannot.
    """
    if not callable(quantity):
        raise TypeError(f"quantity must be a function of states [n, 4], got {type(quantity).__name__}")

    def distance(pairs: StatePairs) -> Tensor:
        first, second = (quantity(p.double()).reshape(-1) for p in (pairs.first, pairs.second))
        if first.shape[0] != len(pairs):
            raise ValueError(f"quantity must return one value per state, got {first.shape[0]} for {len(pairs)} states")
        return (first - second).abs().cpu()

    threshold = _best_distance_threshold(distance(fit_pairs), fit_pairs.same.cpu())
    return float(((distance(test_pairs) < threshold) == test_pairs.same.cpu()).double().mean())


BOTTLENECK_QUERIES = ("independent", "last")
"""What the bottleneck decoder is asked about: a fresh state of the same oscillator, or the window's last state."""


def oscillator_windows(
    trajectories: Trajectories,
    window: int,
    *,
    query: str = "independent",
    generator: torch.Generator | None = None,
) -> tuple[Float[Tensor, "batch d_in"], Float[Tensor, "batch 2"], Float[Tensor, "batch 2"]]:
    """Bottleneck data: the flattened window (x₀, p₀, …, x_{w−1}, p_{w−1}) of each trajectory, a
    query state for the decoder, and the target, the query's next state under that trajectory's
    (ω0, γ).

    ``query="independent"``: the query is a fresh state (the window of another, randomly chosen
    trajectory of the batch, at a random step) evolved with this trajectory's parameters, so the
    bottleneck must carry the oscillator's parameters. ``query="last"``: the query is the window's
    last state, and the bottleneck may carry a state-dependent quantity (the force) instead.
    """
    window = check_positive_int("window", window)
    check_choice("query", query, BOTTLENECK_QUERIES)
    if trajectories.n_steps < window + 1:
        raise ValueError(f"trajectories need at least window + 1 = {window + 1} steps, got {trajectories.n_steps}")
    states = trajectories.states
    n = len(trajectories)
    inputs = states[:, :window].reshape(n, 2 * window)
    if query == "last":
        return inputs, states[:, window - 1], states[:, window]
    if generator is None:
        raise ValueError("query='independent' draws random query states: pass a generator")
    donor = torch.randint(n, (n,), generator=generator, device=generator.device).to(states.device)
    step = torch.randint(window, (n,), generator=generator, device=generator.device).to(states.device)
    side = states[donor, step]
    kernel = propagator(trajectories.omega0.double(), trajectories.gamma.double(), trajectories.dt)  # [batch, 2, 2]
    target = torch.einsum("bij,bj->bi", kernel.to(states.device), side.double()).to(states.dtype)
    return inputs, side, target


@dataclass
class BottleneckTrainConfig(TrainingConfig):
    """How to train a :class:`~physlens.models.BottleneckNetwork` to predict the oscillator's next state."""

    steps: int = 3000  # optimizer steps
    batch_size: int = 512  # trajectories per step, drawn fresh every step
    window: int = 4  # states the encoder sees
    query: str = "independent"  # decoder query: "independent" (a fresh state) or "last" (the window's last)
    lr: float = 3e-3  # Adam learning rate (cosine-decayed to lr/100)
    seed: int = 0  # seed of the batch draws

    def check_recipe(self) -> None:
        """Check ``query`` (the rest is checked by :class:`~physlens.training.loop.TrainingConfig`)."""
        check_choice("query", self.query, BOTTLENECK_QUERIES)


def train_bottleneck(
    model: BottleneckNetwork, system: OscillatorSystem, config: BottleneckTrainConfig, *, progress: bool = True
) -> list[float]:
    """Train ``model`` in place on fresh windows from ``system``; returns the MSE loss per step.

    The model must take ``2·window`` inputs, a side input of 2 (the query state) and predict 2
    outputs (the query's next state); see :func:`oscillator_windows` for what the bottleneck must carry.
    Raises ``TrainingDiverged`` (a ``FloatingPointError``) if the loss stops being finite or rises far
    above its start.
    """
    if not isinstance(model, BottleneckNetwork):
        raise TypeError(f"model must be a BottleneckNetwork, got {type(model).__name__}")
    cfg = model.cfg
    if (cfg.d_in, cfg.d_side, cfg.d_out) != (2 * config.window, 2, 2):
        raise ValueError(
            f"model must have d_in = 2·window = {2 * config.window}, d_side = 2, d_out = 2 for next-state "
            f"training, got d_in = {cfg.d_in}, d_side = {cfg.d_side}, d_out = {cfg.d_out}"
        )
    dtype = next(model.parameters()).dtype
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps, eta_min=config.lr / 100)
    model.train()
    targets: list[Tensor] = []  # the current step's targets (the guard's zero-predictor loss reads the first)

    def step_loss(step: int) -> Tensor:
        batch = system.sample(config.batch_size, config.window + 1, generator=generator).to(model.device, dtype)
        inputs, side, target = oscillator_windows(batch, config.window, query=config.query, generator=generator)
        targets[:] = [target, inputs, side]
        return F.mse_loss(model(inputs, side), target)

    guard = DivergenceGuard(what="bottleneck training", hint=f"lower lr (now {config.lr:g})",
                            target_scale=lambda: float(targets[0].square().mean()))
    losses = optimise(list(model.parameters()), optimizer, step_loss, steps=config.steps, guard=guard, scheduler=schedule,
                      progress=progress, desc="bottleneck",
                      final_loss=lambda: F.mse_loss(model(targets[1], targets[2]), targets[0]))  # the last batch, after its update
    model.eval()
    return losses


__all__ = [
    "BOTTLENECK_QUERIES",
    "BottleneckTrainConfig",
    "SiameseTrainConfig",
    "SiameseTrainResult",
    "StatePairs",
    "best_threshold",
    "contrastive_loss",
    "make_pairs",
    "oscillator_windows",
    "pair_accuracy",
    "quantity_pair_accuracy",
    "train_bottleneck",
    "train_siamese",
    "train_siamese_towers",
]
