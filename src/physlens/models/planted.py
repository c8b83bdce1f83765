"""A hooked oscillator model with a planted ω0 channel, and its null twin: analyses have a known answer on them.

The organism has :class:`~physlens.models.transformer.OscillatorTransformer`'s call signature and
hook names, but its internals follow a causal graph fixed by construction: one head (the *planted
head*) estimates ω0 from three consecutive context states and writes it along one known unit
direction of the residual stream; the last layer's MLP (the *stepper*) reads only that direction
and the current state, and applies the exact one-step propagator. Nothing else reaches the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from physlens._validation import check_bool_fields, check_choice, check_positive_float, check_positive_int, resolve_dtype
from physlens.models.base import HookedModel, HookPoint, register_model
from physlens.models.components import MLP, Attention, Block

CHANNELS = ("planted", "none")
"""``"planted"``: the planted head writes its ω0 estimate; ``"none"``: the null organism, whose planted
head is an ordinary head that writes nothing, so the stepper always uses the reference ω0."""

FRAME = {"x": 0, "p": 1, "channel": 2, "out_x": 3, "out_p": 4, "distractor": 5}
"""Columns of the organism's orthonormal frame that carry something: the current state (x, p), the
planted channel, the prediction written by the stepper (out_x, out_p) and the distractor channel."""


@dataclass
class PlantedConfig:
    """Construction of a :class:`PlantedOrganism`. Defaults: two layers of two heads, ω0 planted in
    layer 0 head 0 from the first three states of the context."""

    d_model: int = 8  # width of the residual stream (at least 5, 6 with a distractor)
    n_layers: int = 2  # number of blocks; the stepper is the last block's MLP
    n_heads: int = 2  # heads per block
    d_head: int = 2  # width of each head's value space (at least 2: values hold the state)
    n_ctx: int = 40  # longest sequence the model accepts
    d_in: int = 2  # components per input state: (x, p)
    d_mlp: int = 3  # MLP width; the stepper reads (x, p, channel)
    channel: str = "planted"  # "planted" (write the ω0 estimate) or "none" (the null organism)
    planted_layer: int = 0  # layer of the planted head
    planted_head: int = 0  # head index of the planted head
    source_start: int | None = 0  # first of the three context positions the channel is estimated from; None: the three latest (t-2, t-1, t)
    distractor_layer: int | None = None  # layer of a head that writes the same estimate along a direction nothing reads (None: no distractor)
    distractor_head: int = 0  # head index of the distractor, when distractor_layer is set
    omega0_reference: float = 2.5  # ω̄: the channel holds gain·(ω̂ − ω̄); where it is empty the stepper uses ω̄
    channel_gain: float = 1.0  # residual units per unit of ω0 along the channel direction
    gamma: float = 0.1  # damping rate the estimator and the stepper assume (fixed, as in the variable-ω0 study)
    dt: float = 0.1  # time step of the trajectories
    seed: int = 0  # seed of the random orthonormal frame that fixes every direction
    dtype: str | torch.dtype = torch.float64  # parameter dtype; "float32"/"float64" are read as torch dtypes
    device: str = "cpu"  # where parameters live

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "d_head", "n_ctx", "d_in", "d_mlp"):
            check_positive_int(name, getattr(self, name))
        check_choice("channel", self.channel, CHANNELS)
        if self.d_in != 2:
            raise ValueError(f"d_in must be 2 (states are (x, p)), got {self.d_in}")
        if self.d_head < 2:
            raise ValueError(f"d_head must be >= 2: every head's values hold the state (x, p), got {self.d_head}")
        if self.d_mlp < 3:
            raise ValueError(f"d_mlp must be >= 3: the stepper reads x, p and the channel, got {self.d_mlp}")
        self._check_head("planted_layer", "planted_head", self.planted_layer, self.planted_head)
        if self.distractor_layer is not None:
            self._check_head("distractor_layer", "distractor_head", self.distractor_layer, self.distractor_head)
            if (self.distractor_layer, self.distractor_head) == (self.planted_layer, self.planted_head):
                raise ValueError(
                    f"distractor_layer/distractor_head name the planted head (layer {self.planted_layer}, head "
                    f"{self.planted_head}); put the distractor on another head"
                )
        needed = FRAME["distractor"] + 1 if self.distractor_layer is not None else FRAME["distractor"]
        if self.d_model < needed:
            raise ValueError(f"d_model must be >= {needed} for the state, channel and output directions"
                             + (" and the distractor" if self.distractor_layer is not None else "") + f", got {self.d_model}")
        if self.source_start is not None:
            if isinstance(self.source_start, bool) or not isinstance(self.source_start, int) or self.source_start < 0:
                raise ValueError(f"source_start must be a non-negative integer or None, got {self.source_start!r}")
            if self.source_start + 3 > self.n_ctx:
                raise ValueError(
                    f"source_start={self.source_start} puts the channel's three source states at positions "
                    f"{self.source_start}..{self.source_start + 2}, beyond the context of n_ctx={self.n_ctx} positions"
                )
        self.gamma = float(self.gamma)
        if not math.isfinite(self.gamma) or self.gamma < 0:
            raise ValueError(f"gamma must be a finite number >= 0, got {self.gamma!r}")
        self.dt = check_positive_float("dt", self.dt)
        self.channel_gain = check_positive_float("channel_gain", self.channel_gain)
        self.omega0_reference = check_positive_float("omega0_reference", self.omega0_reference)
        if self.omega0_reference <= self.gamma:
            raise ValueError(f"omega0_reference must exceed gamma={self.gamma:g} (underdamped), got {self.omega0_reference:g}")
        self.dtype = resolve_dtype(self.dtype)  # a torch.dtype, as TransformerLens code expects of cfg.dtype
        check_bool_fields(self)

    def _check_head(self, layer_name: str, head_name: str, layer: Any, head: Any) -> None:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ValueError(f"{layer_name} must be a layer of the model, in 0..{self.n_layers - 1} (n_layers={self.n_layers}), got {layer!r}")
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < self.n_heads:
            raise ValueError(f"{head_name} must be a head of the model, in 0..{self.n_heads - 1} (n_heads={self.n_heads}), got {head!r}")

    # Fixed by the construction; properties so that analyses reading them as on TransformerConfig work.
    @property
    def causal(self) -> bool:
        """Always True: every head reads only the current and earlier positions."""
        return True

    @property
    def attn_only(self) -> bool:
        """Always False: the stepper is an MLP."""
        return False

    @property
    def scale_by_first_state(self) -> bool:
        """Always False: states are read in their own units."""
        return False

    @property
    def layer_norm(self) -> bool:
        """Always False: no normalisation anywhere."""
        return False

    @property
    def n_key_value_heads(self) -> int:
        """TransformerLens field: equals ``n_heads``."""
        return self.n_heads

    @property
    def normalization_type(self) -> None:
        """TransformerLens's name for the normalisation: None."""
        return None

    @property
    def sees_future(self) -> bool:
        """Always False: the attention is causal."""
        return False

    @property
    def attn_window(self) -> None:
        """Always None: the positional patterns, not a window, decide what each head reads."""
        return None

    @property
    def use_split_qkv_input(self) -> bool:
        """Always False: every head reads the one block input (there is no ``hook_q_input``)."""
        return False

    @property
    def attn_bias(self) -> bool:
        """Always False: queries, keys and values have no biases."""
        return False


def step_kernel(omega0: Tensor, gamma: float, dt: float) -> Float[Tensor, "... 2 2"]:
    """The exact one-step map K(ω0, γ, Δt) of the damped oscillator, differentiable in ``omega0``.

    Unlike :func:`physlens.systems.oscillator.propagator` it never refuses a value: Ω² = ω0² − γ² is
    clamped to a tiny positive number, so a pushed or patched channel still yields a map.
    """
    omega_sq = (omega0**2 - gamma**2).clamp_min(1e-12)
    omega = omega_sq.sqrt()
    cos, sin = torch.cos(omega * dt), torch.sin(omega * dt)
    decay = math.exp(-gamma * dt)
    row0 = torch.stack([cos + gamma / omega * sin, sin / omega], dim=-1)
    row1 = torch.stack([-(omega_sq + gamma**2) / omega * sin, cos - gamma / omega * sin], dim=-1)
    return decay * torch.stack([row0, row1], dim=-2)


def three_state_omega0(
    first: Float[Tensor, "... 2"], second: Float[Tensor, "... 2"], third: Float[Tensor, "... 2"], gamma: float, dt: float
) -> Float[Tensor, "..."]:
    """ω0 from three consecutive states with γ known: exact on noiseless trajectories.

    The one-step map K has det K = e^{−2γΔt}, and Cayley–Hamilton gives s₃ = tr K·s₂ − det K·s₁, so
    tr K = (s₃ + det K·s₁)·s₂ / ‖s₂‖² (least squares over both components); then
    cos ΩΔt = tr K / (2 e^{−γΔt}) and ω0 = √(Ω² + γ²). The cosine is clamped to [−1, 1].
    """
    det = math.exp(-2 * gamma * dt)
    trace = ((third + det * first) * second).sum(-1) / second.pow(2).sum(-1).clamp_min(torch.finfo(second.dtype).tiny)
    cosine = (trace / (2 * math.exp(-gamma * dt))).clamp(-1.0, 1.0)
    omega = torch.acos(cosine) / dt
    return (omega**2 + gamma**2).sqrt()


def _frame(cfg: PlantedConfig) -> Tensor:
    """A random orthonormal basis of the residual stream (columns), drawn from ``cfg.seed``."""
    generator = torch.Generator().manual_seed(cfg.seed)
    gaussian = torch.randn(cfg.d_model, cfg.d_model, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r))  # a unique (Haar) draw: fix the signs QR leaves free


def _parameter(value: Tensor, cfg: PlantedConfig) -> nn.Parameter:
    return nn.Parameter(value.to(dtype=resolve_dtype(cfg.dtype), device=cfg.device))


class PlantedAttention(Attention):
    """Attention with input-independent positional patterns; the planted (and distractor) head reads ω0.

    Every head's value is the current state (``W_V`` projects onto the state directions) and its
    queries and keys are zero, so its scores are a fixed positional table: ordinary heads attend to
    their own position (so every activation of the null organism is a function of the current state);
    a *reader* head (the planted head when the channel is planted, and the distractor) attends to its
    three source positions. An ordinary head's ``z`` is the weighted sum of its values (the current
    state); a reader head's ``z`` replaces that sum by the nonlinear readout
    :func:`three_state_omega0` of the values at its source positions — ``z[..., 0] = gain·(ω̂ − ω̄)``,
    the rest zero, and zero at positions before its sources are complete. ``W_O`` maps the planted
    head's ``z[..., 0]`` onto the channel direction, the distractor's onto its own direction, and
    every other head's to zero.

    It is the transformer's :class:`~physlens.models.components.Attention` with two of its steps
    replaced: the mask (:meth:`apply_causal_mask` adds the positional table) and the mixing of the
    values (:meth:`calculate_z_scores` puts the readout in the reader heads' ``z``).
    """

    splits_qkv_input = False

    def __init__(self, cfg: PlantedConfig, layer: int, frame: Tensor) -> None:
        super().__init__(cfg)  # every weight zero: the construction sets W_V and W_O
        self.layer = layer
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        w_v = torch.zeros(h, d, e, dtype=torch.float64)
        w_v[:, :, 0], w_v[:, :, 1] = frame[:, FRAME["x"]], frame[:, FRAME["p"]]
        w_o = torch.zeros(h, e, d, dtype=torch.float64)
        self.readers: dict[int, str] = {}  # head -> "channel" or "distractor"
        if layer == cfg.planted_layer and cfg.channel == "planted":
            self.readers[cfg.planted_head] = "channel"
            w_o[cfg.planted_head, 0] = frame[:, FRAME["channel"]]
        if layer == cfg.distractor_layer:
            self.readers[cfg.distractor_head] = "distractor"
            w_o[cfg.distractor_head, 0] = frame[:, FRAME["distractor"]]
        with torch.no_grad():
            self.W_V.copy_(w_v)
            self.W_O.copy_(w_o)
        self.register_buffer("position_scores", self._position_scores(), persistent=False)  # [head, q, k]

    def source_positions(self, query: int) -> list[int] | None:
        """The three key positions a reader head reads at ``query``, oldest first (None: not yet available)."""
        start = self.cfg.source_start
        if start is None:
            return [query - 2, query - 1, query] if query >= 2 else None
        return [start, start + 1, start + 2] if query >= start + 2 else None

    def _position_scores(self) -> Tensor:
        cfg = self.cfg
        n = cfg.n_ctx
        scores = torch.full((cfg.n_heads, n, n), float("-inf"), dtype=torch.float64)
        scores[:, torch.arange(n), torch.arange(n)] = 0.0  # ordinary heads attend to their own position
        for head in self.readers:
            scores[head] = float("-inf")
            for query in range(n):
                keys = self.source_positions(query)
                scores[head, query, keys if keys is not None else [query]] = 0.0
        return scores.to(dtype=resolve_dtype(cfg.dtype), device=cfg.device)

    def apply_causal_mask(self, scores: Float[Tensor, "batch head q k"]) -> Float[Tensor, "batch head q k"]:
        """The scores plus the positional table: 0 where a head reads, -inf elsewhere."""
        n_pos = scores.shape[-1]
        return scores + self.position_scores[:, :n_pos, :n_pos]

    def calculate_z_scores(
        self, v: Float[Tensor, "batch pos head d_head"], pattern: Float[Tensor, "batch head q k"]
    ) -> Float[Tensor, "batch pos head d_head"]:
        """The pattern-weighted values, with each reader head's replaced by its ω0 readout."""
        z = super().calculate_z_scores(v, pattern)
        if self.readers:
            z = z.clone()
            for head in self.readers:
                z[:, :, head] = self._readout(v[:, :, head], v.shape[1])
        return z

    def _readout(self, values: Float[Tensor, "batch pos d_head"], n_pos: int) -> Float[Tensor, "batch pos d_head"]:
        """A reader head's z: gain·(ω̂ − ω̄) from the values at its source positions, in its first component."""
        cfg = self.cfg
        out = torch.zeros_like(values)
        queries = [query for query in range(n_pos) if self.source_positions(query) is not None]
        if not queries:
            return out
        index = torch.tensor([self.source_positions(query) for query in queries], device=values.device)  # [query, 3]
        states = values[:, index, :2]  # [batch, query, 3, 2]
        omega0 = three_state_omega0(states[..., 0, :], states[..., 1, :], states[..., 2, :], cfg.gamma, cfg.dt)
        out[:, queries, 0] = cfg.channel_gain * (omega0 - cfg.omega0_reference)
        return out


class PlantedMLP(MLP):
    """The last layer's MLP is the stepper; every other layer's MLP is inert (writes exactly zero).

    The stepper's ``hook_pre`` is (x, p, c): the current state and the channel c read off their
    directions by ``W_in``; its ``hook_post`` is K(ω̄ + c/gain)·(x, p) (then zeros), the exact step
    for the ω0 the channel holds, which ``W_out`` writes onto the output directions. It is the
    transformer's :class:`~physlens.models.components.MLP` with that step as its :meth:`act_fn`.
    """

    def __init__(self, cfg: PlantedConfig, layer: int, frame: Tensor) -> None:
        super().__init__(cfg)  # every weight zero: the stepper's W_in and W_out are set below
        self.cfg = cfg
        self.is_stepper = layer == cfg.n_layers - 1
        if self.is_stepper:
            w_in = torch.zeros(cfg.d_model, cfg.d_mlp, dtype=torch.float64)
            w_out = torch.zeros(cfg.d_mlp, cfg.d_model, dtype=torch.float64)
            w_in[:, 0], w_in[:, 1], w_in[:, 2] = frame[:, FRAME["x"]], frame[:, FRAME["p"]], frame[:, FRAME["channel"]]
            w_out[0], w_out[1] = frame[:, FRAME["out_x"]], frame[:, FRAME["out_p"]]
            with torch.no_grad():
                self.W_in.copy_(w_in)
                self.W_out.copy_(w_out)

    def act_fn(self, pre: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
        """Step the current state with the channel's ω0 (stepper), or zero (inert)."""
        if not self.is_stepper:
            return torch.zeros_like(pre)
        cfg = self.cfg
        omega0 = cfg.omega0_reference + pre[..., 2] / cfg.channel_gain
        kernel = step_kernel(omega0, cfg.gamma, cfg.dt)  # [batch, pos, 2, 2]
        stepped = torch.einsum("bpij,bpj->bpi", kernel, pre[..., :2])
        return torch.cat([stepped, torch.zeros_like(pre[..., 2:])], dim=-1)


class PlantedBlock(Block):
    """The transformer's :class:`~physlens.models.components.Block` (no norms) over a
    :class:`PlantedAttention` and a :class:`PlantedMLP`."""

    def __init__(self, cfg: PlantedConfig, layer: int, frame: Tensor) -> None:
        super().__init__(PlantedAttention(cfg, layer, frame), PlantedMLP(cfg, layer, frame))


@register_model
class PlantedOrganism(HookedModel):
    """States [batch, pos, 2] → next states [batch, pos, 2], with ω0 planted at a known site and direction.

    The causal graph, fixed by construction (see :class:`PlantedAttention`, :class:`PlantedMLP`):
    ``W_E`` writes the current state on two directions; the planted head (``cfg.planted_layer``,
    ``cfg.planted_head``) estimates ω0 exactly from three context states and writes
    ``gain·(ω̂ − ω̄)`` along :attr:`channel_direction`; the last layer's MLP reads that direction and
    the state and writes K(ω̂)·s, which ``W_U`` reads out. Every other head and MLP writes zero, and
    the distractor head (if any) writes the same estimate along a direction nothing reads. With
    ``cfg.channel="none"`` (the null organism) the channel stays empty and the model steps every
    state with the reference ω̄: its residual stream holds functions of the current state only.

    All directions come from a random orthonormal frame drawn from ``cfg.seed``, so a re-seeded copy
    (what :func:`~physlens.probes.linear_probe.random_init_copy` makes, and ``probe_sweep``'s default
    control) is the same mechanism along other directions and carries ω0 too: probe it against
    :func:`physlens.probes.planted.random_transformer_control` or the null organism instead.
    """

    config_class = PlantedConfig
    input_position_axis = 1
    has_residual_stream = True

    def __init__(self, cfg: PlantedConfig) -> None:
        super().__init__(cfg)
        frame = _frame(cfg)
        self.register_buffer("frame", frame.to(dtype=resolve_dtype(cfg.dtype), device=cfg.device))  # [d_model, d_model], columns
        self.W_E = _parameter(torch.stack([frame[:, FRAME["x"]], frame[:, FRAME["p"]]]), cfg)  # [d_in, d_model]
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList(PlantedBlock(cfg, layer, frame) for layer in range(cfg.n_layers))
        self.W_U = _parameter(torch.stack([frame[:, FRAME["out_x"]], frame[:, FRAME["out_p"]]], dim=1), cfg)  # [d_model, d_in]
        self.setup()

    @property
    def channel_direction(self) -> Float[Tensor, " d_model"]:
        """The unit residual direction the planted head writes gain·(ω̂ − ω̄) along and the stepper reads."""
        return self.frame[:, FRAME["channel"]]

    @property
    def distractor_direction(self) -> Float[Tensor, " d_model"]:
        """The unit residual direction of the distractor (written, never read); needs a distractor."""
        if self.cfg.distractor_layer is None:
            raise ValueError("this organism has no distractor (cfg.distractor_layer is None)")
        return self.frame[:, FRAME["distractor"]]

    def channel_positions(self, n_pos: int) -> list[int]:
        """Positions (of a sequence of ``n_pos``) at which the planted head writes its estimate."""
        n_pos = check_positive_int("n_pos", n_pos)
        attention = self.blocks[self.cfg.planted_layer].attn
        return [query for query in range(n_pos) if attention.source_positions(query) is not None]

    def source_positions(self, query: int) -> list[int] | None:
        """The context positions the channel at position ``query`` is estimated from (None: none yet)."""
        return self.blocks[self.cfg.planted_layer].attn.source_positions(query)

    def forward(
        self,
        states: Float[Tensor, "batch pos d_in"],
        return_type: str | None = "output",
        *,
        targets: Float[Tensor, "batch pos d_in"] | None = None,
        loss_positions: str = "all",
    ) -> Any:
        """Predict the next state at every position; ``return_type`` and ``targets`` as on
        :class:`~physlens.models.transformer.OscillatorTransformer` (``"output"``, ``"loss"``, ``"both"``, None)."""
        if return_type not in ("output", "loss", "both", None):
            raise ValueError(f"return_type must be 'output', 'loss', 'both' or None, got {return_type!r}")
        if loss_positions not in ("all", "last"):
            raise ValueError(f"loss_positions must be 'all' or 'last', got {loss_positions!r}")
        wants_loss = return_type in ("loss", "both")
        if wants_loss and (not isinstance(targets, Tensor) or targets.shape != states.shape):
            got = list(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
            raise ValueError(f"return_type={return_type!r} needs targets shaped like states {list(states.shape)}, got {got}")
        if not wants_loss and targets is not None:
            raise ValueError(f"targets are only used with return_type='loss' or 'both', got return_type={return_type!r}")
        self._check_input(states)
        resid = self.hook_embed(states @ self.W_E)
        for block in self.blocks:
            resid = block(resid)
        output = resid @ self.W_U
        if not wants_loss:
            return output if return_type == "output" else None
        prediction, target = (output[:, -1:], targets[:, -1:]) if loss_positions == "last" else (output, targets)
        loss = (prediction - target).pow(2).mean()
        return loss if return_type == "loss" else (output, loss)

    def _check_input(self, states: Tensor) -> None:
        cfg = self.cfg
        if not isinstance(states, Tensor) or states.ndim != 3 or states.shape[-1] != cfg.d_in:
            raise ValueError(f"states must have shape [batch, pos, {cfg.d_in}], got {list(getattr(states, 'shape', []))}")
        if not 1 <= states.shape[1] <= cfg.n_ctx:
            raise ValueError(f"states has {states.shape[1]} positions but the model's context n_ctx is {cfg.n_ctx}")
        if states.dtype != self.W_E.dtype:
            raise ValueError(f"states must have the model's dtype {self.W_E.dtype}, got {states.dtype}")

    def _stacked(self, name: str) -> Tensor:
        return torch.stack([getattr(block.attn, name) for block in self.blocks])

    @property
    def W_Q(self) -> Float[Tensor, "layer head d_model d_head"]:  # noqa: N802
        """Query weights of every layer, stacked (all zero: the patterns are positional)."""
        return self._stacked("W_Q")

    @property
    def W_K(self) -> Float[Tensor, "layer head d_model d_head"]:  # noqa: N802
        """Key weights of every layer, stacked (all zero: the patterns are positional)."""
        return self._stacked("W_K")

    @property
    def W_V(self) -> Float[Tensor, "layer head d_model d_head"]:  # noqa: N802
        """Value weights of every layer, stacked."""
        return self._stacked("W_V")

    @property
    def W_O(self) -> Float[Tensor, "layer head d_head d_model"]:  # noqa: N802
        """Output weights of every layer, stacked."""
        return self._stacked("W_O")


__all__ = [
    "CHANNELS",
    "FRAME",
    "PlantedAttention",
    "PlantedBlock",
    "PlantedConfig",
    "PlantedMLP",
    "PlantedOrganism",
    "step_kernel",
    "three_state_omega0",
]
