"""TransformerLens's ``model.embed``, ``model.pos_embed`` and ``model.unembed``: the model's own weights, callable.

The weights stay parameters of the model itself (``W_E``, ``W_pos``, ``W_U`` …, the names its
checkpoints hold); these are views of them that apply them as TransformerLens's components do.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor


class Embed:
    """``model.embed``: ``W_E`` (and ``b_E``, None for no bias), and ``embed(states) = states @ W_E + b_E``."""

    def __init__(self, W_E: Float[Tensor, "d_in d_model"], b_E: Float[Tensor, " d_model"] | None) -> None:  # noqa: N803
        self.W_E, self.b_E = W_E, b_E

    def __call__(self, states: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_model"]:
        """Each state written into the residual stream."""
        out = states @ self.W_E
        return out if self.b_E is None else out + self.b_E


class PosEmbed:
    """``model.pos_embed``: ``W_pos``, and ``pos_embed(states)`` its rows for the input's positions."""

    def __init__(self, W_pos: Float[Tensor, "n_ctx d_model"]) -> None:  # noqa: N803
        self.W_pos = W_pos

    def __call__(self, states: Float[Tensor, "batch pos d_in"]) -> Float[Tensor, "batch pos d_model"]:
        """``W_pos[:pos]`` for every example, ``[batch, pos, d_model]``: a tensor of its own, not a view of ``W_pos``."""
        batch, n_pos = states.shape[:2]
        # expand is a stride-0 view of W_pos: as is, an in-place edit of the result would rewrite the
        # parameter (and every example at once), TransformerLens's issue #157, which it fixed the same way.
        return self.W_pos[:n_pos].expand(batch, n_pos, -1).clone()


class Unembed:
    """``model.unembed``: ``W_U`` and ``b_U``, and ``unembed(resid) = resid @ W_U + b_U``."""

    def __init__(self, W_U: Float[Tensor, "d_model d_out"], b_U: Float[Tensor, " d_out"]) -> None:  # noqa: N803
        self.W_U, self.b_U = W_U, b_U

    def __call__(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_out"]:
        """A residual-stream vector read out as a state."""
        return resid @ self.W_U + self.b_U


__all__ = ["Embed", "PosEmbed", "Unembed"]
