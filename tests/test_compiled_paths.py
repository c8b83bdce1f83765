"""torch.compile'd training, rollout and ensemble steps: same results as eager, and an eager fallback
with a message where no compiler exists. Compiling takes minutes on a small CPU, so the comparisons
that compile are slow tests; the fallbacks are checked in the default run."""

from __future__ import annotations

import json

import pytest
import torch
from numpy.testing import assert_allclose

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.models.mlp import EnsembleConfig, MLPEnsemble
from physlens.systems import OscillatorSystem
from physlens.systems.fma import fma_splits
from physlens.training import TrainConfig, rollout, train
from physlens.training import _compile
from physlens.training.ensemble import EnsembleTrainConfig, train_ensemble


def tiny_transformer(seed: int = 0) -> OscillatorTransformer:
    cfg = TransformerConfig(d_model=4, n_layers=1, n_heads=1, d_head=4, n_ctx=8, attn_only=False, positional_embedding=True,
                            dtype="float64", seed=seed)  # fmt: skip
    return OscillatorTransformer(cfg)


@pytest.fixture
def no_compiler(monkeypatch):
    monkeypatch.setattr(_compile, "compiler_unavailable_reason", lambda device: "no C++ compiler (test)")


def test_compiler_is_found_or_its_absence_is_explained():
    reason = _compile.compiler_unavailable_reason("cpu")
    assert reason is None or "C++ compiler" in reason


def test_training_falls_back_to_eager_with_a_message_and_the_same_result(no_compiler):
    system = OscillatorSystem(omega0=1.0, gamma=0.1, dtype="float64")
    config = dict(steps=5, batch_size=4, seq_len=6)
    eager, fallback = tiny_transformer(), tiny_transformer()
    reference = train(eager, system, TrainConfig(**config), progress=False)
    with pytest.warns(UserWarning, match="training runs eagerly: no C\\+\\+ compiler"):
        result = train(fallback, system, TrainConfig(**config, compile=True), progress=False)
    assert result.losses == reference.losses
    for a, b in zip(eager.parameters(), fallback.parameters()):
        assert torch.equal(a, b)


def test_rollout_falls_back_to_eager_with_a_message(no_compiler):
    model = tiny_transformer()
    context = OscillatorSystem(omega0=1.0, gamma=0.1, dtype="float64").sample(3, 6, seed=0).states
    with pytest.warns(UserWarning, match="rollout runs eagerly"):
        compiled = rollout(model, context, 4, compile=True)
    assert torch.equal(compiled, rollout(model, context, 4))


def test_compiled_ensemble_step_falls_back_to_eager_with_a_message(no_compiler):
    seeds = [0, 1]
    data, config = fma_splits(seeds, n_train=16, n_val=4), EnsembleTrainConfig(epochs=3, compile=True)
    with pytest.warns(UserWarning, match="eager step: no C\\+\\+ compiler"):
        result = train_ensemble(MLPEnsemble(EnsembleConfig(seeds=seeds)), data, config, progress=False)
    assert result.backend == "eager"


@pytest.mark.slow
@pytest.mark.unchecked_types
def test_compiled_training_and_rollout_equal_eager():
    if _compile.compiler_unavailable_reason("cpu"):
        pytest.skip("no C++ compiler for torch.compile")
    system = OscillatorSystem(omega0=1.0, gamma=0.1, dtype="float64")
    config = dict(steps=20, batch_size=8, seq_len=8, lr=1e-2)
    eager, compiled = tiny_transformer(), tiny_transformer()
    reference = train(eager, system, TrainConfig(**config), progress=False)
    result = train(compiled, system, TrainConfig(**config, compile=True), progress=False)
    assert_allclose(result.losses, reference.losses, rtol=1e-10)
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert_allclose(a.detach(), b.detach(), rtol=1e-9, atol=1e-12)
    context = system.sample(3, 8, seed=0).states
    assert_allclose(rollout(compiled, context, 5, compile=True), rollout(eager, context, 5), rtol=1e-9, atol=1e-12)


def test_checkpoints_written_before_the_compile_option_still_resume(tmp_path):
    system = OscillatorSystem(omega0=1.0, gamma=0.1, dtype="float64")
    config = TrainConfig(steps=6, batch_size=4, seq_len=6, checkpoint_every=3)
    train(tiny_transformer(), system, config, checkpoint_dir=tmp_path, progress=False)
    for state in tmp_path.glob("step_*/state.json"):  # as an older physlens wrote them: no "compile" key
        saved = json.loads(state.read_text())
        del saved["train_config"]["compile"]
        state.write_text(json.dumps(saved))
        config_file = state.parent / "config.json"  # nor a digest of state.json
        written = json.loads(config_file.read_text())
        del written["digest"]["state.json"]
        config_file.write_text(json.dumps(written))
    resumed = train(tiny_transformer(), system, config, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert resumed.resumed_from == 6
