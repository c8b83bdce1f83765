"""``torch.compile`` where a compiler exists, and the eager callable, with a warning that says why, where none does."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


def compiler_unavailable_reason(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` cannot generate code for ``device`` here (``None`` when it can)."""
    device = torch.device(device)
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception as error:  # InvalidCxxCompiler, or a torch built without Inductor
            return f"torch.compile needs a C++ compiler for the CPU and found none ({type(error).__name__}: {error})"
    elif device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch.compile needs triton for the GPU (pip install triton)"
    return None


def compile_or_eager(fn: F, device: torch.device | str, what: str) -> F:
    """``torch.compile(fn)`` for fixed shapes, or ``fn`` itself with a warning naming ``what`` runs eagerly and why."""
    reason = compiler_unavailable_reason(device)
    if reason is not None:
        warnings.warn(f"{what} runs eagerly: {reason}", stacklevel=3)
        return fn
    return torch.compile(fn, dynamic=False)
