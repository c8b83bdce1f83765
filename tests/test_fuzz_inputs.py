"""Property-based tests (Hypothesis): generated study files and API inputs end in a clean error that names
the key, or in a valid run that holds exactly the settings given — never a traceback, never a setting
silently changed."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from physlens.cli import main
from physlens.studies import StudySpecError, check_spec, load_study, study_sections
from physlens.studies.oscillator import EVALUATION_KEYS, MODEL_KEYS, SYSTEM_KEYS, TRAINING_KEYS, parse_study
from physlens.sweeps._toml import dump_toml

FUZZ = settings(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

BASE: dict[str, Any] = {
    "study": {"name": "fuzz", "kind": "oscillator", "seed": 3},
    "system": {"omega0": 2.0, "gamma": 0.1, "dtype": "float64"},
    "model": {"preset": "OLA", "attn_window": 1, "n_ctx": 4, "dtype": "float64"},
    "training": {"steps": 3, "seq_len": 4, "lr": 1e-2, "loss_positions": "all", "batch_size": 8},
    "evaluation": {"rollout_steps": 5, "n_trajectories": 4, "context_len": 1},
}

scalars = st.one_of(
    st.booleans(), st.integers(-3, 10), st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(0.0, 10.0),
    st.sampled_from(["", "false", "true", "1e-2", "last", "all", "float32", "float64", "cpu", "cuda", "OLA", "linear_ar"]),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=6),
)
toml_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.sampled_from(["uniform", "choice", "x"]),
                                                                            inner, max_size=2)), max_leaves=4)

OSCILLATOR_KEYS = {"system": SYSTEM_KEYS, "model": MODEL_KEYS, "training": TRAINING_KEYS, "evaluation": EVALUATION_KEYS}
KEYS = [(table, key) for table, keys in OSCILLATOR_KEYS.items() for key in keys] + [("training", "stepz"), ("model", "causl")]


def plausible(types: tuple[type, ...]) -> st.SearchStrategy[Any]:
    """Values of the types a key accepts, near the ranges a study uses, so valid studies are generated too."""
    types = types if isinstance(types, tuple) else (types,)
    options = []
    if bool in types:
        options.append(st.booleans())
    if int in types:
        options.append(st.integers(-2, 12))
    if float in types:
        options.append(st.one_of(st.floats(-1.0, 10.0), st.sampled_from([1e-3, 0.5, 1e6])))
    if str in types:
        options.append(st.sampled_from(["last", "all", "cosine", "constant", "float32", "float64", "cpu", "OLA"]))
    if list in types:
        item = st.floats(-1.0, 10.0) if getattr(types, "items", None) != (str,) else st.sampled_from(["linear_ar", "x"])
        options.append(st.lists(item, max_size=3))
    return st.one_of(options) if options else st.nothing()


def _write(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "fuzz.toml"
    path.write_text(dump_toml(spec))
    return path


def _same(given: Any, held: Any) -> bool:
    """Whether a parsed setting holds what the file said (tuples for lists, floats for ints)."""
    if isinstance(given, list):
        return isinstance(held, (list, tuple)) and len(given) == len(held) and all(map(_same, given, held))
    if isinstance(given, bool) or isinstance(held, bool):
        return given is held
    if isinstance(given, (int, float)) and isinstance(held, (int, float)):
        return float(given) == float(held)
    return given == held


def _held(study: Any, table: str, key: str) -> tuple[bool, Any]:
    """Where a parsed oscillator study keeps table.key, if it keeps it as given."""
    if table == "model" and key != "preset":
        return True, getattr(study.model.cfg, key)
    if table == "training":
        return True, getattr(study.train_config, key)
    if table == "system" and key in ("dt", "dtype", "device", "energy_range"):
        return True, getattr(study.system, key)
    evaluation = study.evaluation
    places = {"rollout_steps": evaluation.rollout_steps, "n_trajectories": evaluation.n_trajectories,
              "context_len": evaluation.context_len, "energy_range": evaluation.energy_range,
              "target_error": evaluation.criteria.max_rollout_error, "target_mse": evaluation.criteria.max_next_step_mse,
              "horizon": evaluation.criteria.horizon, "target_error_ood": evaluation.target_error_ood}
    if table == "evaluation" and key in places:
        return True, places[key]
    return False, None


@settings(FUZZ, max_examples=150)
@given(st.sampled_from(KEYS), st.data())
def test_a_generated_oscillator_study_is_refused_naming_the_key_or_parsed_exactly(tmp_path, where, data):
    table, key = where
    value = data.draw(st.one_of(plausible(OSCILLATOR_KEYS[table].get(key, ())), toml_values))
    spec = json.loads(json.dumps(BASE))
    spec[table][key] = value
    if table == "evaluation" and key == "target_error_ood":
        spec["evaluation"]["energy_range"] = [1.0, 5.0]
    path = _write(tmp_path, spec)
    try:
        study = parse_study(load_study(path))
    except StudySpecError as error:
        event("refused")
        assert key in str(error), f"{table}.{key} = {value!r}: {error}"
        return
    event("parsed")
    kept, held = _held(study, table, key)
    if kept:
        assert _same(value, held), f"{table}.{key} = {value!r} was parsed as {held!r}"


@settings(FUZZ, max_examples=60)
@given(st.sampled_from(["fma", "invariants"]), st.data())
def test_generated_tables_of_the_other_study_kinds_are_type_checked_before_the_run(kind, data):
    tables = study_sections(kind)
    table = data.draw(st.sampled_from(sorted(tables)))
    key = data.draw(st.sampled_from(sorted(tables[table]) + ["no_such_key"]))
    value = data.draw(toml_values)
    spec = {"study": {"name": "fuzz", "kind": kind}, table: {key: value}}
    accepted = tables[table].get(key, ())
    accepted = accepted if isinstance(accepted, tuple) else (accepted,)
    numbers = (int,) if float in accepted else ()
    right_type = (key in tables[table] and isinstance(value, (*accepted, *numbers))
                  and (not isinstance(value, bool) or bool in accepted)
                  and not (isinstance(value, float) and not math.isfinite(value)))
    try:
        check_spec(spec)
    except StudySpecError as error:
        # Refused for its type, or (these kinds check ranges before the run too) for its value: either
        # way the message names the key.
        assert key in str(error), f"[{table}] {key} = {value!r}: {error}"
        return
    assert right_type, f"[{table}] {key} = {value!r} passed the check"


run_options = st.fixed_dictionaries({}, optional={
    ("training", "steps"): st.integers(1, 4),
    ("training", "lr"): st.sampled_from([1e-3, 1e-2, 1e6, 1e30]),
    ("training", "loss_positions"): st.sampled_from(["last", "all", 0, 2, 3, 4]),
    ("training", "schedule"): st.sampled_from(["constant", "cosine", "linear"]),
    ("model", "causal"): st.sampled_from([True, False, "false"]),
    ("model", "attn_window"): st.sampled_from([1, 2, 0]),
    ("evaluation", "rollout_steps"): st.integers(0, 4),
})


@settings(FUZZ, max_examples=4)
@given(run_options)
def test_a_generated_study_runs_or_fails_in_one_line(tmp_path_factory, capsys, options):
    """Whole runs through the command line: exit 0 with the settings in metrics.json, or exit 2 with one line."""
    tmp_path = tmp_path_factory.mktemp("run")
    spec = json.loads(json.dumps(BASE))
    for (table, key), value in options.items():
        spec[table][key] = value
    code = main(["run", str(_write(tmp_path, spec)), "--output", str(tmp_path / "runs"), "--quiet"])
    captured = capsys.readouterr()
    event(f"exit {code}")
    if code == 2:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in captured.err
        assert "diverged" in lines[0] or any(key in lines[0] for _, key in options), lines[0]
        return
    assert code == 0, captured.err
    metrics = json.loads((tmp_path / "runs" / "fuzz" / "metrics.json").read_text())
    for (table, key), value in options.items():
        if table in ("training", "model"):
            held = metrics["train_config" if table == "training" else "model_config"][key]
            assert _same(value, held), f"{table}.{key} = {value!r} ran as {held!r}"


# --- API inputs ------------------------------------------------------------------------------------------------

api_values = st.one_of(toml_values, st.none(), st.just(np.int64(3)), st.just(np.float64(0.5)), st.just(torch.tensor(2)))


def _api_check(build, name: str, value: Any, read=lambda made, name: getattr(made, name)) -> None:
    try:
        made = build()
    except (ValueError, TypeError) as error:
        assert name in str(error) or "must" in str(error), f"{name}={value!r}: {error}"
        return
    held = read(made, name)
    if value is None:  # None asks for the default of an optional setting (d_mlp = 4 d_model, no grad_clip...)
        return
    assert _same(value.tolist() if hasattr(value, "tolist") else value, held) or held is value, f"{name}={value!r} became {held!r}"


@settings(FUZZ, max_examples=120)
@given(st.sampled_from(sorted(TRAINING_KEYS)), api_values)
def test_train_config_refuses_or_keeps_every_argument(name, value):
    from physlens.training import TrainConfig

    if name == "betas" and isinstance(value, list):
        value = tuple(value)
    _api_check(lambda: TrainConfig(**{name: value}), name, value)


@settings(FUZZ, max_examples=120)
@given(st.sampled_from(sorted(k for k in MODEL_KEYS if k != "preset")), api_values)
def test_transformer_config_refuses_or_keeps_every_argument(name, value):
    from physlens.models import TransformerConfig

    _api_check(lambda: TransformerConfig(**{name: value}), name, value)


@settings(FUZZ, max_examples=80)
@given(st.one_of(api_values, st.lists(st.one_of(st.integers(-8, 8), st.just(np.int64(1)), st.floats()), max_size=4)))
def test_positions_are_resolved_or_refused_by_name(positions):
    from physlens.probes.activations import resolve_positions

    try:
        resolved = resolve_positions(positions, 6)
    except ValueError as error:
        assert "position" in str(error)
        return
    if resolved is not None:
        assert all(isinstance(p, int) and 0 <= p < 6 for p in resolved) and len(set(resolved)) == len(resolved)


@settings(FUZZ, max_examples=80)
@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True),
       st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True))
def test_trajectories_hold_only_finite_underdamped_oscillators(state, omega0, gamma, dt):
    from physlens.systems.oscillator import Trajectories

    def build():
        return Trajectories(torch.full((2, 3, 2), state, dtype=torch.float64), torch.full((2,), omega0, dtype=torch.float64),
                            torch.full((2,), gamma, dtype=torch.float64), dt)

    valid = all(math.isfinite(v) for v in (state, omega0, gamma, dt)) and omega0 > 0 and 0 <= gamma < omega0 and dt > 0
    try:
        build()
    except ValueError as error:
        assert not valid and any(word in str(error) for word in ("states", "omega0", "gamma", "dt", "underdamped"))
        return
    assert valid


def test_the_fuzzed_base_study_is_valid(tmp_path):
    """The base every generated study varies must itself parse (else every example is an error)."""
    spec = load_study(_write(tmp_path, BASE))
    check_spec(spec)
    assert tomllib.loads(dump_toml(BASE)) == BASE
    with pytest.raises(StudySpecError, match="causal"):
        check_spec({**spec, "model": {**spec["model"], "causal": "false"}})


# --- bad batches to the analyses are refused by name (issue 22) ------------------------------------------------


def _tiny_transformer():
    from physlens.models import OscillatorTransformer, TransformerConfig

    cfg = TransformerConfig(d_model=4, n_layers=1, n_heads=2, d_head=2, n_ctx=4, causal=True, attn_only=False, dtype="float64")
    return OscillatorTransformer(cfg).eval()


def _bad_batches(good: torch.Tensor) -> dict[str, torch.Tensor]:
    nan = good.clone()
    nan[0, 0, 0] = float("nan")
    return {"one NaN": nan, "empty": good[:0], "complex": good.to(torch.complex128)}


@pytest.mark.parametrize("bad", ["one NaN", "empty", "complex"])
@pytest.mark.parametrize("argument", ["inputs", "reference"])
def test_ablation_sweep_refuses_a_nan_empty_or_complex_batch(argument, bad):
    """Before: one NaN input, a NaN reference or an empty batch returned numbers (a NaN baseline loss next to
    head losses of 0.904) instead of an error."""
    from physlens.probes.ablation import ablation_sweep

    model = _tiny_transformer()
    inputs = torch.randn(6, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    targets = inputs.roll(-1, dims=1)
    batch = _bad_batches(inputs)[bad]
    call = {"inputs": batch, "targets": targets if bad != "empty" else targets[:0]} if argument == "inputs" else {
        "inputs": inputs, "targets": targets, "reference": batch}
    with pytest.raises(ValueError, match=rf"^{argument} must"):
        ablation_sweep(model, method="mean", **call)


@pytest.mark.parametrize("bad", ["one NaN", "empty", "complex"])
def test_patching_and_collection_refuse_a_nan_empty_or_complex_batch(bad):
    """Before: empty batches returned empty results that raised StopIteration later; a NaN said "identical
    predictions"; complex input silently dropped its imaginary part."""
    from physlens.probes.activations import collect_activations
    from physlens.probes.patching import patching_sweep

    model = _tiny_transformer()
    inputs = torch.randn(6, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    batch = _bad_batches(inputs)[bad]
    with pytest.raises(ValueError, match=r"^inputs must"):
        collect_activations(model, batch, "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match=r"^clean_inputs must"):
        patching_sweep(model, batch, batch, site="resid_pre")


# --- values that failed late, or with a traceback, are one line naming the file, section and key (issue 22) -----


def _late_study() -> str:
    from tests.test_run_safety import STUDY

    return STUDY


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda s: s.replace("context_len = 1", 'context_len = 1\nmust_beat = [["linear_ar"]]'), "[evaluation] must_beat must be"),
        (lambda s: s.replace("context_len = 1", "context_len = 1\nenergy_range = [0, inf]"), "[evaluation] energy_range must be"),
        (lambda s: s.replace("rollout_steps = 10", "rollout_steps = 1000000000"), "[evaluation] n_trajectories = 8 and rollout_steps"),
        (lambda s: s.replace("n_trajectories = 8", "n_trajectories = 1000000000000"), "[evaluation] n_trajectories = 1000000000000"),
        (lambda s: s.replace("gamma = 0.1", "gamma = 0.1\ndt = 1e300"), "[system] trajectories of context_len + rollout_steps"),
        (lambda s: s.replace("seq_len = 4", "seq_len = 4\nbatch_size = 1000000000000"), "[training] batch_size = 1000000000000"),
        (lambda s: s.replace("n_ctx = 4", "n_ctx = 1000000000"), "[model] n_ctx, d_model"),
        (lambda s: s.replace('name = "tiny"', 'name = "' + "a" * 250 + '"'), "[study] name must be at most 100 characters"),
        (lambda s: s.replace('n_ctx = 4\n', 'n_ctx = 4\ndevice = "xpu"\n'), "[model] device must be 'cpu', 'cuda' or 'mps'"),
        (lambda s: s.replace('n_ctx = 4\n', 'n_ctx = 4\ndevice = "meta"\n'), "[model] device must be 'cpu', 'cuda' or 'mps'"),
        (lambda s: "a = " + "[" * 100_000 + "]" * 100_000 + "\n", "nests its arrays or tables too deeply"),
    ],
    ids=["must_beat-nested", "energy_range-inf", "rollout_steps-1e9", "n_trajectories-1e12", "dt-1e300", "batch_size-1e12",
         "n_ctx-1e9", "name-250", "device-xpu", "device-meta", "toml-100k-deep"],
)
def test_values_that_failed_late_are_one_line_before_training(tmp_path, monkeypatch, capsys, edit, expected):
    """Before: a TypeError or AssertionError traceback, an allocator error naming no key, 'File name too long' on an
    internal path, or a failure after training that the advised --resume repeated."""
    import physlens.studies.oscillator as oscillator

    monkeypatch.setattr(oscillator, "train", lambda *a, **k: pytest.fail("trained before the study was checked"))
    study = tmp_path / "study.toml"
    study.write_text(edit(_late_study()))
    code = main(["run", str(study), "--output", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"physlens: error: study file {str(study)!r}"), err
    assert expected in lines[0], err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
