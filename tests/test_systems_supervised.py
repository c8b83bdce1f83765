"""The SupervisedSystem / SupervisedSplit protocols: FmaSystem draws exactly what the F = m·a functions
draw, and a user's own split class (here the law m + a, defined in this file, outside the library)
trains the one- and many-layer MLP ensembles without any change to physlens."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from physlens.models.mlp import DeepEnsembleConfig, DeepMLPEnsemble, EnsembleConfig, MLPConfig, MLPEnsemble, TinyMLP
from physlens.systems import (
    FmaSplit,
    FmaSystem,
    SupervisedSplit,
    SupervisedSystem,
    check_supervised_split,
    check_supervised_system,
    fma_split,
    fma_splits,
    sample_fma,
)
from physlens.training.deep import train_deep_ensemble
from physlens.training.ensemble import EnsembleTrainConfig, train_ensemble, train_mlp


@dataclass(frozen=True)
class SumSplit:
    """A user's split for the law y = m + a: stacked ``[model, n, 2]`` inputs, ``[model, n, 1]`` targets."""

    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    val_inputs: torch.Tensor
    val_targets: torch.Tensor

    @property
    def n_models(self) -> int | None:
        return self.train_inputs.shape[0] if self.train_inputs.ndim == 3 else None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> SumSplit:
        return SumSplit(*(t.to(device=device, dtype=dtype) for t in
                          (self.train_inputs, self.train_targets, self.val_inputs, self.val_targets)))


def sum_split(n_models: int, n_train: int, n_val: int, seed: int) -> SumSplit:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand(n_models, n_train + n_val, 2, generator=generator, dtype=torch.float64)
    targets = inputs.sum(-1, keepdim=True)
    return SumSplit(inputs[:, :n_train], targets[:, :n_train], inputs[:, n_train:], targets[:, n_train:])


@pytest.mark.parametrize("distribution", ["uniform", "product"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fma_system_draws_exactly_what_the_fma_functions_draw(distribution, dtype):
    system = FmaSystem(distribution, dtype=dtype)
    assert isinstance(system, SupervisedSystem) and check_supervised_system(system) is system
    drawn = system.sample(50, generator=torch.Generator().manual_seed(7))
    expected = sample_fma(50, distribution, generator=torch.Generator().manual_seed(7), dtype=dtype)
    assert all(torch.equal(a, b) for a, b in zip(drawn, expected))
    assert all(torch.equal(a, b) for a, b in zip(system.sample(9, seed=3), sample_fma(9, distribution, seed=3, dtype=dtype)))
    fields = ("train_inputs", "train_targets", "val_inputs", "val_targets")
    pairs = [(system.split(4, n_train=30, n_val=10), fma_split(4, distribution, n_train=30, n_val=10, dtype=dtype)),
             (system.splits([1, 5], n_train=30, n_val=10), fma_splits([1, 5], distribution, n_train=30, n_val=10, dtype=dtype))]
    for got, want in pairs:
        assert isinstance(got, SupervisedSplit) and got.distribution == distribution
        assert all(torch.equal(getattr(got, f), getattr(want, f)) for f in fields)
    assert pairs[1][0].n_models == 2 and pairs[0][0].n_models is None


def test_fma_system_round_trips_through_json_and_moves_dtype_with_the_same_draws():
    system = FmaSystem("uniform", dtype="float32")
    restored = FmaSystem.from_dict(json.loads(json.dumps(system.to_dict())))
    assert restored == system and restored.to_dict() == {"distribution": "uniform", "target": "force",
                                                         "dtype": "float32", "device": "cpu"}
    wide = system.to(dtype=torch.float64)
    assert wide.dtype == "float64" and system.dtype == "float32" and wide.distribution == "uniform"
    inputs, targets = wide.sample(20, seed=2)
    assert inputs.dtype == torch.float64
    narrow = system.sample(20, seed=2)
    assert torch.equal(inputs.float(), narrow[0]) and torch.equal(targets.float(), narrow[1])
    assert torch.equal(targets[:, 0], inputs[:, 0] * inputs[:, 1])  # the target "force" is F = m·a


def test_bad_fma_system_input_is_refused_by_name():
    with pytest.raises(ValueError, match="distribution must be one of"):
        FmaSystem("gaussian")
    with pytest.raises(ValueError, match="target must be one of"):
        FmaSystem(target="mass")
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        FmaSystem(dtype="int64")
    with pytest.raises(ValueError, match="unknown keys \\['distrbution'\\].*did you mean 'distribution'"):
        FmaSystem.from_dict({"distrbution": "uniform"})
    with pytest.raises(ValueError, match="target must be one of"):
        FmaSystem.from_dict({"target": "sum"})
    with pytest.raises(ValueError, match="exactly one of seed"):
        FmaSystem().sample(4)
    with pytest.raises(TypeError, match=r"system must implement physlens.systems.SupervisedSystem; .* lacks \['split'"):
        check_supervised_system(type("Half", (), {"dtype": "float32", "device": "cpu", "sample": None})())


def test_fma_split_and_a_user_split_implement_the_split_protocol():
    assert isinstance(fma_split(0, n_train=4, n_val=2), SupervisedSplit)
    user = sum_split(2, 6, 3, seed=0)
    assert isinstance(user, SupervisedSplit) and not isinstance(user, FmaSplit)
    assert check_supervised_split(user) is user
    assert not isinstance({"train_inputs": torch.zeros(2, 3)}, SupervisedSplit)


def test_check_supervised_split_names_the_argument_and_what_is_wrong():
    with pytest.raises(TypeError, match=r"split must implement physlens.systems.SupervisedSplit, as FmaSplit does; "
                                        r"dict lacks \['train_inputs', 'train_targets', 'val_inputs', 'val_targets', 'n_models', 'to'\]"):
        check_supervised_split({}, "split")
    good = sum_split(2, 6, 3, seed=0)
    fields = dict(train_inputs=good.train_inputs, train_targets=good.train_targets,
                  val_inputs=good.val_inputs, val_targets=good.val_targets)
    with pytest.raises(ValueError, match=r"data.train_targets must have shape \[model, n, 1\]"):
        check_supervised_split(SumSplit(**{**fields, "train_targets": good.train_targets.expand(2, 6, 2)}))
    with pytest.raises(ValueError, match=r"data.val_inputs must have shape \[model, n, 2\]"):
        check_supervised_split(SumSplit(**{**fields, "val_inputs": good.val_inputs[0]}))
    with pytest.raises(ValueError, match="data.val_targets must have dtype torch.float64"):
        check_supervised_split(SumSplit(**{**fields, "val_targets": good.val_targets.float()}))
    with pytest.raises(ValueError, match="data.train_inputs has 6 rows but data.train_targets has 5"):
        check_supervised_split(SumSplit(**{**fields, "train_targets": good.train_targets[:, :5]}))
    with pytest.raises(TypeError, match="data.val_inputs must be a torch.Tensor"):
        check_supervised_split(SumSplit(**{**fields, "val_inputs": good.val_inputs.numpy()}))

    class Lying(SumSplit):
        n_models = 3

    with pytest.raises(ValueError, match="data.n_models must be 2"):
        check_supervised_split(Lying(**fields))


def test_a_user_split_trains_both_ensembles_and_one_network_to_an_exact_fit():
    """m + a = relu(m + a) on m, a ≥ 0, so one hidden ReLU unit fits it exactly: the loss must fall
    by seven orders of magnitude from its start (about E[(m + a)²] = 7/6)."""
    seeds = [3, 8]
    data = sum_split(len(seeds), 64, 32, seed=1)
    config = EnsembleTrainConfig(epochs=3000, lr=1e-2, backend="eager")
    shallow = train_ensemble(MLPEnsemble(EnsembleConfig(seeds=seeds, d_hidden=4, dtype="float64")), data, config,
                             progress=False)
    deep = train_deep_ensemble(DeepMLPEnsemble(DeepEnsembleConfig(seeds=seeds, d_hidden=[4, 4], dtype="float64")), data,
                               config, progress=False)
    alone = train_mlp(TinyMLP(MLPConfig(d_hidden=4, seed=seeds[0], dtype="float64")),
                      SumSplit(data.train_inputs[0], data.train_targets[0], data.val_inputs[0], data.val_targets[0]), config)
    assert alone.final_train_loss < 1e-7 and alone.val_loss < 1e-2
    for result in (shallow, deep):
        assert result.train_loss.shape == (3000, 2)
        assert float(result.final_train_loss.max()) < 1e-7, result.final_train_loss
        # held-out points: far below Var(m + a) = 1/6, though a kink of an unused unit may cut the square
        assert float(result.val_loss.max()) < 1e-2, result.val_loss


@pytest.mark.unchecked_types  # pins physlens's own message, which the runtime type checker would pre-empt
def test_the_trainers_refuse_a_non_conforming_split_naming_the_argument():
    ensemble = MLPEnsemble(EnsembleConfig(seeds=[0, 1], dtype="float64"))
    deep = DeepMLPEnsemble(DeepEnsembleConfig(seeds=[0, 1], dtype="float64"))
    not_a_split = SimpleNamespace(train_inputs=torch.zeros(2, 8, 2, dtype=torch.float64))
    lacks = (r"data must implement physlens.systems.SupervisedSplit, as FmaSplit does; "
             r"SimpleNamespace lacks \['train_targets', 'val_inputs', 'val_targets', 'n_models', 'to'\]")
    with pytest.raises(TypeError, match=lacks):
        train_ensemble(ensemble, not_a_split, progress=False)
    with pytest.raises(TypeError, match=lacks):
        train_deep_ensemble(deep, not_a_split, progress=False)
    wide = SumSplit(torch.zeros(2, 8, 3, dtype=torch.float64), torch.zeros(2, 8, 1, dtype=torch.float64),
                    torch.zeros(2, 4, 3, dtype=torch.float64), torch.zeros(2, 4, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="data must have the model's d_in = 2 input columns, got 3"):
        train_ensemble(ensemble, wide, progress=False)
    with pytest.raises(ValueError, match="data must have the model's d_in = 2 input columns, got 3"):
        train_deep_ensemble(deep, wide, progress=False)
    with pytest.raises(ValueError, match="one split per member"):
        train_deep_ensemble(deep, sum_split(3, 8, 4, seed=0), progress=False)
