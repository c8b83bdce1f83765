"""Formulas of what networks compute, on networks whose formula is known: the hand-crafted mode-3
F = m·a network, and an attention-only transformer that is linear in the current state."""

from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch
from numpy.testing import assert_allclose

from physlens.models.mlp import EnsembleConfig, MLPEnsemble
from physlens.models.transformer import OscillatorTransformer, preset_config
from physlens.probes.mechanisms import handcrafted_mode3_network
from physlens.probes.network_formulas import mode_formulas, probe_value_formula, relu_network_form
from physlens.systems.fma import fma_splits
from physlens.systems.oscillator import OscillatorSystem, propagator


def _inputs(n: int = 400, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(seed)) * 1.5 + 0.25


def test_the_exact_form_of_the_handcrafted_mode3_network_is_its_weights() -> None:
    network = handcrafted_mode3_network()
    form = relu_network_form(network, _inputs())
    m, a = sympy.symbols("m a")
    assert len(form.atoms(sympy.Max)) == 2  # one kink per hidden unit
    inputs = _inputs(200, seed=1)
    values = sympy.lambdify((m, a), form, "numpy")(inputs[:, 0].double().numpy(), inputs[:, 1].double().numpy())
    with torch.no_grad():
        output = network(inputs)[:, 0].double().numpy()
    assert_allclose(values, output, atol=2e-3)  # numbers kept to 4 significant digits
    with torch.no_grad():
        assert float(form.subs({m: 0, a: 0})) == pytest.approx(float(network(torch.zeros(1, 2))[0, 0]), abs=1e-3)


def test_mode_formulas_take_each_modes_best_network() -> None:
    random = MLPEnsemble(EnsembleConfig(seeds=[0, 1]))
    ensemble = MLPEnsemble.from_members([random.member(0), handcrafted_mode3_network(), random.member(1)])
    val_inputs = fma_splits([0, 1, 2], "product", n_train=10, n_val=300).val_inputs
    val_loss = torch.tensor([0.5, 0.1, 0.2])
    formulas = mode_formulas(ensemble, val_inputs, val_loss, np.array(["3", "3", "2"]), max_terms=2, max_degree=2, unary=())
    assert [(f.mode, f.count, f.member) for f in formulas] == [("2", 1, 2), ("3", 2, 1)]
    assert formulas[1].val_mse == pytest.approx(0.1)
    assert formulas[1].exact_form == relu_network_form(handcrafted_mode3_network(), val_inputs[1])
    # the best mode-3 network is the hand-crafted multiplier: on the data it was tuned for, its compact formula is m·a
    m, a = sympy.symbols("m a")
    assert float(formulas[1].distiller.expression_.coeff(m * a)) == pytest.approx(1.0, abs=0.02)


def test_a_probe_of_a_linear_transformer_recovers_the_propagator() -> None:
    # with attention to the current step only, the last residual is an affine map of (x, p): the
    # probe for the next x reads it exactly, and its value is the propagator's first row
    model = OscillatorTransformer(preset_config("OLA", attn_window=1, seed=0))
    system = OscillatorSystem(omega0=2.0, gamma=0.1)
    inputs, targets = system.sample(400, 11, seed=0).inputs_targets()
    found = probe_value_formula(model, inputs, targets[:, -1, 0], hook="blocks.0.hook_resid_post", seed=0, max_terms=2, max_degree=1, unary=())
    assert found.probe.cv_r2_ > 0.9999
    x, p = sympy.symbols("x p")
    row = propagator(2.0, 0.1, system.dt)[0].tolist()
    expression = found.distiller.expression_
    assert float(expression.coeff(x)) == pytest.approx(row[0], abs=2e-3)
    assert float(expression.coeff(p)) == pytest.approx(row[1], abs=2e-3)
