"""Networks whose interesting quantity sits in one small, hooked place: a Siamese tower's latent and
a one-neuron bottleneck.

:class:`SiameseTower` maps one state to a small latent; two states are "on the same trajectory" when
their latents are close, so a trained tower's latent is a conserved quantity (the slides' L).
:class:`BottleneckNetwork` squeezes its input through ``d_bottleneck`` (default one) neurons before
decoding, so whatever the task needs must pass through ``hook_bottleneck``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from physlens._validation import check_choice, check_finite, check_nonnegative_int, check_positive_int, resolve_dtype
from physlens.models.base import HookedModel, HookPoint, register_model

ACTIVATIONS = ("tanh", "relu", "gelu", "silu")
"""Hidden-layer nonlinearities the MLP stacks accept."""


def _activation(name: str) -> nn.Module:
    return {"tanh": nn.Tanh(), "relu": nn.ReLU(), "gelu": nn.GELU(), "silu": nn.SiLU()}[name]


class HiddenLayer(nn.Module):
    """Linear → nonlinearity, hooked before (``hook_pre``) and after (``hook_post``) the nonlinearity."""

    def __init__(self, d_in: int, d_out: int, activation: str, generator: torch.Generator, dtype: torch.dtype, device: str) -> None:
        super().__init__()
        self.W = _init((d_in, d_out), generator, dtype, device)
        self.b = nn.Parameter(torch.zeros(d_out, dtype=dtype, device=device))
        self.act = _activation(activation)
        self.hook_pre = HookPoint()  # [batch, d_out]
        self.hook_post = HookPoint()  # [batch, d_out]

    def forward(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_out"]:
        """Apply the layer."""
        return self.hook_post(self.act(self.hook_pre(x @ self.W + self.b)))


def _init(shape: tuple[int, int], generator: torch.Generator, dtype: torch.dtype, device: str) -> nn.Parameter:
    # PyTorch's default Linear scale, U(−1/√fan_in, 1/√fan_in), drawn from our own generator.
    bound = 1 / math.sqrt(shape[0])
    weights = (2 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1) * bound
    return nn.Parameter(weights.to(dtype=dtype, device=device))


def _stack(d_in: int, d_hidden: int, n_layers: int, activation: str, generator: torch.Generator, dtype: torch.dtype, device: str) -> tuple[nn.ModuleList, int]:
    layers, width = [], d_in
    for _ in range(n_layers):
        layers.append(HiddenLayer(width, d_hidden, activation, generator, dtype, device))
        width = d_hidden
    return nn.ModuleList(layers), width


def _check_input(name: str, x: Tensor, width: int, dtype: torch.dtype) -> None:
    if x.ndim != 2 or x.shape[-1] != width:
        raise ValueError(f"{name} must have shape [batch, {width}], got {list(x.shape)}")
    if x.dtype != dtype:
        raise ValueError(f"{name} must have the model's dtype {dtype}, got {x.dtype}")
    check_finite(name, x)


@dataclass
class SiameseConfig:
    """Architecture of a :class:`SiameseTower`."""

    d_in: int = 4  # components of one state, e.g. (x, y, vx, vy)
    d_hidden: int = 64  # width of the hidden layers
    n_layers: int = 2  # number of hidden layers
    d_latent: int = 1  # width of the latent the pair comparison uses
    activation: str = "tanh"  # hidden nonlinearity (smooth ones give smooth, regressable latents)
    seed: int = 0  # seed of the weight initialisation
    dtype: str = "float32"  # parameter dtype
    device: str = "cpu"  # where parameters live

    def __post_init__(self) -> None:
        for name in ("d_in", "d_hidden", "d_latent"):
            check_positive_int(name, getattr(self, name))
        check_nonnegative_int("n_layers", self.n_layers)
        check_choice("activation", self.activation, ACTIVATIONS)
        resolve_dtype(self.dtype)


@register_model
class SiameseTower(HookedModel):
    """The shared tower of a Siamese network: one state → a ``d_latent`` latent (``hook_latent``).

    A pair (a, b) is compared through :meth:`pair_distance`, ‖f(a) − f(b)‖; both members go through
    the same weights. Hooks: ``blocks.{i}.hook_pre``, ``blocks.{i}.hook_post``, ``hook_latent``.
    """

    config_class = SiameseConfig

    def __init__(self, cfg: SiameseConfig) -> None:
        super().__init__(cfg)
        generator = torch.Generator().manual_seed(cfg.seed)
        dtype = resolve_dtype(cfg.dtype)
        self.blocks, width = _stack(cfg.d_in, cfg.d_hidden, cfg.n_layers, cfg.activation, generator, dtype, cfg.device)
        self.W_out = _init((width, cfg.d_latent), generator, dtype, cfg.device)
        self.b_out = nn.Parameter(torch.zeros(cfg.d_latent, dtype=dtype, device=cfg.device))
        self.hook_latent = HookPoint()  # [batch, d_latent]
        self.setup()

    def forward(self, states: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_latent"]:
        """The latent of each state."""
        _check_input("states", states, self.cfg.d_in, self.W_out.dtype)
        hidden = states
        for block in self.blocks:
            hidden = block(hidden)
        return self.hook_latent(hidden @ self.W_out + self.b_out)

    def pair_distance(self, first: Float[Tensor, "batch d_in"], second: Float[Tensor, "batch d_in"]) -> Float[Tensor, " batch"]:
        """‖f(first) − f(second)‖ per pair: small for states the tower deems on the same trajectory."""
        if first.shape != second.shape:
            raise ValueError(f"first and second must have the same shape, got {list(first.shape)} and {list(second.shape)}")
        return torch.linalg.vector_norm(self(first) - self(second), dim=-1)


@dataclass
class BottleneckConfig:
    """Architecture of a :class:`BottleneckNetwork`."""

    d_in: int  # width of the encoded input (e.g. a flattened window of states)
    d_out: int  # width of the prediction
    d_side: int = 0  # width of a side input given to the decoder only (e.g. the last state)
    d_hidden: int = 64  # width of the hidden layers
    n_encoder_layers: int = 2  # hidden layers before the bottleneck
    n_decoder_layers: int = 2  # hidden layers after the bottleneck
    d_bottleneck: int = 1  # neurons in the bottleneck
    activation: str = "tanh"  # hidden nonlinearity
    seed: int = 0  # seed of the weight initialisation
    dtype: str = "float32"  # parameter dtype
    device: str = "cpu"  # where parameters live

    def __post_init__(self) -> None:
        for name in ("d_in", "d_out", "d_hidden", "d_bottleneck"):
            check_positive_int(name, getattr(self, name))
        for name in ("d_side", "n_encoder_layers", "n_decoder_layers"):
            check_nonnegative_int(name, getattr(self, name))
        check_choice("activation", self.activation, ACTIVATIONS)
        resolve_dtype(self.dtype)


@register_model
class BottleneckNetwork(HookedModel):
    """Encoder → ``d_bottleneck`` neurons (``hook_bottleneck``) → decoder (which may also see a side input).

    With a side input the decoder gets [bottleneck, side], so the bottleneck only has to carry what
    the side input lacks (e.g. the oscillator's frequency, when the side input is the current state).
    Hooks: ``encoder.{i}.hook_pre/hook_post``, ``hook_bottleneck``, ``decoder.{i}.hook_pre/hook_post``.
    """

    config_class = BottleneckConfig

    def __init__(self, cfg: BottleneckConfig) -> None:
        super().__init__(cfg)
        generator = torch.Generator().manual_seed(cfg.seed)
        dtype = resolve_dtype(cfg.dtype)
        self.encoder, width = _stack(cfg.d_in, cfg.d_hidden, cfg.n_encoder_layers, cfg.activation, generator, dtype, cfg.device)
        self.W_bottleneck = _init((width, cfg.d_bottleneck), generator, dtype, cfg.device)
        self.b_bottleneck = nn.Parameter(torch.zeros(cfg.d_bottleneck, dtype=dtype, device=cfg.device))
        self.hook_bottleneck = HookPoint()  # [batch, d_bottleneck]
        self.decoder, width = _stack(
            cfg.d_bottleneck + cfg.d_side, cfg.d_hidden, cfg.n_decoder_layers, cfg.activation, generator, dtype, cfg.device
        )
        self.W_out = _init((width, cfg.d_out), generator, dtype, cfg.device)
        self.b_out = nn.Parameter(torch.zeros(cfg.d_out, dtype=dtype, device=cfg.device))
        self.setup()

    def encode(self, inputs: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_bottleneck"]:
        """The bottleneck activation of each input."""
        _check_input("inputs", inputs, self.cfg.d_in, self.W_out.dtype)
        hidden = inputs
        for layer in self.encoder:
            hidden = layer(hidden)
        return self.hook_bottleneck(hidden @ self.W_bottleneck + self.b_bottleneck)

    def forward(
        self, inputs: Float[Tensor, "batch d_in"], side: Float[Tensor, "batch d_side"] | None = None
    ) -> Float[Tensor, "batch d_out"]:
        """Predict the target from ``inputs`` (through the bottleneck) and the decoder's ``side`` input."""
        code = self.encode(inputs)
        if self.cfg.d_side:
            if side is None:
                raise ValueError(f"side must be given: this network's decoder takes a side input of width {self.cfg.d_side}")
            _check_input("side", side, self.cfg.d_side, self.W_out.dtype)
            if side.shape[0] != inputs.shape[0]:
                raise ValueError(f"side must have the batch size of inputs ({inputs.shape[0]}), got {side.shape[0]}")
            code = torch.cat([code, side], dim=-1)
        elif side is not None:
            raise ValueError("side must be None: this network was built with d_side = 0")
        hidden = code
        for layer in self.decoder:
            hidden = layer(hidden)
        return hidden @ self.W_out + self.b_out


__all__ = ["ACTIVATIONS", "BottleneckConfig", "BottleneckNetwork", "HiddenLayer", "SiameseConfig", "SiameseTower"]
