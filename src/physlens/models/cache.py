"""TransformerLens's ``ActivationCache`` for physlens models: what ``run_with_cache`` returns.

Every method that makes sense for a model without token embeddings runs TransformerLens's own
code; the rest raise an error that says why, instead of an ``AttributeError`` from deep inside.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from transformer_lens.ActivationCache import ActivationCache


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

    accumulated_resid = _residual_stream_method(ActivationCache.accumulated_resid)
    logit_lens = _residual_stream_method(ActivationCache.logit_lens)
    logit_attrs = _residual_stream_method(ActivationCache.logit_attrs)
    decompose_resid = _residual_stream_method(ActivationCache.decompose_resid)
    compute_head_results = _residual_stream_method(ActivationCache.compute_head_results)
    stack_head_results = _residual_stream_method(ActivationCache.stack_head_results)
    stack_activation = _residual_stream_method(ActivationCache.stack_activation)
    apply_ln_to_stack = _residual_stream_method(ActivationCache.apply_ln_to_stack)
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
