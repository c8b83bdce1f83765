"""The residual block: attention, then (optionally) an MLP, each read through its norm and added to the stream."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from physlens.models.components.attention import Attention
from physlens.models.components.mlp import MLP


class Block(nn.Module):
    """Residual block assembled from its components: ``ln1`` → ``attn``, then (when ``mlp`` is given)
    ``ln2`` → ``mlp``, each added to the stream. A norm left None is the identity."""

    # TransformerLens's readout tools (logit_lens) check that hook_resid_post is the one residual stream.
    hook_out_is_single_residual_stream = True

    def __init__(
        self, attn: Attention, mlp: MLP | None = None, ln1: nn.Module | None = None, ln2: nn.Module | None = None
    ) -> None:
        super().__init__()
        if mlp is None and ln2 is not None:
            raise ValueError("ln2 normalises the MLP's input, but this block has no mlp: pass mlp too, or no ln2")
        self.attn_only = mlp is None
        self.ln1 = ln1 if ln1 is not None else nn.Identity()
        self.attn = attn
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]
        if mlp is not None:
            self.ln2 = ln2 if ln2 is not None else nn.Identity()
            self.mlp = mlp
            self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
            self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """One block: ``resid + attn(ln1(resid))``, then ``+ mlp(ln2(·))``."""
        # resid is the previous block's hook_resid_post (or hook_embed) itself: a copy keeps an in-place
        # edit here out of that activation (and out of a cache holding it).
        resid = self.hook_resid_pre(resid.clone())
        resid = resid + self.hook_attn_out(self.attn(resid, self.ln1))
        if not self.attn_only:
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)


__all__ = ["Block"]
