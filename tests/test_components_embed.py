"""The embedding views apply the model's own weights: states @ W_E + b_E, W_pos rows, resid @ W_U + b_U."""

from __future__ import annotations

import torch

from physlens.models.components import Embed, PosEmbed, Unembed


def test_embed_unembed_and_pos_embed_by_hand(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    W_E, b_E = torch.randn(2, 5, generator=generator, dtype=torch.float64), torch.randn(5, generator=generator, dtype=torch.float64)  # noqa: N806
    W_U, b_U = torch.randn(5, 2, generator=generator, dtype=torch.float64), torch.randn(2, generator=generator, dtype=torch.float64)  # noqa: N806
    W_pos = torch.randn(8, 5, generator=generator, dtype=torch.float64)  # noqa: N806
    states = torch.randn(3, 4, 2, generator=generator, dtype=torch.float64)
    embedded = Embed(W_E, b_E)(states)
    for b in range(3):
        for p in range(4):
            torch.testing.assert_close(embedded[b, p], states[b, p, 0] * W_E[0] + states[b, p, 1] * W_E[1] + b_E)
    torch.testing.assert_close(Embed(W_E, None)(states), embedded - b_E)
    torch.testing.assert_close(Unembed(W_U, b_U)(embedded), torch.einsum("bpd,dc->bpc", embedded, W_U) + b_U)
    positions = PosEmbed(W_pos)(states)
    assert positions.shape == (3, 4, 5)
    for b in range(3):
        torch.testing.assert_close(positions[b], W_pos[:4])


def test_pos_embed_is_its_own_tensor() -> None:
    W_pos = torch.zeros(6, 3)  # noqa: N806
    positions = PosEmbed(W_pos)(torch.zeros(2, 4, 2))
    positions[0, 0] += 1.0  # an in-place edit, as a hook may make
    assert not bool(W_pos.any()) and not bool(positions[1].any())
