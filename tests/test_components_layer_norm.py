"""The LayerNorm component equals torch.nn.functional.layer_norm, and its hooks hold the scale and the normalised stream."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from physlens.models.components import LayerNorm
from physlens.models.transformer_config import TransformerConfig


def test_layer_norm_is_torch_layer_norm(seed: int) -> None:
    cfg = TransformerConfig(d_model=5, dtype="float64")
    norm = LayerNorm(cfg)
    with torch.no_grad():
        norm.w.normal_(generator=torch.Generator().manual_seed(seed))
        norm.b.normal_(generator=torch.Generator().manual_seed(seed + 1))
    x = 3 * torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64) + 2
    torch.testing.assert_close(norm(x), F.layer_norm(x, (5,), norm.w, norm.b, eps=norm.eps), rtol=1e-12, atol=1e-12)
    head_copies = x[:, :, None].expand(-1, -1, 2, -1)  # [batch, pos, head, d_model], as ln1 sees split inputs
    torch.testing.assert_close(norm(head_copies), F.layer_norm(head_copies, (5,), norm.w, norm.b, eps=norm.eps))


def test_the_hooks_hold_the_scale_and_the_normalised_stream(seed: int) -> None:
    norm = LayerNorm(TransformerConfig(d_model=5, dtype="float64"))
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    seen = {}
    norm.hook_scale.add_hook(lambda act, hook: seen.__setitem__("scale", act))
    norm.hook_normalized.add_hook(lambda act, hook: seen.__setitem__("normalized", act))
    norm(x)
    torch.testing.assert_close(seen["scale"], (x.var(dim=-1, unbiased=False, keepdim=True) + norm.eps).sqrt())
    torch.testing.assert_close(seen["normalized"], F.layer_norm(x, (5,), eps=norm.eps))


def test_folding_into_readers_keeps_what_they_read(seed: int) -> None:
    """bias += b @ W, W *= w, then centred: the readers' outputs from the bare normalised stream equal
    their outputs from the full norm before folding, and a reader without a bias refuses a nonzero b."""
    cfg = TransformerConfig(d_model=5, dtype="float64")
    norm = LayerNorm(cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.w.uniform_(0.5, 2.0, generator=generator)
        norm.b.uniform_(-1.0, 1.0, generator=generator)
    heads_weight = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64)
    heads_bias = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    plain_weight, plain_bias = torch.randn(5, 4, generator=generator, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    x = torch.randn(3, 6, 5, generator=generator, dtype=torch.float64)
    normed = norm(x)
    before = (torch.einsum("bpd,hde->bphe", normed, heads_weight) + heads_bias, normed @ plain_weight + plain_bias)
    with torch.no_grad():
        norm.fold_into([(heads_weight, heads_bias), (plain_weight, plain_bias)])
    assert bool((norm.w == 1).all()) and bool((norm.b == 0).all())
    normed = norm(x)
    torch.testing.assert_close(torch.einsum("bpd,hde->bphe", normed, heads_weight) + heads_bias, before[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(normed @ plain_weight + plain_bias, before[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain_weight.mean(dim=0), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-15)
    with torch.no_grad():
        norm.b.fill_(0.5)
        with pytest.raises(ValueError, match="bias"):
            norm.fold_into([(plain_weight, None)])
