"""Training, leakage rule, determinism, exact resume, checkpoints and rollout."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from numpy.testing import assert_allclose

from physlens.models import OscillatorTransformer, TransformerConfig, preset_config
from physlens.systems import OscillatorSystem, evolve, propagator
from physlens.training import (
    LeakageError,
    TrainConfig,
    evaluate_rollout,
    latest_checkpoint,
    load_checkpoint,
    load_state,
    relative_error,
    rollout,
    save_checkpoint,
    train,
)

SYSTEM = OscillatorSystem(omega0=2.0, gamma=0.1, dt=0.1, dtype="float64")


def _ola(**overrides) -> OscillatorTransformer:
    return OscillatorTransformer(preset_config("OLA", **{"attn_window": 1, "dtype": "float64", "n_ctx": 8, **overrides}))


def _exact_model() -> OscillatorTransformer:
    """A window-1 OLA whose weights implement the exact one-step propagator."""
    model = _ola(embed_bias=False, unembed_bias=False)
    with torch.no_grad():
        model.W_E.copy_(torch.eye(2))
        model.blocks[0].attn.W_O.zero_()  # the attention writes nothing, as the seed found
        model.W_U.copy_(propagator(2.0, 0.1, 0.1).T)
    return model.eval()


def test_ola_learns_the_propagator():
    model = _ola()
    config = TrainConfig(steps=600, lr=1e-2, seq_len=8, loss_positions="all", schedule="cosine")
    result = train(model, SYSTEM, config, progress=False)
    assert result.final_loss < 1e-12
    assert result.losses[0] > 1e3 * result.final_loss
    evaluation = evaluate_rollout(model, SYSTEM, n_traj=16, n_steps=200, context_len=1, seed=9, energy_range=(1.0, 5.0))
    assert evaluation.summary()["median_final_error"] < 1e-5


def test_training_is_deterministic_from_the_seed():
    config = TrainConfig(steps=30, lr=1e-2, seq_len=8, loss_positions="all", seed=3)
    a, b = _ola(), _ola()
    ra, rb = train(a, SYSTEM, config, progress=False), train(b, SYSTEM, config, progress=False)
    assert ra.losses == rb.losses
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    rc = train(_ola(), SYSTEM, TrainConfig(steps=30, lr=1e-2, seq_len=8, loss_positions="all", seed=4), progress=False)
    assert rc.losses != ra.losses


@pytest.mark.parametrize("fixed_dataset", [None, 64])
def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path, fixed_dataset):
    config = TrainConfig(steps=40, lr=1e-2, seq_len=8, loss_positions="all", schedule="cosine",
                         checkpoint_every=10, fixed_dataset=fixed_dataset, batch_size=32)
    straight = _ola()
    train(straight, SYSTEM, config, checkpoint_dir=tmp_path / "a", progress=False)

    interrupted = _ola()
    # Simulate a crash after step 20: train with the same config, then delete the later
    # checkpoints so only step_0000020 is left to resume from.
    train(interrupted, SYSTEM, config, checkpoint_dir=tmp_path / "b", progress=False)
    for name in ("step_0000030", "step_0000040"):
        shutil.rmtree(tmp_path / "b" / name)
    assert latest_checkpoint(tmp_path / "b").name == "step_0000020"
    resumed = _ola()
    with torch.no_grad():  # scramble the weights: everything must come from the checkpoint
        for parameter in resumed.parameters():
            parameter.normal_()
    result = train(resumed, SYSTEM, config, checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    assert result.resumed_from == 20 and len(result.losses) == 40
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))


def test_resume_refuses_a_different_config(tmp_path):
    config = TrainConfig(steps=10, seq_len=8, loss_positions="all", checkpoint_every=5)
    train(_ola(), SYSTEM, config, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="different TrainConfig"):
        train(_ola(), SYSTEM, TrainConfig(steps=20, seq_len=8, loss_positions="all", checkpoint_every=5, lr=5e-3),
              checkpoint_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="different config"):
        train(_ola(d_model=4, d_head=4), SYSTEM, config, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_leakage_rule():
    leaky = OscillatorTransformer(TransformerConfig(causal=False, n_ctx=8, dtype="float64"))
    config = TrainConfig(steps=2, seq_len=8, loss_positions="all")
    with pytest.raises(LeakageError, match="read its own target"):
        train(leaky, SYSTEM, config, progress=False)
    with pytest.warns(UserWarning, match="TARGET LEAKAGE"):
        train(leaky, SYSTEM, TrainConfig(steps=2, seq_len=8, loss_positions="all", allow_leakage=True), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(leaky, SYSTEM, TrainConfig(steps=2, seq_len=8, loss_positions="last"), progress=False)
        train(_ola(causal=False), SYSTEM, config, progress=False)  # window 1 sees only itself


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(steps=0), "steps"), (dict(lr=-1.0), "lr"), (dict(schedule="linear"), "schedule"),
     (dict(loss_positions="first"), "loss_positions"), (dict(min_lr=1.0), "min_lr"),
     (dict(batch_size=2.5), "batch_size"), (dict(weight_decay=float("nan")), "weight_decay")],
)
@pytest.mark.unchecked_types
def test_bad_train_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_sequence_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="seq_len must be <= the model's n_ctx"):
        train(_ola(), SYSTEM, TrainConfig(steps=1, seq_len=9), progress=False)


def test_cosine_schedule_with_warmup():
    config = TrainConfig(steps=100, lr=1e-2, min_lr=1e-4, schedule="cosine", warmup_steps=10)
    assert config.lr_at(0) == pytest.approx(1e-3)
    assert config.lr_at(10) == pytest.approx(1e-2)
    assert config.lr_at(99) == pytest.approx(1e-4, rel=0.05)


def test_checkpoint_round_trip_reproduces_outputs_exactly(tmp_path):
    model = OscillatorTransformer(TransformerConfig(d_model=8, n_heads=2, d_head=4, attn_only=False,
                                                    layer_norm=True, positional_embedding=True, seed=4))
    path = save_checkpoint(tmp_path / "ckpt", model, metadata={"note": "x"})
    loaded, metadata = load_checkpoint(path)
    x = torch.randn(3, 7, 2)
    assert torch.equal(model(x), loaded(x)) and metadata == {"note": "x"}
    assert json.loads((path / "config.json").read_text())["model_class"] == "OscillatorTransformer"
    assert {p.name for p in path.iterdir()} == {"model.safetensors", "config.json"}


def test_checkpoints_load_without_unpickling(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ckpt", _ola())
    import pickle

    def forbidden(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    load_checkpoint(path)
    load_state(path)


def test_checkpoint_writes_are_atomic_and_never_overwrite_silently(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ckpt", _ola())
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_checkpoint(path, _ola())
    # A crash while writing leaves the previous checkpoint intact and no complete-looking directory.
    import physlens.training.checkpoints as checkpoints

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    before = (path / "model.safetensors").read_bytes()
    monkeypatch.setattr(checkpoints, "save_safetensors_bytes", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, _ola(seed=8), overwrite=True)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path / "step_0000005", _ola())
    assert (path / "model.safetensors").read_bytes() == before
    assert not (tmp_path / "step_0000005").exists()
    assert latest_checkpoint(tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_loading_something_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a checkpoint"):
        load_checkpoint(tmp_path)
    partial = tmp_path / ".partial-ckpt.abc"
    partial.mkdir()
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        load_checkpoint(partial)
    path = save_checkpoint(tmp_path / "ckpt", _ola())
    config = json.loads((path / "config.json").read_text())
    config["model_class"] = "Nope"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="was changed after the checkpoint was written"):  # an edit breaks the digest
        load_checkpoint(path)
    from physlens.training.checkpoints import _config_digest

    config["digest"]["config"] = _config_digest(config)  # as written by a physlens that registers a class "Nope"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_class 'Nope' is unknown"):
        load_checkpoint(path)


def test_rollout_of_the_exact_model_matches_the_true_trajectory():
    model = _exact_model()
    initial = torch.tensor([[1.0, 0.0], [0.3, -2.0]], dtype=torch.float64)
    truth = evolve(initial, 2.0, 0.1, 0.1, 301)
    predicted = rollout(model, truth[:, :1], 300)
    assert_allclose(predicted.numpy(), truth[:, 1:].numpy(), rtol=1e-10, atol=1e-13)
    assert float(relative_error(predicted, truth[:, 1:]).max()) < 1e-10


def test_rollout_uses_a_sliding_window():
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, history):
            seen.append(history.shape[1])
            return history + 1

    out = rollout(Recorder(), torch.zeros(1, 3, 2), 4)
    assert seen == [3, 3, 3, 3]
    assert out[0, :, 0].tolist() == [1, 2, 3, 4]  # each step continues from the newest state
    rollout(Recorder(), torch.zeros(1, 5, 2), 2, window=2)
    assert seen[-2:] == [2, 2]


@pytest.mark.unchecked_types
def test_rollout_and_error_validation():
    model = _exact_model()
    with pytest.raises(ValueError, match="context must have shape"):
        rollout(model, torch.zeros(3, 2), 5)
    with pytest.raises(ValueError, match="finite"):
        rollout(model, torch.full((1, 1, 2), float("nan"), dtype=torch.float64), 5)
    with pytest.raises(ValueError, match="window must be <= the model's n_ctx"):
        rollout(model, torch.zeros(1, 9, 2, dtype=torch.float64), 5)
    with pytest.raises(ValueError, match="n_steps"):
        rollout(model, torch.zeros(1, 1, 2, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="same shape"):
        relative_error(torch.zeros(1, 2, 2), torch.ones(1, 3, 2))
    with pytest.raises(ValueError, match="zero state"):
        relative_error(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))


def test_relative_error_is_the_norm_ratio():
    pred = torch.tensor([[[3.0, 4.0]]])
    true = torch.tensor([[[0.0, 1.0]]])
    assert float(relative_error(pred, true)) == pytest.approx(((9 + 9) ** 0.5) / 1.0)


def test_diverging_rollouts_report_infinite_error_instead_of_crashing():
    model = _exact_model()
    with torch.no_grad():
        model.W_U.mul_(1e3)
    evaluation = evaluate_rollout(model, SYSTEM, n_traj=2, n_steps=200, context_len=1, seed=0)
    assert torch.isinf(evaluation.error[:, -1]).all()
    assert evaluation.summary()["median_final_error"] == float("inf")
    nan_prediction = torch.full((1, 1, 2), float("nan"))
    assert float(relative_error(nan_prediction, torch.ones(1, 1, 2))) == float("inf")


@pytest.mark.parametrize(
    "edit",
    [
        lambda config: config.update(causal=not config["causal"]),
        lambda config: config.update(attn_window=None),
        lambda config: config.update(dtype="float32"),
    ],
)
def test_an_edited_checkpoint_config_is_refused(tmp_path, edit):
    """Before: flipping causal or attn_window in config.json loaded silently and changed the predictions;
    float64 edited to float32 downcast the weights silently."""
    path = save_checkpoint(tmp_path / "ckpt", _ola())
    saved = json.loads((path / "config.json").read_text())
    edit(saved["config"])
    (path / "config.json").write_text(json.dumps(saved, indent=2))
    with pytest.raises(ValueError, match=r"ckpt/config.json' was changed after the checkpoint was written"):
        load_checkpoint(path)


def test_a_truncated_or_replaced_weights_file_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", _ola())
    weights = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(weights[:-8])
    with pytest.raises(ValueError, match=r"ckpt/model.safetensors' does not match the digest"):
        load_checkpoint(path)
    other = save_checkpoint(tmp_path / "other", _ola(seed=9))
    (path / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="does not match the digest"):
        load_checkpoint(path)


def test_a_dtype_mismatch_between_config_and_weights_is_refused_even_without_digests(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", _ola())
    saved = json.loads((path / "config.json").read_text())
    saved["format_version"] = 1  # as an older physlens wrote it: no digests to check
    del saved["digest"]
    saved["config"]["dtype"] = "float32"
    (path / "config.json").write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match="without digests"), pytest.raises(ValueError, match="refusing to convert"):
        load_checkpoint(path, allow_unverified=True)


def test_resume_from_a_missing_or_wrong_directory_is_an_error(tmp_path):
    """Before: train(resume=True) on a mistyped directory silently started from scratch."""
    config = TrainConfig(steps=4, seq_len=8, loss_positions="all", checkpoint_every=2)
    with pytest.raises(FileNotFoundError, match="does not exist, so there is nothing to resume from"):
        train(_ola(), SYSTEM, config, checkpoint_dir=tmp_path / "typo", resume=True, progress=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.md").write_text("")
    with pytest.raises(FileNotFoundError, match="holds no step_\\* checkpoint"):
        train(_ola(), SYSTEM, config, checkpoint_dir=tmp_path / "run", resume=True, progress=False)
    (tmp_path / "empty").mkdir()  # nothing saved yet: resuming starts at step 0
    result = train(_ola(), SYSTEM, config, checkpoint_dir=tmp_path / "empty", resume=True, progress=False)
    assert result.resumed_from is None and len(result.losses) == 4


@pytest.mark.parametrize("dtype, lr", [("float64", 1e6), ("float32", 1e30)])
def test_divergence_stops_training_with_a_message(dtype, lr):
    """Before: lr = 1e6 in float64 trained to a loss of 7.6e29 without complaint."""
    from physlens.training import TrainingDiverged

    system = OscillatorSystem(omega0=2.0, gamma=0.1, dt=0.1, dtype=dtype)
    config = TrainConfig(steps=200, lr=lr, seq_len=8, loss_positions="all")
    with pytest.raises(TrainingDiverged, match=r"training diverged: the loss (reached|became) .* at step \d+.*; lower \[training\] lr"):
        train(_ola(dtype=dtype), system, config, progress=False)


def test_a_loss_spike_below_the_divergence_factor_trains_on():
    """An exact model starts at a loss near 0; leaving it is not divergence (the reference is the loss of
    predicting zero), and ordinary training never trips the check."""
    result = train(_exact_model(), SYSTEM, TrainConfig(steps=20, lr=1e-2, seq_len=8, loss_positions="all"), progress=False)
    assert result.losses[0] < 1e-20 and max(result.losses) > 1e3 * result.losses[0]


def _hand_trained(config: TrainConfig, draws: list[tuple[int, int]]) -> OscillatorTransformer:
    """The reference for the faster-recipe options: batches drawn as listed (trajectories per call, steps
    it serves), the loss on the step's first positions, torch.optim.AdamW; written without train()."""
    model = _ola()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    for n_traj, n_steps in draws:
        states = SYSTEM.sample(n_traj, config.seq_len + 1, generator=generator).states
        for k in range(n_steps):
            batch = states[k * config.batch_size:(k + 1) * config.batch_size]
            n_pos = config.seq_len_at(step)
            inputs, targets = batch[:, :n_pos], batch[:, 1:n_pos + 1]
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step)
            optimizer.zero_grad()
            (model(inputs) - targets).pow(2).mean().backward()
            optimizer.step()
            step += 1
    return model


def test_a_context_curriculum_trains_on_the_first_positions_of_each_phase():
    config = TrainConfig(steps=9, lr=1e-2, seq_len=8, batch_size=16, loss_positions="all", curriculum=((3, 2), (2, 5)))
    assert [config.seq_len_at(s) for s in range(9)] == [2, 2, 2, 5, 5, 8, 8, 8, 8]
    model = _ola()
    train(model, SYSTEM, config, progress=False)
    reference = _hand_trained(config, [(16, 1)] * 9)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert_allclose(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)


def test_presampled_batches_are_drawn_many_steps_at_a_time():
    config = TrainConfig(steps=7, lr=1e-2, seq_len=8, batch_size=16, loss_positions="all", presample_steps=3)
    model = _ola()
    train(model, SYSTEM, config, progress=False)
    reference = _hand_trained(config, [(48, 3), (48, 3), (48, 1)])
    for p, q in zip(model.parameters(), reference.parameters()):
        assert_allclose(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)


def test_the_fused_optimizer_steps_like_the_default_one():
    base = dict(steps=20, lr=1e-2, seq_len=8, batch_size=16, loss_positions="all")
    a, b = _ola(), _ola()
    train(a, SYSTEM, TrainConfig(**base), progress=False)
    train(b, SYSTEM, TrainConfig(**base, fused_optimizer=True), progress=False)
    for p, q in zip(a.parameters(), b.parameters()):
        assert_allclose(p.detach(), q.detach(), rtol=1e-9, atol=1e-12)


def test_a_presampled_curriculum_run_resumes_exactly(tmp_path):
    config = TrainConfig(steps=12, lr=1e-2, seq_len=8, batch_size=16, loss_positions="all", checkpoint_every=4,
                         presample_steps=2, curriculum=((5, 3),), fused_optimizer=True)
    straight = _ola()
    train(straight, SYSTEM, config, checkpoint_dir=tmp_path / "a", progress=False)
    interrupted = _ola()
    train(interrupted, SYSTEM, config, checkpoint_dir=tmp_path / "b", progress=False)
    for name in ("step_0000008", "step_0000012"):
        shutil.rmtree(tmp_path / "b" / name)
    resumed = _ola()
    result = train(resumed, SYSTEM, config, checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    assert result.resumed_from == 4
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(presample_steps=0), "presample_steps"), (dict(presample_steps=3, checkpoint_every=4), "multiple of presample_steps"),
     (dict(curriculum=((5, 9),)), "curriculum length must be <= seq_len"), (dict(curriculum=(5,)), "pairs"),
     (dict(curriculum=((5, 2),), loss_positions=3), "loss_positions")],
)
@pytest.mark.unchecked_types
def test_bad_recipe_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"seq_len": 8, **kwargs})


def test_recipe_options_read_from_a_study_table():
    from physlens.training import config_from_dict

    config = config_from_dict({"seq_len": 8, "curriculum": [[5, 4]], "presample_steps": 2, "fused_optimizer": True})
    assert config.curriculum == ((5, 4),) and config.presample_steps == 2 and config.fused_optimizer

    from pathlib import Path

    from physlens.studies import load_study
    from physlens.studies.oscillator import parse_study

    spec = load_study(Path(__file__).resolve().parents[1] / "probes" / "oscillator_variable.toml")
    spec["training"].update(curriculum=[[800, 16]], presample_steps=50, fused_optimizer=True)
    config = parse_study(spec).train_config
    assert config.curriculum == ((800, 16),) and config.presample_steps == 50 and config.fused_optimizer
