"""The hooked base class every physlens model shares, and the registry that checkpoints load from.

Models subclass :class:`HookedModel` (a TransformerLens ``HookedRootModule``) so ``run_with_cache``,
``run_with_hooks``, ``hooks()`` and ``transformer_lens.patching`` work on them, with hook names
checked up front instead of failing with a bare ``KeyError``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

import torch
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

MODEL_REGISTRY: dict[str, type[HookedModel]] = {}
"""Model classes by name, so a checkpoint's JSON config can name the class to rebuild."""

M = TypeVar("M", bound="type[HookedModel]")


def register_model(cls: M) -> M:
    """Class decorator: make ``cls`` loadable from checkpoints under its class name."""
    if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
        raise TypeError(f"{cls.__name__} must define config_class as a dataclass to be registered")
    MODEL_REGISTRY[cls.__name__] = cls
    return cls


class HookedModel(HookedRootModule):
    """A ``HookedRootModule`` built from a dataclass config, with hook-name validation.

    Subclasses set ``config_class``, build their layers from ``cfg`` in ``__init__`` and call
    ``self.setup()`` last.
    """

    config_class: ClassVar[type]

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

    def run_with_cache(self, *model_args: Any, names_filter: Any = None, **kwargs: Any) -> tuple[Any, dict]:
        """TransformerLens's ``run_with_cache``, refusing hook names this model does not have."""
        if isinstance(names_filter, str) or (
            isinstance(names_filter, (list, tuple)) and all(isinstance(n, str) for n in names_filter)
        ):
            self.check_hook_names(names_filter)
        return super().run_with_cache(*model_args, names_filter=names_filter, **kwargs)

    def config_dict(self) -> dict[str, Any]:
        """The model's config as a JSON-ready dict."""
        return dataclasses.asdict(self.cfg)

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


__all__ = ["MODEL_REGISTRY", "HookPoint", "HookedModel", "register_model"]
