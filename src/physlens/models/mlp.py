"""The tiny F = m·a network, Linear(2→h) → ReLU → Linear(h→1), alone and as a stacked ensemble.

:class:`TinyMLP` is one hooked network. :class:`MLPEnsemble` holds N of them as stacked tensors so
they can be trained together in one program; ``ensemble.member(i)`` gives network ``i`` back as a
standalone :class:`TinyMLP` with identical weights. :class:`DeepMLPEnsemble` stacks networks with
several hidden layers, and :func:`seed_recipe_start` rebuilds the seed's own starting point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor, nn

from physlens._validation import (
    check_finite,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    resolve_dtype,
)
from physlens.models.base import HookedModel, HookPoint, register_model
from physlens.systems.fma import INIT_STREAM, FmaSplit, seed_recipe_split, stream_seed

PARAM_NAMES = ("W_in", "b_in", "W_out", "b_out")
"""The parameters of one network: W_in [d_in, h], b_in [h], W_out [h, 1], b_out [1]."""


@dataclass
class MLPConfig:
    """Architecture of a :class:`TinyMLP`. Defaults give the seed's F = m·a network."""

    d_hidden: int = 2  # hidden ReLU units h
    d_in: int = 2  # inputs (m, a)
    seed: int = 0  # seed of the weight initialisation
    dtype: str = "float32"  # parameter dtype
    device: str = "cpu"  # where parameters live
    init_scale: float = 1.0  # multiplies the ±1/√fan_in bound of every initial weight and bias

    def __post_init__(self) -> None:
        check_positive_int("d_hidden", self.d_hidden)
        check_positive_int("d_in", self.d_in)
        check_nonnegative_int("seed", self.seed)
        check_positive_float("init_scale", self.init_scale)
        resolve_dtype(self.dtype)


def init_mlp_parameters(
    d_hidden: int,
    seed: int,
    *,
    d_in: int = 2,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    scale: float = 1.0,
) -> dict[str, Tensor]:
    """Fresh parameters of one network, drawn like ``torch.nn.Linear``'s default.

    Weights and biases are uniform in ±scale/√fan_in (fan_in = d_in for the hidden layer, d_hidden
    for the output layer; ``scale = 1`` is PyTorch's default), drawn in float64 from the seed's own
    init stream and then cast, so a seed gives the same network alone, inside an ensemble, and on
    any device.
    """
    d_hidden, d_in = check_positive_int("d_hidden", d_hidden), check_positive_int("d_in", d_in)
    scale = check_positive_float("scale", scale)
    generator = torch.Generator().manual_seed(stream_seed(seed, INIT_STREAM))

    def uniform(shape: tuple[int, ...], fan_in: int) -> Tensor:
        bound = scale / math.sqrt(fan_in)
        values = (2 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1) * bound
        return values.to(dtype=resolve_dtype(dtype), device=device)

    return {
        "W_in": uniform((d_in, d_hidden), d_in),
        "b_in": uniform((d_hidden,), d_in),
        "W_out": uniform((d_hidden, 1), d_hidden),
        "b_out": uniform((1,), d_hidden),
    }


def _check_inputs(inputs: Tensor, d_in: int, dtype: torch.dtype, meaning: str) -> None:
    if inputs.ndim < 2 or inputs.shape[-1] != d_in:
        raise ValueError(f"inputs must have shape {meaning}, got {list(inputs.shape)}")
    if inputs.dtype != dtype:
        raise ValueError(f"inputs must have the model's dtype {dtype}, got {inputs.dtype}")
    check_finite("inputs", inputs)


def _check_seeds(seeds: object) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or len(seeds) == 0:
        raise ValueError(f"seeds must be a non-empty list of non-negative integers, got {seeds!r}")
    return [check_nonnegative_int("seeds[i]", s) for s in seeds]


@register_model
class TinyMLP(HookedModel):
    """Linear(d_in→h) → ReLU → Linear(h→1): (m, a) → F, with hooks ``hook_pre`` and ``hook_post``."""

    config_class = MLPConfig

    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__(cfg)
        params = init_mlp_parameters(
            cfg.d_hidden, cfg.seed, d_in=cfg.d_in, dtype=cfg.dtype, device=cfg.device, scale=cfg.init_scale
        )
        self.W_in = nn.Parameter(params["W_in"])  # [d_in, h]
        self.b_in = nn.Parameter(params["b_in"])  # [h]
        self.W_out = nn.Parameter(params["W_out"])  # [h, 1]
        self.b_out = nn.Parameter(params["b_out"])  # [1]
        self.hook_pre = HookPoint()  # [batch, h]: hidden pre-activations
        self.hook_post = HookPoint()  # [batch, h]: after the ReLU
        self.setup()

    def forward(self, inputs: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch 1"]:
        """Predict F for every input row."""
        _check_inputs(inputs, self.cfg.d_in, self.W_in.dtype, f"[batch, {self.cfg.d_in}]")
        pre = self.hook_pre(inputs @ self.W_in + self.b_in)
        post = self.hook_post(torch.relu(pre))
        return post @ self.W_out + self.b_out

    def parameter_dict(self) -> dict[str, Tensor]:
        """The four parameter tensors, detached, by name (see :data:`PARAM_NAMES`)."""
        return {name: getattr(self, name).detach() for name in PARAM_NAMES}


@dataclass
class EnsembleConfig:
    """N networks of one architecture, one initialisation seed each."""

    seeds: list[int] = field(default_factory=lambda: [0])  # initialisation seed of each member
    d_hidden: int = 2  # hidden ReLU units h of every member
    d_in: int = 2  # inputs (m, a)
    dtype: str = "float32"  # parameter dtype
    device: str = "cpu"  # where parameters live
    init_scale: float = 1.0  # multiplies the ±1/√fan_in bound of every initial weight and bias

    def __post_init__(self) -> None:
        self.seeds = _check_seeds(self.seeds)
        check_positive_int("d_hidden", self.d_hidden)
        check_positive_int("d_in", self.d_in)
        check_positive_float("init_scale", self.init_scale)
        resolve_dtype(self.dtype)

    @property
    def n_models(self) -> int:
        """Number of member networks."""
        return len(self.seeds)


@register_model
class MLPEnsemble(HookedModel):
    """N tiny MLPs as stacked tensors: inputs ``[model, batch, d_in]`` → outputs ``[model, batch, 1]``.

    Member ``i`` is initialised exactly as ``TinyMLP(MLPConfig(seed=seeds[i]))``. Hooks carry a
    leading model axis: ``hook_pre`` / ``hook_post`` are ``[model, batch, h]``.
    """

    config_class = EnsembleConfig

    def __init__(self, cfg: EnsembleConfig) -> None:
        super().__init__(cfg)
        members = [
            init_mlp_parameters(cfg.d_hidden, s, d_in=cfg.d_in, dtype=cfg.dtype, device=cfg.device, scale=cfg.init_scale)
            for s in cfg.seeds
        ]
        self.W_in = nn.Parameter(torch.stack([m["W_in"] for m in members]))  # [model, d_in, h]
        self.b_in = nn.Parameter(torch.stack([m["b_in"] for m in members]))  # [model, h]
        self.W_out = nn.Parameter(torch.stack([m["W_out"] for m in members]))  # [model, h, 1]
        self.b_out = nn.Parameter(torch.stack([m["b_out"] for m in members]))  # [model, 1]
        self.hook_pre = HookPoint()  # [model, batch, h]
        self.hook_post = HookPoint()  # [model, batch, h]
        self.setup()

    @property
    def n_models(self) -> int:
        """Number of member networks."""
        return self.cfg.n_models

    def forward(self, inputs: Float[Tensor, "model batch d_in"]) -> Float[Tensor, "model batch 1"]:
        """Run member ``i`` on ``inputs[i]`` for every ``i``."""
        cfg = self.cfg
        _check_inputs(inputs, cfg.d_in, self.W_in.dtype, f"[model={cfg.n_models}, batch, {cfg.d_in}]")
        if inputs.ndim != 3 or inputs.shape[0] != cfg.n_models:
            raise ValueError(f"inputs must have shape [model={cfg.n_models}, batch, {cfg.d_in}], got {list(inputs.shape)}")
        pre = self.hook_pre(torch.baddbmm(self.b_in.unsqueeze(1), inputs, self.W_in))
        post = self.hook_post(torch.relu(pre))
        return torch.baddbmm(self.b_out.unsqueeze(1), post, self.W_out)

    def parameter_dict(self) -> dict[str, Tensor]:
        """The stacked parameter tensors, detached, by name (leading axis: model)."""
        return {name: getattr(self, name).detach() for name in PARAM_NAMES}

    def member(self, index: int) -> TinyMLP:
        """Member ``index`` as a standalone hooked :class:`TinyMLP` (a copy of its current weights)."""
        n = self.n_models
        if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
            raise ValueError(f"index must be an integer in [0, {n}), got {index!r}")
        cfg = self.cfg
        model = TinyMLP(
            MLPConfig(
                d_hidden=cfg.d_hidden, d_in=cfg.d_in, seed=cfg.seeds[index], dtype=cfg.dtype, device=cfg.device,
                init_scale=cfg.init_scale,
            )
        )
        with torch.no_grad():
            for name in PARAM_NAMES:
                getattr(model, name).copy_(getattr(self, name)[index])
        return model

    @classmethod
    def from_members(cls, models: Sequence[TinyMLP]) -> MLPEnsemble:
        """Stack standalone networks (same width, dtype and device) into an ensemble."""
        models = list(models)
        if not models or not all(isinstance(m, TinyMLP) for m in models):
            raise ValueError("models must be a non-empty sequence of TinyMLP networks")
        first = models[0].cfg
        for m in models[1:]:
            if (m.cfg.d_hidden, m.cfg.d_in, m.cfg.dtype, m.cfg.device) != (first.d_hidden, first.d_in, first.dtype, first.device):
                raise ValueError("all models must share d_hidden, d_in, dtype and device to be stacked")
        ensemble = cls(
            EnsembleConfig(
                seeds=[m.cfg.seed for m in models], d_hidden=first.d_hidden, d_in=first.d_in, dtype=first.dtype,
                device=first.device, init_scale=first.init_scale,
            )
        )
        with torch.no_grad():
            for name in PARAM_NAMES:
                getattr(ensemble, name).copy_(torch.stack([getattr(m, name).detach() for m in models]))
        return ensemble


def seed_recipe_start(seed: int) -> tuple[TinyMLP, FmaSplit]:
    """The seed's ``train.py`` starting point for ``seed``: its data split and its initial network.

    The seed seeds torch's global generator, draws its 10 000 points (see
    :func:`~physlens.systems.fma.seed_recipe_split`), then builds ``nn.Linear(2, 2)`` and
    ``nn.Linear(2, 1)``, whose default initialisation (``kaiming_uniform_(a=√5)`` for weights,
    U(±1/√fan_in) for biases) draws from the same generator. This replays those draws from a
    private generator, so the network and data are bit-identical to the seed's, in float32. Train
    the network with :func:`~physlens.training.train_mlp` for the seed's full recipe (Adam 1e-3,
    4000 full-batch epochs).
    """
    seed = check_nonnegative_int("seed", seed)
    generator = torch.Generator().manual_seed(seed)
    data = seed_recipe_split(seed, generator)
    layers = []
    for fan_in, fan_out in ((2, 2), (2, 1)):
        weight = torch.empty(fan_out, fan_in)  # nn.Linear's [out, in]
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        bias = torch.empty(fan_out)
        nn.init.uniform_(bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=generator)
        layers.append((weight, bias))
    model = TinyMLP(MLPConfig(d_hidden=2, seed=seed))
    with torch.no_grad():
        model.W_in.copy_(layers[0][0].T)
        model.b_in.copy_(layers[0][1])
        model.W_out.copy_(layers[1][0].T)
        model.b_out.copy_(layers[1][1])
    return model, data


# ------------------------------------------------------------------------- several hidden layers
@dataclass
class DeepEnsembleConfig:
    """N ReLU networks with several hidden layers, Linear(2→h₁) → ReLU → … → Linear(h_L→1)."""

    seeds: list[int] = field(default_factory=lambda: [0])  # initialisation seed of each member
    d_hidden: list[int] = field(default_factory=lambda: [2, 2])  # widths of the hidden layers, first to last
    d_in: int = 2  # inputs (m, a)
    dtype: str = "float32"  # parameter dtype
    device: str = "cpu"  # where parameters live
    init_scale: float = 1.0  # multiplies the ±1/√fan_in bound of every initial weight and bias

    def __post_init__(self) -> None:
        self.seeds = _check_seeds(self.seeds)
        if isinstance(self.d_hidden, (str, bytes)) or not isinstance(self.d_hidden, Sequence) or not self.d_hidden:
            raise ValueError(f"d_hidden must be a non-empty list of layer widths, got {self.d_hidden!r}")
        self.d_hidden = [check_positive_int("d_hidden[i]", h) for h in self.d_hidden]
        check_positive_int("d_in", self.d_in)
        check_positive_float("init_scale", self.init_scale)
        resolve_dtype(self.dtype)

    @property
    def n_models(self) -> int:
        """Number of member networks."""
        return len(self.seeds)

    @property
    def widths(self) -> list[int]:
        """Every layer's width, inputs to output: ``[d_in, *d_hidden, 1]``."""
        return [self.d_in, *self.d_hidden, 1]


def init_deep_parameters(
    widths: Sequence[int],
    seed: int,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    scale: float = 1.0,
) -> list[tuple[Tensor, Tensor]]:
    """Fresh ``(W [fan_in, fan_out], b [fan_out])`` of every layer, U(±scale/√fan_in) like ``nn.Linear``.

    Drawn in float64 from the seed's init stream, layer by layer (weights, then biases), then cast.
    """
    widths = [check_positive_int("widths[i]", w) for w in widths]
    if len(widths) < 2:
        raise ValueError(f"widths must list at least an input and an output width, got {widths}")
    scale = check_positive_float("scale", scale)
    generator = torch.Generator().manual_seed(stream_seed(seed, INIT_STREAM))
    layers = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        bound = scale / math.sqrt(fan_in)
        pair = [(2 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1) * bound for shape in ((fan_in, fan_out), (fan_out,))]
        layers.append(tuple(t.to(dtype=resolve_dtype(dtype), device=device) for t in pair))
    return layers


class DeepLayer(nn.Module):
    """One stacked layer of a :class:`DeepMLPEnsemble`: ``W`` ``[model, fan_in, fan_out]``, ``b`` ``[model, fan_out]``."""

    def __init__(self, W: Tensor, b: Tensor, relu: bool) -> None:
        super().__init__()
        self.W = nn.Parameter(W)  # [model, fan_in, fan_out]
        self.b = nn.Parameter(b)  # [model, fan_out]
        self.relu = relu
        self.hook_pre = HookPoint()  # [model, batch, fan_out]
        self.hook_post = HookPoint()  # [model, batch, fan_out]; equals hook_pre on the output layer

    def forward(self, x: Float[Tensor, "model batch fan_in"]) -> Float[Tensor, "model batch fan_out"]:
        """Apply the affine map (and the ReLU on hidden layers) member by member."""
        pre = self.hook_pre(torch.baddbmm(self.b.unsqueeze(1), x, self.W))
        return self.hook_post(torch.relu(pre) if self.relu else pre)


@register_model
class DeepMLPEnsemble(HookedModel):
    """N networks with several hidden ReLU layers as stacked tensors: ``[model, batch, d_in]`` → ``[model, batch, 1]``.

    Layer ``l`` is ``layers[l]`` with hooks ``layers.{l}.hook_pre`` / ``layers.{l}.hook_post``; the last
    layer is the linear read-out.
    """

    config_class = DeepEnsembleConfig

    def __init__(self, cfg: DeepEnsembleConfig) -> None:
        super().__init__(cfg)
        members = [init_deep_parameters(cfg.widths, s, dtype=cfg.dtype, device=cfg.device, scale=cfg.init_scale) for s in cfg.seeds]
        n_layers = len(cfg.widths) - 1
        self.layers = nn.ModuleList(
            DeepLayer(torch.stack([m[l][0] for m in members]), torch.stack([m[l][1] for m in members]), relu=l < n_layers - 1)
            for l in range(n_layers)
        )
        self.setup()

    @property
    def n_models(self) -> int:
        """Number of member networks."""
        return self.cfg.n_models

    def forward(self, inputs: Float[Tensor, "model batch d_in"]) -> Float[Tensor, "model batch 1"]:
        """Run member ``i`` on ``inputs[i]`` for every ``i``."""
        cfg = self.cfg
        _check_inputs(inputs, cfg.d_in, self.layers[0].W.dtype, f"[model={cfg.n_models}, batch, {cfg.d_in}]")
        if inputs.ndim != 3 or inputs.shape[0] != cfg.n_models:
            raise ValueError(f"inputs must have shape [model={cfg.n_models}, batch, {cfg.d_in}], got {list(inputs.shape)}")
        hidden = inputs
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden

    def layer_parameters(self) -> list[tuple[Tensor, Tensor]]:
        """``(W, b)`` of every layer, detached, with a leading model axis."""
        return [(layer.W.detach(), layer.b.detach()) for layer in self.layers]


__all__ = [
    "PARAM_NAMES",
    "DeepEnsembleConfig",
    "DeepLayer",
    "DeepMLPEnsemble",
    "EnsembleConfig",
    "MLPConfig",
    "MLPEnsemble",
    "TinyMLP",
    "init_deep_parameters",
    "init_mlp_parameters",
    "seed_recipe_start",
]
