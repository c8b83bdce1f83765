"""Several Siamese towers trained at once follow, each, the trajectory one tower trained alone follows."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from physlens.models import SiameseConfig, SiameseTower
from physlens.systems import CentralPotentialSystem
from physlens.training.invariants import SiameseTrainConfig, train_siamese, train_siamese_towers


@pytest.mark.parametrize("min_gap", [0.0, 0.2])
def test_batched_towers_match_towers_trained_alone(min_gap):
    orbits = CentralPotentialSystem(dtype="float64").sample(40, 8, seed=0, random_times=True)
    cfg = SiameseConfig(d_hidden=16, n_layers=2, activation="tanh", dtype="float64")
    seeds = [3, 11, 12]
    configs = [SiameseTrainConfig(steps=60, batch_size=64, lr=5e-3, min_gap=min_gap, seed=s) for s in seeds]
    alone = [SiameseTower(dataclasses.replace(cfg, seed=s)) for s in seeds]
    alone_losses = [train_siamese(m, orbits, c, progress=False).losses for m, c in zip(alone, configs)]
    together = [SiameseTower(dataclasses.replace(cfg, seed=s)) for s in seeds]
    results = train_siamese_towers(together, orbits, configs, progress=False)
    for a, b, losses, result in zip(alone, together, alone_losses, results):
        for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
            if name == "b_out":  # it cancels in every distance: its gradient is rounding residue, which Adam scales up
                continue
            torch.testing.assert_close(pb, pa, rtol=1e-9, atol=1e-11, msg=name)
        torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(losses), rtol=1e-9, atol=1e-12)
        assert not b.training
    # the towers did train, and apart: their parameters moved, and differently
    assert not torch.equal(together[0].W_out, SiameseTower(dataclasses.replace(cfg, seed=seeds[0])).W_out)
    assert not torch.allclose(together[1].W_out, together[2].W_out)


def test_batched_towers_refuse_mismatched_configs_and_models():
    orbits = CentralPotentialSystem().sample(8, 4, seed=0)
    towers = [SiameseTower(SiameseConfig(seed=s)) for s in (0, 1)]
    with pytest.raises(ValueError, match="differ only in seed"):
        train_siamese_towers(towers, orbits, [SiameseTrainConfig(steps=2, seed=0), SiameseTrainConfig(steps=3, seed=1)], progress=False)
    with pytest.raises(ValueError, match="one length"):
        train_siamese_towers(towers, orbits, [SiameseTrainConfig(steps=2)], progress=False)
    with pytest.raises(ValueError, match="one architecture"):
        train_siamese_towers([towers[0], SiameseTower(SiameseConfig(d_hidden=8))], orbits, [SiameseTrainConfig(steps=2)] * 2, progress=False)
