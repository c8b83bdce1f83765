"""OV/QK circuits, singular values, silent heads."""

from __future__ import annotations

import torch

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.probes.weights import full_ov_circuit, head_circuits, singular_values


def test_circuits_match_weights_and_flag_silent_heads():
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, dtype="float64")
    model = OscillatorTransformer(cfg)
    with torch.no_grad():
        model.blocks[0].attn.W_O[1] = 1e-6 * model.blocks[0].attn.W_O[1]
    circuits = head_circuits(model, rtol=1e-3)
    torch.testing.assert_close(circuits.ov[1, 0], model.blocks[1].attn.W_V[0] @ model.blocks[1].attn.W_O[0])
    torch.testing.assert_close(circuits.qk[0, 1], model.blocks[0].attn.W_Q[1] @ model.blocks[0].attn.W_K[1].T)
    torch.testing.assert_close(circuits.ov_gain, torch.linalg.matrix_norm(circuits.ov, ord=2))
    assert circuits.silent_heads() == [(0, 1)]
    assert circuits.to_dict()["silent_heads"] == [(0, 1)]
    assert full_ov_circuit(model).shape == (2, 2, 2, 2)
    torch.testing.assert_close(singular_values(torch.diag(torch.tensor([3.0, -5.0]))), torch.tensor([5.0, 3.0], dtype=torch.float64))
