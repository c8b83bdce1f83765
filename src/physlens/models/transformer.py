"""The hooked oscillator transformer: states (x, p) in, next states out, at every position.

The model assembles its parts from :mod:`physlens.models.components` (attention, MLP, LayerNorm,
block, embedding views) and :mod:`physlens.models.transformer_config`; then come the presets. Every
intermediate activation passes through a TransformerLens ``HookPoint`` named the TransformerLens
way, so caches, hooks and ``transformer_lens.patching`` work unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.FactoredMatrix import FactoredMatrix

from physlens._validation import resolve_dtype
from physlens.models.base import HookedModel, HookPoint, register_model
from physlens.models.components import (
    MLP,
    Attention,
    Block,
    Embed,
    LayerNorm,
    PosEmbed,
    Unembed,
    attention_mask,
    init_weight,
    zeros_parameter,
)
from physlens.models.transformer_config import TransformerConfig


def _refuse_text(states: Any) -> None:
    if isinstance(states, str) or (isinstance(states, (list, tuple)) and states and all(isinstance(item, str) for item in states)):
        raise ValueError(
            "the model reads states, not text: pass a [batch, pos, 2] tensor of (x, p), e.g. "
            "OscillatorSystem(...).sample(n, seq_len, seed=0).states; there is no tokenizer (to_tokens refuses too)"
        )


class _InputScaleReadout:
    """The post-unembedding transform of a ``scale_by_first_state`` model, where TransformerLens's
    readout tools (``logit_lens``, ``logit_readout``) look for one: ``model.adapter``.

    The model multiplies its unembedding by each example's ``hook_input_scale``, which a flat chunk
    of read-out vectors cannot know, so a readout that is not run by the cache (which knows each
    example's scale, and applies it) is refused instead of returning unscaled states.
    """

    supports_generation = False

    def __init__(self) -> None:
        self._applied_by_cache = False

    @contextlib.contextmanager
    def scaled_by_cache(self) -> Iterator[None]:
        """While the cache reads the stream out and multiplies each example's read-out by its scale."""
        self._applied_by_cache = True
        try:
            yield
        finally:
            self._applied_by_cache = False

    def apply_output_logits_transform(self, logits: Tensor) -> Tensor:
        if not self._applied_by_cache:
            raise ValueError(
                "this model (scale_by_first_state=True) multiplies its unembedding by each example's hook_input_scale, "
                "which a read-out of bare residual vectors cannot know; use cache.logit_lens() on a run_with_cache cache, "
                "which applies it, or multiply model.unembed(model.ln_final(resid)) by cache['hook_input_scale'] yourself"
            )
        return logits

    def validate_output_logits_transform(self) -> None:
        self.apply_output_logits_transform(torch.zeros(0))


def _block(cfg: TransformerConfig, generator: torch.Generator) -> Block:
    """One block of the model, its weights drawn in the order attention, then MLP."""
    attn = Attention(cfg, generator)
    if cfg.attn_only:
        return Block(attn, ln1=LayerNorm(cfg) if cfg.layer_norm else None)
    mlp = MLP(cfg, generator)
    norms = (LayerNorm(cfg), LayerNorm(cfg)) if cfg.layer_norm else (None, None)
    return Block(attn, mlp, *norms)


def _first_state_size(states: Tensor) -> Tensor:
    """‖states[:, 0]‖ per example, ``[batch, 1, 1]`` and at least the dtype's smallest normal number: the
    scale a ``scale_by_first_state`` model divides its input by and multiplies its prediction with."""
    return torch.linalg.vector_norm(states[:, :1], dim=-1, keepdim=True).clamp_min(torch.finfo(states.dtype).tiny)


@register_model
class OscillatorTransformer(HookedModel):
    """A tiny transformer over phase-space sequences: [batch, pos, 2] states → [batch, pos, 2] next states.

    ``W_E`` embeds each state, the blocks mix positions through attention, and ``W_U`` reads a
    prediction of the next state out at every position. With ``cfg.scale_by_first_state`` the
    input is divided by the norm of its first state (``hook_input_scale``) and the prediction
    multiplied back, so the model is exactly scale-equivariant, as the linear dynamics are; the
    residual stream and ``unembed`` then work in units of that first state's size.
    """

    config_class = TransformerConfig
    input_position_axis = 1
    has_residual_stream = True
    unpositioned_hooks = ("hook_input_scale",)  # [batch, 1, 1]: one scale per example

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__(cfg)
        generator = torch.Generator().manual_seed(cfg.seed)
        if cfg.scale_by_first_state:
            self.hook_input_scale = HookPoint()  # [batch, 1, 1]: ‖states[:, 0]‖, divided out of the input and multiplied back
            self.adapter = _InputScaleReadout()  # TransformerLens's readout tools apply (here: refuse) the output's scale
        self.W_E = init_weight((cfg.d_in, cfg.d_model), cfg.d_in, generator, cfg)
        self.b_E = zeros_parameter((cfg.d_model,), cfg) if cfg.embed_bias else None
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positional_embedding:
            self.W_pos = init_weight((cfg.n_ctx, cfg.d_model), cfg.d_model, generator, cfg)
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList(_block(cfg, generator) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg) if cfg.layer_norm else nn.Identity()
        self.W_U = init_weight((cfg.d_model, cfg.d_in), cfg.d_model, generator, cfg)
        if cfg.unembed_bias:
            self.b_U = zeros_parameter((cfg.d_in,), cfg)
        else:  # zeros that are not trained nor saved: b_U is a tensor, as TransformerLens's readout tools expect
            self.register_buffer("b_U", torch.zeros(cfg.d_in, dtype=resolve_dtype(cfg.dtype), device=cfg.device), persistent=False)
        self.setup()

    def forward(
        self,
        states: Float[Tensor, "batch pos d_in"],
        return_type: str | None = "output",
        *,
        targets: Float[Tensor, "batch pos d_in"] | None = None,
        loss_positions: str = "all",
        stop_at_layer: int | None = None,
    ) -> Any:
        """Predict the next state at every position.

        ``return_type`` follows TransformerLens: ``"output"`` (the predictions, ``[batch, pos,
        d_in]``; TransformerLens's ``"logits"``), ``"loss"`` (the mean squared error against
        ``targets``, a scalar, so ``loss.backward()`` and ``run_with_cache(..., incl_bwd=True)``
        work), ``"both"`` (``(output, loss)``) or None. ``loss_positions`` is ``"all"`` or
        ``"last"``, as in training. ``stop_at_layer=l`` runs the first ``l`` blocks only and returns
        the residual stream there, ``[batch, pos, d_model]`` (TransformerLens's meaning; negative
        counts from the end; on ``scale_by_first_state`` in units of the first state's size).
        """
        _refuse_text(states)
        if return_type not in ("output", "loss", "both", None):
            hint = {"logits": "the predicted states, TransformerLens's logits, are return_type='output'"}.get(return_type, "")
            raise ValueError(f"return_type must be 'output', 'loss', 'both' or None, got {return_type!r}" + (f"; {hint}" if hint else ""))
        if stop_at_layer is not None:
            if return_type != "output" or targets is not None:
                raise ValueError("stop_at_layer returns the residual stream, which has no loss: call it with return_type='output' and no targets")
            if isinstance(stop_at_layer, bool) or not isinstance(stop_at_layer, int) or not -self.cfg.n_layers <= stop_at_layer <= self.cfg.n_layers:
                raise ValueError(f"stop_at_layer must be an integer in -{self.cfg.n_layers}..{self.cfg.n_layers}, got {stop_at_layer!r}")
            return self._predict(states, stop_at_layer=stop_at_layer)
        if loss_positions not in ("all", "last"):
            raise ValueError(f"loss_positions must be 'all' or 'last', got {loss_positions!r}")
        wants_loss = return_type in ("loss", "both")
        if wants_loss and (not isinstance(targets, Tensor) or targets.shape != states.shape):
            got = list(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
            raise ValueError(f"return_type={return_type!r} needs targets shaped like states {list(states.shape)}, got {got}")
        if not wants_loss and targets is not None:
            raise ValueError(f"targets are only used with return_type='loss' or 'both', got return_type={return_type!r}")
        output = self._predict(states)
        if not wants_loss:
            return output if return_type == "output" else None
        prediction, target = (output[:, -1:], targets[:, -1:]) if loss_positions == "last" else (output, targets)
        loss = (prediction - target).pow(2).mean()
        return loss if return_type == "loss" else (output, loss)

    def _predict(self, states: Tensor, stop_at_layer: int | None = None) -> Tensor:
        self._check_input(states)
        scale = None
        if self.cfg.scale_by_first_state:
            # The dynamics are linear, so s → λs must give λ·prediction: the blocks see states in units of
            # the first state's size and the prediction is scaled back. The first state is visible to every
            # position (causal or not), so this leaks nothing from later positions.
            scale = self.hook_input_scale(_first_state_size(states))
            states = states / scale
        resid = self.hook_embed(self.embed(states))
        if self.cfg.positional_embedding:
            resid = resid + self.hook_pos_embed(self.pos_embed(states))
        blocks = self.blocks if stop_at_layer is None else self.blocks[:stop_at_layer]
        for block in blocks:
            resid = block(resid)
        if stop_at_layer is not None:
            return resid
        output = self.unembed(self.ln_final(resid))
        return output if scale is None else output * scale

    @property
    def embed(self) -> Embed:
        """TransformerLens's ``model.embed``: ``W_E``, ``b_E``, and ``embed(states)`` = ``states @ W_E + b_E``
        (the states as the blocks see them: on ``scale_by_first_state``, divided by ``hook_input_scale``)."""
        return Embed(self.W_E, self.b_E)

    @property
    def unembed(self) -> Unembed:
        """TransformerLens's ``model.unembed``: ``W_U``, ``b_U``, and ``unembed(resid)`` = ``resid @ W_U + b_U``,
        a (final-normalised) residual-stream vector read out as a state (on ``scale_by_first_state``,
        before the output is multiplied by ``hook_input_scale``)."""
        return Unembed(self.W_U, self.b_U)

    @property
    def pos_embed(self) -> PosEmbed:
        """TransformerLens's ``model.pos_embed``: ``W_pos``, and ``pos_embed(states)`` its rows for the
        input's positions, ``[batch, pos, d_model]``. Only with ``cfg.positional_embedding``."""
        if not self.cfg.positional_embedding:
            raise AttributeError("pos_embed: this model has no positional embedding (cfg.positional_embedding=False)")
        return PosEmbed(self.W_pos)

    def __getattr__(self, name: str) -> Any:
        # A property that raises AttributeError falls through to here, and nn.Module's message would drop the reason.
        if name == "pos_embed" and not self.cfg.positional_embedding:
            raise AttributeError("pos_embed: this model has no positional embedding (cfg.positional_embedding=False)")
        return super().__getattr__(name)

    def _attn_bias(self, name: str, *shape: int) -> Tensor:
        if name != "b_O" and self.cfg.attn_bias:
            return self._stacked(name)
        return torch.zeros(self.cfg.n_layers, *shape, dtype=self.W_E.dtype, device=self.W_E.device)

    @property
    def b_Q(self) -> Float[Tensor, "layer head d_head"]:  # noqa: N802
        """TransformerLens's query biases of every layer, stacked (zeros without ``cfg.attn_bias``)."""
        return self._attn_bias("b_Q", self.cfg.n_heads, self.cfg.d_head)

    @property
    def b_K(self) -> Float[Tensor, "layer head d_head"]:  # noqa: N802
        """TransformerLens's key biases of every layer, stacked (zeros without ``cfg.attn_bias``)."""
        return self._attn_bias("b_K", self.cfg.n_heads, self.cfg.d_head)

    @property
    def b_V(self) -> Float[Tensor, "layer head d_head"]:  # noqa: N802
        """TransformerLens's value biases of every layer, stacked (zeros without ``cfg.attn_bias``)."""
        return self._attn_bias("b_V", self.cfg.n_heads, self.cfg.d_head)

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:  # noqa: N802
        """TransformerLens's attention output biases: zeros, the attention has none."""
        return self._attn_bias("b_O", self.cfg.d_model)

    def loss_fn(
        self,
        output: Float[Tensor, "batch pos d_in"],
        targets: Float[Tensor, "batch pos d_in"],
        per_token: bool = False,
    ) -> Tensor:
        """TransformerLens's ``loss_fn`` for predicted states: the mean squared error against ``targets``
        (the next states, already shifted), as ``model(x, return_type="loss", targets=y)`` gives it;
        ``per_token=True`` keeps it per position, ``[batch, pos]``."""
        if not isinstance(output, Tensor) or not isinstance(targets, Tensor) or output.shape != targets.shape:
            raise ValueError(
                f"loss_fn needs the predicted states and the target states, two tensors of the same shape; got "
                f"{getattr(output, 'shape', type(output).__name__)} and {getattr(targets, 'shape', type(targets).__name__)}"
            )
        errors = (output - targets).pow(2)
        return errors.mean(dim=-1) if per_token else errors.mean()

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """TransformerLens's switch for ``attn.hook_result``: every head's result is always computed
        and hooked here, so either value leaves the model as it is."""
        if not isinstance(use_attn_result, bool):
            raise ValueError(f"use_attn_result must be a bool, got {use_attn_result!r}")

    def tl_named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """TransformerLens's ``tl_named_parameters``: :meth:`tl_parameters` as ``(name, tensor)`` pairs."""
        return iter(self.tl_parameters().items())

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: there is no text to continue; roll states forward with ``physlens.training.rollout``."""
        raise NotImplementedError(
            f"{type(self).__name__} predicts states, not tokens; to continue a trajectory use "
            "physlens.training.rollout(model, context, n_steps) (or evaluate_rollout to score one)"
        )

    def to_string(self, *args: Any, **kwargs: Any) -> str:
        """Refused, as :meth:`to_tokens`: there are no tokens to turn into text."""
        self.to_tokens()
        return ""

    def _check_input(self, states: Tensor) -> None:
        cfg = self.cfg
        if states.ndim != 3 or states.shape[-1] != cfg.d_in:
            raise ValueError(f"states must have shape [batch, pos, {cfg.d_in}], got {list(states.shape)}")
        if not 1 <= states.shape[1] <= cfg.n_ctx:
            raise ValueError(
                f"states has {states.shape[1]} positions but the model's context n_ctx is {cfg.n_ctx}; "
                "pass between 1 and n_ctx positions"
            )
        if states.dtype != self.W_E.dtype:
            raise ValueError(f"states must have the model's dtype {self.W_E.dtype}, got {states.dtype}")
        # No finiteness check here: a diverging rollout legitimately feeds back inf/NaN, which then
        # shows up as an infinite error. Public entry points (rollout context, systems) check inputs.

    def _stacked(self, name: str) -> Tensor:
        return torch.stack([getattr(block.attn, name) for block in self.blocks])

    @property
    def W_Q(self) -> Float[Tensor, "layer head d_model d_head"]:  # noqa: N802
        """Query weights of every layer, stacked."""
        return self._stacked("W_Q")

    @property
    def W_K(self) -> Float[Tensor, "layer head d_model d_head"]:  # noqa: N802
        """Key weights of every layer, stacked."""
        return self._stacked("W_K")

    @property
    def W_V(self) -> Float[Tensor, "layer head d_model d_head"]:  # noqa: N802
        """Value weights of every layer, stacked."""
        return self._stacked("W_V")

    @property
    def W_O(self) -> Float[Tensor, "layer head d_head d_model"]:  # noqa: N802
        """Output weights of every layer, stacked."""
        return self._stacked("W_O")

    @property
    def OV(self) -> FactoredMatrix:  # noqa: N802
        """OV circuits W_V W_O of every head, a TransformerLens ``FactoredMatrix`` ``[layer, head, d_model, d_model]``."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:  # noqa: N802
        """QK circuits W_Q W_Kᵀ of every head, a TransformerLens ``FactoredMatrix`` ``[layer, head, d_model, d_model]``."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    def _stacked_mlp(self, name: str) -> Tensor:
        if self.cfg.attn_only:  # so hasattr(model, name) is False, as for a TransformerLens model without MLPs
            raise AttributeError(f"{name}: this model is attention-only (cfg.attn_only=True) and has no MLP weights")
        return torch.stack([getattr(block.mlp, name) for block in self.blocks])

    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:  # noqa: N802
        """MLP input weights of every layer, stacked."""
        return self._stacked_mlp("W_in")

    @property
    def b_in(self) -> Float[Tensor, "layer d_mlp"]:
        """MLP input biases of every layer, stacked."""
        return self._stacked_mlp("b_in")

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:  # noqa: N802
        """MLP output weights of every layer, stacked."""
        return self._stacked_mlp("W_out")

    @property
    def b_out(self) -> Float[Tensor, "layer d_model"]:
        """MLP output biases of every layer, stacked."""
        return self._stacked_mlp("b_out")

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> Float[Tensor, " d_model"]:
        """TransformerLens's ``accumulated_bias``: the biases written to the residual stream before
        ``layer`` (attention has none here, so only MLP output biases, when ``include_mlp_biases``).

        The embedding bias ``b_E`` is part of ``hook_embed`` and is not counted again.
        """
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= self.cfg.n_layers:
            raise ValueError(f"layer must be an integer in 0..{self.cfg.n_layers}, got {layer!r}")
        if mlp_input and layer == self.cfg.n_layers:
            raise ValueError("mlp_input=True needs a layer below n_layers: the unembedding has no MLP input")
        total = torch.zeros(self.cfg.d_model, dtype=self.W_E.dtype, device=self.W_E.device)
        if include_mlp_biases and not self.cfg.attn_only:
            for block in self.blocks[:layer]:
                total = total + block.mlp.b_out
        return total

    def to_single_token(self, string: str) -> int:
        """Refused: the model reads continuous states, it has no vocabulary to look ``string`` up in."""
        raise ValueError(
            f"{type(self).__name__} has no vocabulary, so {string!r} is no token; name an output component "
            f"by its index instead (0..{self.cfg.d_in - 1}: 0 for x, 1 for p)"
        )

    def tokens_to_residual_directions(self, tokens: int | Int[Tensor, "..."]) -> Float[Tensor, "... d_model"]:
        """TransformerLens's ``tokens_to_residual_directions`` with output components for tokens:
        the columns of ``W_U`` (``[d_model]`` per index; 0 reads x, 1 reads p).

        With it, ``cache.logit_attrs(stack, tokens=i)`` is the direct attribution of every
        component of the residual stream to the predicted component ``i`` (exact without LayerNorm:
        the attributions of a full decomposition plus ``b_U[i]`` sum to the prediction).
        """
        if isinstance(tokens, str):
            self.to_single_token(tokens)
        index = torch.as_tensor(tokens, device=self.W_U.device)
        if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
            raise ValueError(f"tokens must be integer output-component indices, got dtype {index.dtype}")
        if index.numel() and not bool(((index >= 0) & (index < self.cfg.d_in)).all()):
            raise ValueError(f"tokens must lie in 0..{self.cfg.d_in - 1} (the output components), got {index.tolist()}")
        return self.W_U[:, index].movedim(0, -1)

    def tl_parameters(self) -> dict[str, Tensor]:
        """The parameters under TransformerLens's names (``embed.W_E``, ``unembed.W_U``,
        ``blocks.{l}.attn.W_V`` ...), as ``transformer_lens.SVDInterpreter`` reads them."""
        params = dict(self.named_parameters())
        for name, tl_name in (("W_E", "embed.W_E"), ("b_E", "embed.b_E"), ("W_pos", "pos_embed.W_pos"), ("W_U", "unembed.W_U"), ("b_U", "unembed.b_U")):
            if name in params:
                params[tl_name] = params.pop(name)
        return params

    def fold_layer_norm(self, center_weights: bool = True) -> OscillatorTransformer:
        """TransformerLens's ``fold_layer_norm`` (``fold_ln``): move each LayerNorm's weight ``w`` and
        bias ``b`` into the weights that read its output, leaving the norm a bare centre-and-scale
        (``w = 1``, ``b = 0``), and with ``center_weights`` centre those weights over ``d_model``.

        ``ln_final`` folds into ``W_U`` and ``b_U``, ``ln2`` into the MLP's ``W_in`` and ``b_in``, and
        ``ln1`` into ``W_Q``, ``W_K``, ``W_V`` and ``b_Q``, ``b_K``, ``b_V`` (``b_Q += b @ W_Q`` …).
        A bias with nowhere to go is created as a parameter, saved with the model: ``b_U`` (setting
        ``cfg.unembed_bias``) when ``ln_final`` has a bias and the model none, ``b_Q``, ``b_K``, ``b_V``
        in every block (setting ``cfg.attn_bias``) when an ``ln1`` has one. Centring subtracts each
        reading weight's mean over ``d_model``, which the normalised stream, of mean zero, never
        reads. Outputs are unchanged (to rounding); afterwards the cached-scale recipes
        (``logit_attrs``, ``apply_ln_to_stack``, ``decompose_resid(apply_ln=True)``) are exact at
        every norm. Returns the model.
        """
        if not isinstance(center_weights, bool):
            raise ValueError(f"center_weights must be a bool, got {center_weights!r}")
        if not self.cfg.layer_norm:
            return self
        with torch.no_grad():
            if not self.cfg.unembed_bias and bool((self.ln_final.b != 0).any()):
                del self.b_U  # the zero buffer becomes a parameter, saved with the model
                self.b_U = zeros_parameter((self.cfg.d_in,), self.cfg)
                self.cfg.unembed_bias = True
            if not self.cfg.attn_bias and any(bool((block.ln1.b != 0).any()) for block in self.blocks):
                for block in self.blocks:
                    block.attn.add_qkv_biases()
                self.cfg.attn_bias = True  # the one config all the blocks share: every attention adds its biases now
            self.ln_final.fold_into([(self.W_U, self.b_U)], center_weights)
            for block in self.blocks:
                if not self.cfg.attn_only:
                    block.ln2.fold_into([(block.mlp.W_in, block.mlp.b_in)], center_weights)
                attn = block.attn
                biases = (attn.b_Q, attn.b_K, attn.b_V) if self.cfg.attn_bias else (None, None, None)
                block.ln1.fold_into(list(zip((attn.W_Q, attn.W_K, attn.W_V), biases)), center_weights)
        return self

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """TransformerLens's switch for per-head copies of each block's input (``attn.hook_q_input``,
        ``hook_k_input``, ``hook_v_input``), which path patching
        (``transformer_lens.patching.get_act_patch_direct_path``) patches. Outputs are unchanged."""
        if not isinstance(use_split_qkv_input, bool):
            raise ValueError(f"use_split_qkv_input must be a bool, got {use_split_qkv_input!r}")
        self.cfg.use_split_qkv_input = use_split_qkv_input

    def _scalar_output_hint(self) -> str:
        return "Call it with return_type='loss' and targets=..., e.g. model.run_with_cache(x, return_type='loss', targets=y, incl_bwd=True)."


PRESETS: dict[str, dict[str, Any]] = {
    # The seed's one-layer attention-only model: d_model 2, one head.
    "OLA": dict(d_model=2, n_layers=1, n_heads=1, d_head=2, n_ctx=40, causal=True, attn_only=True),
    # The seed's best variable-ω0 model: 8 layers, d_model 32, d_head 16, no causal mask, T = 40.
    "nLA": dict(d_model=32, n_layers=8, n_heads=2, d_head=16, n_ctx=40, causal=False, attn_only=True),
}
"""Named configurations of the seed's models, as :class:`TransformerConfig` keyword arguments."""


def preset_config(name: str, **overrides: Any) -> TransformerConfig:
    """The config of a named seed model (``"OLA"`` or ``"nLA"``), with fields overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return TransformerConfig(**{**PRESETS[name], **overrides})


__all__ = [
    "PRESETS",
    "Attention",
    "Block",
    "LayerNorm",
    "MLP",
    "OscillatorTransformer",
    "TransformerConfig",
    "attention_mask",
    "preset_config",
]
