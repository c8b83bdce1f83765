"""TransformerLens's ``ActivationCache`` for physlens models: what ``run_with_cache`` returns.

Every method that makes sense for a model without token embeddings runs TransformerLens's own
code; the rest raise an error that says why, instead of an ``AttributeError`` from deep inside.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.utilities import Slice


def _leads_with_batch(model: Any) -> bool:
    # MLPEnsemble's activations are [model, batch, ...]: their leading axis is the member, not the example.
    from physlens.models.mlp import MLPEnsemble

    return not isinstance(model, MLPEnsemble)


def _residual_stream_method(method: Callable, needs_mlp: bool = False) -> Callable:
    """Wrap an ``ActivationCache`` method that reads a transformer's residual stream (and MLP neurons)."""

    @functools.wraps(method)
    def checked(self: HookedModelCache, *args: Any, **kwargs: Any) -> Any:
        model = self.model
        if not getattr(model, "has_residual_stream", False):
            example = next(iter(self.cache_dict), "hook_name")
            raise NotImplementedError(
                f"ActivationCache.{method.__name__} reads a transformer's residual stream "
                f"(blocks.{{layer}}.hook_resid_pre, ...), and {type(model).__name__} has none; "
                f"index the cache by hook name instead, e.g. cache[{example!r}]"
            )
        if needs_mlp and model.cfg.attn_only:
            raise NotImplementedError(
                f"ActivationCache.{method.__name__} reads MLP neurons, and this model is attention-only (cfg.attn_only=True)"
            )
        return method(self, *args, **kwargs)

    return checked


class HookedModelCache(ActivationCache):
    """A TransformerLens ``ActivationCache`` of a physlens model's activations.

    Works as on any TransformerLens model: indexing by hook name or shorthand
    (``cache["resid_pre", 0]``), ``keys``/``items``/``len``, ``to``, ``remove_batch_dim``,
    ``apply_slice_to_batch_dim``, and, on the oscillator transformer, ``accumulated_resid``,
    ``decompose_resid``, ``stack_head_results``, ``compute_head_results``, ``stack_activation``,
    ``apply_ln_to_stack``, ``get_full_resid_decomposition``, ``logit_attrs`` (the "tokens" are the
    output components: 0 for x, 1 for p), ``logit_lens`` (each layer's residual stream read out
    through ``W_U`` as a predicted state), and, on models with an MLP, ``get_neuron_results`` and
    ``stack_neuron_results``.

    Refused, with the reason: the residual-stream methods on models without a residual stream (the
    F = m·a MLP, the Siamese tower), the neuron methods on attention-only models, the state-space
    methods (``compute_ssm_state``, ``compute_ssm_effective_attention``: no physlens model has SSM
    layers; ``ssm_layers`` answers ``[]``), and batch slicing on an ``MLPEnsemble``, whose
    activations lead with the member axis.
    """

    def __getitem__(self, key: Any) -> Any:
        """TransformerLens's indexing (``cache["resid_pre", 0]``), with a missing activation named."""
        try:
            return super().__getitem__(key)
        except KeyError:
            name = key if isinstance(key, str) else None
            if name is None and isinstance(key, tuple):
                from transformer_lens.utilities import get_act_name

                name = get_act_name(*key)
            hook_dict = getattr(self.model, "hook_dict", {})
            if name in hook_dict:
                reason = "the model has this hook, but names_filter (or pos_slice) left it out of the cache"
            else:
                close = difflib.get_close_matches(str(name), list(hook_dict), n=3)
                flags = ""
                if name is not None and (".ln" in name or "ln_final" in name) and not getattr(self.model.cfg, "layer_norm", True):
                    flags = " (the model has no LayerNorm: cfg.layer_norm=False)"
                elif name is not None and (".mlp." in name or name.endswith(("mlp_out", "resid_mid"))):
                    if getattr(self.model.cfg, "attn_only", False):
                        flags = " (the model is attention-only: cfg.attn_only=True)"
                reason = f"{type(self.model).__name__} has no hook of that name{flags}" + (f"; close names: {close}" if close else "")
            raise KeyError(f"no activation {name!r} in this cache: {reason}") from None

    def _check_batch_axis(self, method: str) -> None:
        if not _leads_with_batch(self.model):
            raise NotImplementedError(
                f"ActivationCache.{method} treats the leading axis as the batch, but {type(self.model).__name__}'s "
                "activations are [model, batch, ...]; index the member axis yourself"
            )

    def remove_batch_dim(self, batch_size: int | None = None) -> HookedModelCache:
        """TransformerLens's ``remove_batch_dim``: drop the batch axis of a one-example cache."""
        self._check_batch_axis("remove_batch_dim")
        super().remove_batch_dim(batch_size)
        return self

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> HookedModelCache:
        """TransformerLens's ``apply_slice_to_batch_dim``, returning a cache of this class."""
        self._check_batch_axis("apply_slice_to_batch_dim")
        sliced = super().apply_slice_to_batch_dim(batch_slice)
        return HookedModelCache(sliced.cache_dict, self.model, has_batch_dim=sliced.has_batch_dim)

    def _require_output_scale(self) -> bool:
        """True when the model scales its output by ``hook_input_scale``; raises if the cache lacks it."""
        if not getattr(self.model.cfg, "scale_by_first_state", False):
            return False
        if "hook_input_scale" not in self.cache_dict:
            raise ValueError(
                "this model multiplies its unembedding by each example's hook_input_scale (scale_by_first_state=True), "
                "so direct attribution and the logit lens need it: cache it too (names_filter must keep 'hook_input_scale')"
            )
        return True

    def _output_scale(self, batch_slice: Any, stack_has_batch_dim: bool, ndim: int) -> Tensor | None:
        """The per-example factor the model multiplies its unembedding by (``hook_input_scale`` on a
        ``scale_by_first_state`` transformer), shaped to broadcast over ``[component, batch, ...]``
        with ``ndim`` axes; None on models whose output is the unembedding itself."""
        if not self._require_output_scale():
            return None
        scale = self["hook_input_scale"]
        if not self.has_batch_dim:
            return scale.reshape(())
        scale = scale.reshape(scale.shape[0])  # [batch]
        if not stack_has_batch_dim:
            if scale.shape[0] != 1:
                raise ValueError(
                    f"the residual stack has no batch axis, but the cache holds {scale.shape[0]} examples whose outputs "
                    "are scaled each by its own hook_input_scale; pass a stack with its batch axis"
                )
            return scale.reshape(())
        batch_slice = batch_slice if isinstance(batch_slice, Slice) else Slice(batch_slice)
        scale = batch_slice.apply(scale, dim=0)
        return scale.reshape((1, *scale.shape) + (1,) * (ndim - 1 - scale.ndim))

    def logit_attrs(
        self,
        residual_stack: Tensor,
        tokens: Any,
        incorrect_tokens: Any = None,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
    ) -> Tensor:
        """TransformerLens's ``logit_attrs``, with output components for tokens (0 for x, 1 for p).

        Exact on every oscillator transformer: over a full decomposition
        (``get_full_resid_decomposition``) the attributions plus the unembedding bias's share sum
        to the prediction. On a ``scale_by_first_state`` model the output is the unembedding times
        each example's ``hook_input_scale``, and the attributions carry that factor, so the bias's
        share is ``b_U[i] * cache["hook_input_scale"]`` rather than ``b_U[i]``. Through an unfolded
        LayerNorm the cached-scale recipe would leave out the norm's weight and bias, so it is refused
        (see :meth:`apply_ln_to_stack`).
        """
        self._require_output_scale()
        attributions = ActivationCache.logit_attrs(
            self, residual_stack, tokens, incorrect_tokens=incorrect_tokens, pos_slice=pos_slice,
            batch_slice=batch_slice, has_batch_dim=has_batch_dim,
        )
        scale = self._output_scale(batch_slice, has_batch_dim, attributions.ndim)
        return attributions if scale is None else attributions * scale

    def logit_lens(self, **kwargs: Any) -> Any:
        """TransformerLens's one-call logit lens: every layer's residual stream read out through
        ``ln_final`` and the unembedding as a predicted state; its last entry is the model's output.

        On a ``scale_by_first_state`` model each read-out is multiplied by the example's
        ``hook_input_scale``, as the model multiplies its own output. Probabilities of a state's
        components mean nothing, and there they would not be those of the scaled read-out, so
        ``return_type`` must stay ``"logits"``.
        """
        from transformer_lens.tools.analysis.logit_lens import logit_lens

        if not self._require_output_scale():
            return logit_lens(self.model, cache=self, **kwargs)
        if kwargs.get("return_type", "logits") != "logits":
            raise ValueError(
                f"return_type={kwargs['return_type']!r}: a scale_by_first_state model's output is its unembedding times "
                "each example's hook_input_scale, a predicted state, not logits of a distribution; use return_type='logits'"
            )
        with self.model.adapter.scaled_by_cache():
            result = logit_lens(self.model, cache=self, **kwargs)
            full = logit_lens(self.model, cache=self, **{k: v for k, v in kwargs.items() if k not in ("vocab", "targets", "top_k")})
        scale = self._output_scale(kwargs.get("batch_slice"), self.has_batch_dim, result.values.ndim)
        readout = result.readout
        readout.values = readout.values * scale
        log_probs = torch.log_softmax((full.values * scale).float(), dim=-1)
        readout.entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
        return result

    def apply_ln_to_stack(
        self,
        residual_stack: Tensor,
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Tensor:
        """TransformerLens's ``apply_ln_to_stack``: what each component contributes to the input of
        ``layer`` (``n_layers``: the unembedding) after its LayerNorm.

        With cached scales it centres each component and divides it by the norm's cached scale,
        which is the whole norm only once its weight and bias are folded into what reads it
        (TransformerLens's ``fold_ln``; here :meth:`OscillatorTransformer.fold_layer_norm
        <physlens.models.OscillatorTransformer.fold_layer_norm>`). Through a norm whose weight is
        not 1 or whose bias is not 0 the parts would not sum to its output, so that is refused.
        ``recompute_ln=True`` at the unembedding runs the real ``ln_final`` on each component, as
        the logit lens does, and is always exact.
        """
        n_layers = self.model.cfg.n_layers
        target = n_layers if layer is None or layer == -1 else layer
        if not (recompute_ln and target == n_layers):
            self._check_norm_folded(target, mlp_input)
        return ActivationCache.apply_ln_to_stack(
            self, residual_stack, layer, mlp_input=mlp_input, pos_slice=pos_slice, batch_slice=batch_slice,
            has_batch_dim=has_batch_dim, recompute_ln=recompute_ln,
        )

    def _get_cached_ln_scale(self, layer: int | None, mlp_input: bool, pos_slice: Any, batch_slice: Any = None) -> Tensor:
        # TransformerLens's fused LayerNorm-and-projection path (get_full_resid_decomposition with apply_ln and
        # project_output_onto) reads the cached scale here, not through apply_ln_to_stack: the same checks apply.
        n_layers = self.model.cfg.n_layers
        if not getattr(self.model.cfg, "layer_norm", False):
            return torch.ones((), dtype=self["hook_embed"].dtype, device=self["hook_embed"].device)  # no norm: nothing to divide by
        self._check_norm_folded(n_layers if layer is None else layer, mlp_input)
        return ActivationCache._get_cached_ln_scale(self, layer, mlp_input, pos_slice, batch_slice)

    def _check_norm_folded(self, layer: int, mlp_input: bool) -> None:
        model = self.model
        if not getattr(model.cfg, "layer_norm", False):
            return
        if layer == model.cfg.n_layers:
            name, norm = "ln_final", model.ln_final
        else:
            name = f"blocks.{layer}.ln{2 if mlp_input else 1}"
            norm = model.get_submodule(name)
        w, b = getattr(norm, "w", None), getattr(norm, "b", None)
        if w is None or (bool((w == 1).all()) and bool((b == 0).all())):
            return
        raise ValueError(
            f"the cached-scale LayerNorm recipe (apply_ln_to_stack, logit_attrs, apply_ln=True) centres each part and "
            f"divides it by {name}'s cached scale, but {name} also multiplies by its weight w and adds its bias b, "
            f"so the parts would not sum to its output. Fold the norms first, model.fold_layer_norm() (TransformerLens's "
            f"fold_ln), or read the stream through the real norm with cache.logit_lens() / "
            f"accumulated_resid(apply_ln=True) at the unembedding"
        )

    accumulated_resid = _residual_stream_method(ActivationCache.accumulated_resid)
    logit_lens = _residual_stream_method(logit_lens)
    logit_attrs = _residual_stream_method(logit_attrs)
    apply_ln_to_stack = _residual_stream_method(apply_ln_to_stack)
    decompose_resid = _residual_stream_method(ActivationCache.decompose_resid)
    compute_head_results = _residual_stream_method(ActivationCache.compute_head_results)
    stack_head_results = _residual_stream_method(ActivationCache.stack_head_results)
    stack_activation = _residual_stream_method(ActivationCache.stack_activation)
    get_full_resid_decomposition = _residual_stream_method(ActivationCache.get_full_resid_decomposition)
    get_neuron_results = _residual_stream_method(ActivationCache.get_neuron_results, needs_mlp=True)
    stack_neuron_results = _residual_stream_method(ActivationCache.stack_neuron_results, needs_mlp=True)

    def ssm_layers(self, mixer_type: Any = None) -> list[int]:
        """The layers with a state-space (SSM) mixer: none, in every physlens model."""
        return []

    def compute_ssm_state(self, layer: int | None = None, time_step: int | None = None) -> Any:
        """Refused: physlens models have no state-space (SSM) layers to reconstruct a state from."""
        raise NotImplementedError(f"compute_ssm_state: {type(self.model).__name__} has no state-space (SSM) layers")

    def compute_ssm_effective_attention(self, layer: int | None = None, include_dt_scaling: bool = False, per_state_coord: bool = False) -> Any:
        """Refused: physlens models have no state-space (SSM) layers."""
        raise NotImplementedError(f"compute_ssm_effective_attention: {type(self.model).__name__} has no state-space (SSM) layers")


__all__ = ["HookedModelCache"]
