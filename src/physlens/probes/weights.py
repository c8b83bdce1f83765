"""Weight-level views of attention heads: OV and QK circuits, their singular values, silent heads.

The OV circuit W_V W_O says what a head writes given what it reads; the QK circuit W_Q W_Kᵀ says
where it looks. A head whose OV circuit has (near) zero gain writes nothing to the residual stream,
as the seed found for its OLA model (W_O ≈ 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from physlens._validation import check_positive_float


def _stacked(model: Any, name: str) -> Tensor:
    weights = getattr(model, name, None)
    if not isinstance(weights, Tensor) or weights.ndim != 4:
        raise TypeError(f"model must expose stacked {name} [layer, head, ., .] as TransformerLens models do, got {type(weights).__name__}")
    return weights.detach()


@dataclass
class HeadCircuits:
    """Per-head circuits, ``[layer, head, d_model, d_model]``, and their singular values ``[layer, head, k]``.

    ``ov_gain[l, h]`` is the largest singular value of OV (the most a head can amplify any residual
    vector: attention weights are a convex combination, so a head's write is at most ``ov_gain`` times
    the largest residual norm it reads). ``silent[l, h]`` flags heads with ``ov_gain < rtol``.
    """

    ov: Tensor
    qk: Tensor
    ov_singular_values: Tensor
    qk_singular_values: Tensor
    w_o_norm: Tensor  # Frobenius norm of each head's W_O, [layer, head]
    rtol: float

    @property
    def ov_gain(self) -> Tensor:
        """Spectral norm of each OV circuit, ``[layer, head]``."""
        return self.ov_singular_values[..., 0]

    @property
    def silent(self) -> Tensor:
        """Heads that write (almost) nothing: ``ov_gain < rtol``."""
        return self.ov_gain < self.rtol

    def silent_heads(self) -> list[tuple[int, int]]:
        """(layer, head) of every silent head."""
        return [(int(layer), int(head)) for layer, head in self.silent.nonzero().tolist()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: gains, W_O norms, singular values and the silent heads."""
        return {
            "ov_gain": self.ov_gain.tolist(),
            "w_o_norm": self.w_o_norm.tolist(),
            "ov_singular_values": self.ov_singular_values.tolist(),
            "qk_singular_values": self.qk_singular_values.tolist(),
            "rtol": self.rtol,
            "silent_heads": self.silent_heads(),
        }


def head_circuits(model: Any, *, rtol: float = 1e-3) -> HeadCircuits:
    """OV = W_V W_O and QK = W_Q W_Kᵀ for every head of ``model`` (stacked ``W_Q``/``W_K``/``W_V``/``W_O``)."""
    rtol = check_positive_float("rtol", rtol)
    w_q, w_k, w_v, w_o = (_stacked(model, n).double() for n in ("W_Q", "W_K", "W_V", "W_O"))
    ov = w_v @ w_o  # [layer, head, d_model, d_model]
    qk = w_q @ w_k.transpose(-1, -2)
    return HeadCircuits(
        ov=ov,
        qk=qk,
        ov_singular_values=torch.linalg.svdvals(ov),
        qk_singular_values=torch.linalg.svdvals(qk),
        w_o_norm=torch.linalg.matrix_norm(w_o),
        rtol=rtol,
    )


def full_ov_circuit(model: Any) -> Tensor:
    """W_E · OV · W_U per head, ``[layer, head, d_in, d_in]``: how a head maps input states to output
    states if it attended to a single position (ignores earlier layers' writes and layer norms)."""
    w_e, w_u = model.W_E.detach().double(), model.W_U.detach().double()
    return w_e @ head_circuits(model).ov @ w_u


def singular_values(matrix: Tensor | np.ndarray) -> Tensor:
    """Singular values (descending) of a matrix or a batch of matrices."""
    return torch.linalg.svdvals(torch.as_tensor(matrix).double())


__all__ = ["HeadCircuits", "full_ov_circuit", "head_circuits", "singular_values"]
