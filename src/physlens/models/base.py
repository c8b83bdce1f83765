"""The hooked base class every physlens model shares, and the registry that checkpoints load from.

Models subclass :class:`HookedModel` (a TransformerLens ``HookedRootModule``) so ``run_with_cache``
(returning a TransformerLens ``ActivationCache``), ``run_with_hooks`` and ``hooks()`` work on them,
with hook names checked up front instead of failing with a bare ``KeyError``, and with
TransformerLens patching sweeps that would misread continuous inputs refused instead of run.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import sys
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor
from transformer_lens import patching as tl_patching
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from physlens._validation import dtype_name
from physlens.models.cache import HookedModelCache

MODEL_REGISTRY: dict[str, type[HookedModel]] = {}
"""Model classes by name, so a checkpoint's JSON config can name the class to rebuild."""

M = TypeVar("M", bound="type[HookedModel]")


def register_model(cls: M) -> M:
    """Class decorator: make ``cls`` loadable from checkpoints under its class name."""
    if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
        raise TypeError(f"{cls.__name__} must define config_class as a dataclass to be registered")
    MODEL_REGISTRY[cls.__name__] = cls
    return cls


POSITION_AXES = ("pos", "dest_pos", "src_pos")
"""Index axes of ``transformer_lens.patching`` sweeps that count sequence positions."""


class HookedModel(HookedRootModule):
    """A ``HookedRootModule`` built from a dataclass config, with hook-name validation.

    Subclasses set ``config_class``, build their layers from ``cfg`` in ``__init__`` and call
    ``self.setup()`` last. Models come out of ``setup()`` in eval mode, as TransformerLens's loaders
    return them (none of them has dropout or batch norm, so the mode changes no number); training
    switches to train mode itself.

    Class attributes describe the layout TransformerLens's tools assume: ``input_position_axis`` is
    the axis of the input that counts sequence positions (None: no positions), and
    ``has_residual_stream`` says whether the model has TransformerLens's transformer layout
    (``blocks.{l}.hook_resid_pre`` ...), which the residual-stream methods of the cache need.
    """

    config_class: ClassVar[type]
    input_position_axis: ClassVar[int | None] = None
    has_residual_stream: ClassVar[bool] = False
    unpositioned_hooks: ClassVar[tuple[str, ...]] = ()  # hooks with no position axis, which pos_slice leaves whole

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"cfg must be a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg

    @property
    def hook_names(self) -> list[str]:
        """Every hook point's name, in the order the forward pass reaches them."""
        return list(self.hook_dict)

    def check_hook_names(self, names: Iterable[str]) -> list[str]:
        """Return ``names`` as a list, raising a ``ValueError`` that suggests close matches for any
        name that is not a hook point of this model."""
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            if name not in self.hook_dict:
                close = difflib.get_close_matches(name, self.hook_dict, n=3)
                hint = f"; did you mean {close}?" if close else f"; valid names are {self.hook_names}"
                raise ValueError(f"unknown hook name {name!r} for {type(self).__name__}{hint}")
        return names

    def _enable_hook(self, name: str | Callable[[str], bool], hook: Callable, dir: str) -> None:  # noqa: A002
        if isinstance(name, str):
            self.check_hook_names([name])
        super()._enable_hook(name=name, hook=hook, dir=dir)

    def add_hook(self, name: str | Callable[[str], bool], hook: Callable, *args: Any, **kwargs: Any) -> None:
        """TransformerLens's ``add_hook``, with a misspelt hook name refused by a ``ValueError`` that
        names it and suggests close matches (instead of a bare ``KeyError``)."""
        if isinstance(name, str):
            self.check_hook_names([name])
        elif not callable(name):
            raise TypeError(f"name must be a hook name or a function of hook names, got {type(name).__name__}")
        super().add_hook(name, hook, *args, **kwargs)

    def setup(self) -> None:
        """TransformerLens's ``setup`` (names every module and hook point), then eval mode."""
        super().setup()
        self.eval()

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: Any = None,
        device: Any = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice: Any = None,
        return_cache_object: bool = True,
        **model_kwargs: Any,
    ) -> tuple[Any, HookedModelCache | dict[str, Tensor]]:
        """TransformerLens's ``run_with_cache``: the model's output and a TransformerLens
        ``ActivationCache`` (a :class:`~physlens.models.cache.HookedModelCache`) of every hook point
        that passes ``names_filter``.

        Hook names this model does not have are refused. ``incl_bwd=True`` also caches the
        gradient of the output at every hook (as ``<name>_grad``), which needs a scalar output: on
        the oscillator transformer pass ``return_type="loss"`` and ``targets``. ``pos_slice``
        keeps some positions only, so it needs a model with positions; hooks without a position axis
        (``unpositioned_hooks``, e.g. ``hook_input_scale``) are kept whole. ``return_cache_object=False``
        returns the plain dict of activations instead of the cache, as in TransformerLens.
        """
        if isinstance(names_filter, str) or (
            isinstance(names_filter, (list, tuple)) and all(isinstance(n, str) for n in names_filter)
        ):
            self.check_hook_names(names_filter)
            names_filter = [names_filter] if isinstance(names_filter, str) else list(names_filter)
        if pos_slice is not None and self.input_position_axis is None:
            raise ValueError(f"pos_slice keeps some positions, but {type(self).__name__}'s activations have no position axis")
        if remove_batch_dim and model_args and isinstance(model_args[0], Tensor):
            batch = model_args[0].shape[0] if model_args[0].ndim > 0 else 1
            if batch != 1:
                raise ValueError(f"remove_batch_dim=True needs a batch of one example, got {batch}")
        unpositioned = [name for name in self.unpositioned_hooks if name in self.hook_dict]
        if pos_slice is not None and unpositioned:
            keep = _as_name_filter(names_filter)
            cache_dict, fwd_hooks, bwd_hooks = self.get_caching_hooks(
                lambda name: keep(name) and name not in unpositioned, incl_bwd, device,
                remove_batch_dim=remove_batch_dim, pos_slice=pos_slice,
            )
            whole, more_fwd, more_bwd = self.get_caching_hooks(
                lambda name: keep(name) and name in unpositioned, incl_bwd, device, remove_batch_dim=remove_batch_dim
            )
            fwd_hooks, bwd_hooks = fwd_hooks + more_fwd, bwd_hooks + more_bwd
        else:
            whole = {}
            cache_dict, fwd_hooks, bwd_hooks = self.get_caching_hooks(
                names_filter, incl_bwd, device, remove_batch_dim=remove_batch_dim, pos_slice=pos_slice
            )
        with self.hooks(fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks, reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts):
            output = self(*model_args, **model_kwargs)
            if incl_bwd:
                if not isinstance(output, Tensor) or output.ndim != 0:
                    shape = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
                    raise ValueError(
                        f"incl_bwd=True backpropagates the model's output, which must then be a scalar; "
                        f"{type(self).__name__} returned {shape}. "
                        + self._scalar_output_hint()
                    )
                output.backward()
        cache_dict.update(whole)
        if not return_cache_object:
            return output, cache_dict
        return output, HookedModelCache(cache_dict, self, has_batch_dim=not remove_batch_dim)

    def _scalar_output_hint(self) -> str:
        return "For the gradient of a metric of your choice use physlens.probes.activation_gradients(model, inputs, metric, names)."

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: list = [],  # noqa: B006 - TransformerLens's signature; never mutated
        bwd_hooks: list = [],  # noqa: B006
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs: Any,
    ) -> Any:
        """TransformerLens's ``run_with_hooks``, refusing hook names this model does not have, and
        refusing to serve a ``transformer_lens.patching`` sweep that counts positions on the wrong
        input axis (see :meth:`check_patching_call`)."""
        self.check_patching_call(_enclosing_patching_sweep(model_args[0] if model_args else None))
        return super().run_with_hooks(
            *model_args, fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks, reset_hooks_end=reset_hooks_end,
            clear_contexts=clear_contexts, **model_kwargs,
        )

    def check_patching_call(self, frame: FrameType | None) -> None:
        """Raise if ``frame`` is ``transformer_lens.patching.generic_activation_patch`` sweeping
        positions it counted on the input's last axis.

        TransformerLens takes the number of positions from ``corrupted_tokens.shape[-1]``, right for
        token ids ``[batch, pos]``. Continuous inputs ``[batch, pos, d_in]`` hold their positions on
        axis 1 and the state's components on the last axis, so such a sweep would patch positions
        ``0 .. d_in - 1`` only and report a grid of the wrong shape. Sweeps over explicit cells
        (``index_df``) or over layers and heads only are unaffected and run.
        """
        if frame is None or frame.f_code is not tl_patching.generic_activation_patch.__code__:
            return
        if self.input_position_axis is None:
            return
        scope = frame.f_locals
        axes = tuple(scope.get("index_axis_names") or ())
        if scope.get("flattened_output", True) or not set(axes) & set(POSITION_AXES):
            return
        inputs = scope.get("corrupted_tokens")
        axis = self.input_position_axis
        if not isinstance(inputs, Tensor) or inputs.ndim <= axis:
            return  # not this model's input: the forward pass refuses it with its own message
        helper = _transformer_lens_helper(scope.get("activation_name"), axes)
        if helper is not None:
            name, instead = f"transformer_lens.patching.{helper}", f"use physlens.probes.patching.{helper} (same arguments)"
        else:
            name, instead = "transformer_lens.patching.generic_activation_patch", "pass index_df with the cells to patch instead of index_axis_names"
        raise ValueError(
            f"{name} reads the number of positions from the input's last axis, but {type(self).__name__} takes "
            f"continuous inputs {list(inputs.shape)} with {inputs.shape[axis]} positions on axis {axis} and the state's "
            f"{inputs.shape[-1]} components on the last axis, so it would patch positions 0..{inputs.shape[-1] - 1} only. "
            f"Instead, {instead}, which counts positions on axis {axis}."
        )

    def to_tokens(self, *args: Any, **kwargs: Any) -> Tensor:
        """Refused: physlens models read continuous states, there is no text to tokenize. (Having the
        method makes the model a TransformerLens ``TransformerLensModel``, whose tools then fail
        here, loudly, when they need tokens.)"""
        raise NotImplementedError(
            f"{type(self).__name__} reads continuous states, not tokens; TransformerLens tools that tokenize text "
            "(to_tokens, head_detector, string prompts) do not apply. Pass the input tensor itself."
        )

    def to_str_tokens(self, *args: Any, **kwargs: Any) -> list[str]:
        """Refused, as :meth:`to_tokens`: there are no tokens to name."""
        self.to_tokens()
        return []

    def config_dict(self) -> dict[str, Any]:
        """The model's config as a JSON-ready dict (a torch dtype as its name, ``"float32"``)."""
        return {name: dtype_name(value) if isinstance(value, torch.dtype) else value
                for name, value in dataclasses.asdict(self.cfg).items()}

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> HookedModel:
        """Build a freshly initialised model from :meth:`config_dict` output."""
        known = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"config for {cls.__name__} has unknown fields {unknown}; expected some of {sorted(known)}")
        return cls(cls.config_class(**config))

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.parameters()).device


def _as_name_filter(names_filter: Any) -> Callable[[str], bool]:
    """``run_with_cache``'s ``names_filter`` (None, a name, a list of names or a function) as a function."""
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if isinstance(names_filter, (list, tuple)):
        return lambda name: name in names_filter
    if callable(names_filter):
        return names_filter
    raise ValueError(f"names_filter must be a hook name, a list of names or a function, got {type(names_filter).__name__}")


def _enclosing_patching_sweep(inputs: Any) -> FrameType | None:
    """The frame of the ``transformer_lens.patching.generic_activation_patch`` call that runs the
    model on ``inputs``, if any: the nearest one up the stack, however many wrappers (a runtime type
    checker's, a subclass's override of ``run_with_hooks``) sit between it and the model, and only
    if ``inputs`` is that sweep's own input (not a model called from inside another model's sweep).

    Only that frame knows whether the sweep's positions were counted from the input's last axis
    (``index_axis_names``) or given as cells (``index_df``): the model is called with the input and
    the hooks alone, which are the same either way.
    """
    frame = sys._getframe(1)
    sweep = tl_patching.generic_activation_patch.__code__
    while frame is not None and frame.f_code is not sweep:
        frame = frame.f_back
    if frame is None or inputs is None or frame.f_locals.get("corrupted_tokens") is not inputs:
        return None
    return frame


@functools.cache
def _transformer_lens_helpers() -> dict[tuple[str, tuple[str, ...]], str]:
    """TransformerLens's named sweeps (partials of ``generic_activation_patch``) by (activation, axes)."""
    helpers = {}
    for name, obj in vars(tl_patching).items():
        if isinstance(obj, functools.partial) and obj.func is tl_patching.generic_activation_patch:
            keywords = obj.keywords
            helpers[(keywords.get("activation_name"), tuple(keywords.get("index_axis_names") or ()))] = name
    return helpers


def _transformer_lens_helper(activation_name: Any, axes: tuple[str, ...]) -> str | None:
    return _transformer_lens_helpers().get((activation_name, axes))


__all__ = ["MODEL_REGISTRY", "HookPoint", "HookedModel", "register_model"]
