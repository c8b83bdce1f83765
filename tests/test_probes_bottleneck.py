"""The bottleneck analyses on cases whose answer is known: a neuron ±ω0 with random signs, and a
network whose decoder ignores its bottleneck."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from physlens.models.siamese import BottleneckConfig, BottleneckNetwork
from physlens.probes.bottleneck import analyse_bottleneck, bottleneck_matches
from physlens.systems.oscillator import OscillatorSystem
from physlens.systems.params import Uniform
from physlens.training.invariants import oscillator_windows


def test_a_neuron_that_is_omega0_with_random_signs_matches_omega0_only_when_folded() -> None:
    rng = np.random.default_rng(0)
    omega0 = rng.uniform(1.0, 4.0, size=2000)
    signs = np.repeat([1.0, -1.0], 1000)  # half each way, so the median lies between the two branches
    matches = bottleneck_matches(signs * omega0, {"ω0": omega0, "ω0²": omega0**2, "noise": rng.normal(size=2000)})
    assert abs(matches.centre) < 1.0
    raw = {m.name: m for m in matches.raw}
    folded = {m.name: m for m in matches.folded}
    assert raw["ω0"].isotonic_r2 < 0.1 and abs(raw["ω0"].spearman) < 0.1
    assert folded["ω0"].isotonic_r2 > 0.99 and folded["ω0"].spearman > 0.99
    assert folded["ω0"].linear_r2 > 0.99 > folded["ω0²"].linear_r2  # linear in ω0, not in its square
    assert matches.folded[0].name in {"ω0", "ω0²"} and folded["noise"].isotonic_r2 < 0.1


@pytest.fixture(scope="module")
def windows():
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=0.1, energy_range=(0.1, 1.0))
    return system.sample(300, 5, seed=0)


def _network(seed: int) -> BottleneckNetwork:
    return BottleneckNetwork(BottleneckConfig(d_in=8, d_out=2, d_side=2, d_hidden=8, seed=seed))


def test_a_bottleneck_the_decoder_ignores_changes_nothing_when_mean_ablated(windows) -> None:
    model = _network(0)
    with torch.no_grad():
        model.decoder[0].W[0].zero_()  # the decoder's weights on the bottleneck neuron
    analysis = analyse_bottleneck(model, windows, 4, generator=torch.Generator().manual_seed(1))
    assert analysis.mse == pytest.approx(analysis.mse_mean_bottleneck, rel=1e-6)
    inputs, _, target = oscillator_windows(windows, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_allclose(analysis.code, model.encode(inputs)[:, 0].double().numpy())
    assert analysis.target_variance == pytest.approx(float(target.var()))
    assert list(analysis.candidates) == ["ω0", "ω0²", "Ω", "energy"]
    assert_allclose(analysis.candidates["ω0"], windows.omega0.double().numpy())
    assert_allclose(analysis.candidates["energy"], windows.labels()["energy"][:, 3].double().numpy())
    assert {m.name for m in analysis.matches.raw} == set(analysis.candidates)


def test_a_bottleneck_the_decoder_reads_changes_the_prediction_when_mean_ablated(windows) -> None:
    analysis = analyse_bottleneck(_network(0), windows, 4, generator=torch.Generator().manual_seed(1))
    assert abs(analysis.mse - analysis.mse_mean_bottleneck) > 1e-6 * analysis.mse
