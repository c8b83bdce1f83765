"""The adversarial table, kept: every attack that once broke a run or failed poorly, each pinned by a test.

:data:`ATTACKS` maps each attack to the tests that hold it (most live next to the code they pin; the ones
that had none are here). ``python tests/attack_table.py`` runs them all and prints how many attacks hold.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from physlens.cli import main
from tests.test_run_safety import STUDY

ROOT = Path(__file__).resolve().parents[1]
INTEGRITY, FUZZ, SWEEPS, SKLEARN = ("tests/test_run_integrity.py", "tests/test_fuzz_inputs.py", "tests/test_sweeps.py",
                                    "tests/test_sklearn_estimators.py")
ATTACKS_FILE = "tests/test_attacks.py"


def _late(case: str) -> str:
    return f"{FUZZ}::test_values_that_failed_late_are_one_line_before_training[{case}]"


ATTACKS: dict[str, tuple[str, list[str]]] = {
    # --- runs that were fooled -------------------------------------------------------------------------
    "FIFO as a run's .lock or run.json hangs no command": ("broken", [f"{INTEGRITY}::test_a_fifo_in_a_run_directory_hangs_no_command"]),
    "--overwrite killed between its moves loses nothing": ("broken", [
        f"{INTEGRITY}::test_no_kill_point_of_an_overwrite_loses_the_earlier_run[exchange]",
        f"{INTEGRITY}::test_no_kill_point_of_an_overwrite_loses_the_earlier_run[move-aside]"]),
    "last-step blow-up (steps=1, lr=1e3, min_lr=0) does not exit 0": ("broken", [
        f"{INTEGRITY}::test_a_blow_up_in_the_last_step_is_caught",
        f"{INTEGRITY}::test_a_model_broken_after_its_last_checked_loss_gets_no_report[huge]",
        f"{INTEGRITY}::test_a_model_broken_after_its_last_checked_loss_gets_no_report[nan]"]),
    "--resume from a checkpoint copied from another run is refused": ("broken", [
        f"{INTEGRITY}::test_resume_refuses_a_checkpoint_copied_from_another_run"]),
    "edited checkpoint state.json is refused": ("broken", [f"{INTEGRITY}::test_resume_refuses_an_edited_training_state"]),
    "edited kept study.toml is refused": ("broken", [f"{INTEGRITY}::test_resume_refuses_an_edited_study"]),
    "digest downgrade (format 1, digest removed, byte flipped) is refused without opt-in": ("broken", [
        f"{INTEGRITY}::test_a_digest_downgrade_is_refused_without_the_opt_in"]),
    "sweep driver kill -9 orphans no worker; a rerun calls no finished trial failed": ("broken", [
        f"{SWEEPS}::test_killing_the_sweep_driver_ends_its_workers", f"{SWEEPS}::test_a_trial_finished_meanwhile_is_not_called_failed"]),
    "ablation_sweep with NaN input, NaN reference or an empty batch errors": ("broken", [
        f"{FUZZ}::test_ablation_sweep_refuses_a_nan_empty_or_complex_batch[{argument}-{bad}]"
        for argument in ("inputs", "reference") for bad in ("one NaN", "empty")]),
    # --- failures that were poor: now one line naming the file, section and key, exit 2, before training --
    "must_beat = [[\"linear_ar\"]]": ("poor", [_late("must_beat-nested")]),
    "[evaluation] energy_range = [0, inf]": ("poor", [_late("energy_range-inf")]),
    "rollout_steps = 1e9": ("poor", [_late("rollout_steps-1e9")]),
    "n_trajectories = 1e12": ("poor", [_late("n_trajectories-1e12")]),
    "dt = 1e300": ("poor", [_late("dt-1e300")]),
    "batch_size = 1e12": ("poor", [_late("batch_size-1e12")]),
    "n_ctx = 1e9": ("poor", [_late("n_ctx-1e9")]),
    "study TOML nested 100k deep": ("poor", [_late("toml-100k-deep"), f"{ATTACKS_FILE}::test_sweep_files_are_read_as_study_files_are"]),
    "checkpoint config.json nested 100k deep": ("poor", [f"{INTEGRITY}::test_a_config_json_nested_too_deeply_is_named"]),
    "250-character study name": ("poor", [_late("name-250")]),
    "device = \"xpu\" / \"meta\" / \"vulkan\"": ("poor", [_late("device-xpu"), _late("device-meta"),
                                                        f"{ATTACKS_FILE}::test_a_device_physlens_does_not_train_on_is_one_line"]),
    "run.json a link to /dev/zero (bounded read); study file a FIFO or /dev/zero": ("poor", [
        f"{INTEGRITY}::test_special_files_are_refused_by_type_before_any_read", f"{ATTACKS_FILE}::test_a_sweep_file_that_is_a_fifo_hangs_nothing",
        f"{ATTACKS_FILE}::test_sweep_files_are_read_as_study_files_are"]),
    "missing state.safetensors / state.json": ("poor", [f"{INTEGRITY}::test_a_missing_state_file_is_named[state.safetensors]",
                                                         f"{INTEGRITY}::test_a_missing_state_file_is_named[state.json]"]),
    "checkpoints/ is a file": ("poor", [f"{INTEGRITY}::test_a_checkpoints_entry_that_is_not_a_directory_is_named_and_the_run_kept"]),
    "sweep grid steps = -1, lr = nan refused up front": ("poor", [
        f"{SWEEPS}::test_sweep_values_no_trial_could_run_are_refused_up_front[steps-negative]",
        f"{SWEEPS}::test_sweep_values_no_trial_could_run_are_refused_up_front[lr-nan]"]),
    "sweep seeds = 1e9": ("poor", [f"{SWEEPS}::test_sweep_values_no_trial_could_run_are_refused_up_front[seeds-1e9]"]),
    "empty batches to collect_activations / patching_sweep": ("poor", [
        f"{FUZZ}::test_patching_and_collection_refuse_a_nan_empty_or_complex_batch[empty]"]),
    "NaN to patching_sweep": ("poor", [f"{FUZZ}::test_patching_and_collection_refuse_a_nan_empty_or_complex_batch[one NaN]"]),
    "predict before fit": ("poor", [
        f"{SKLEARN}::test_tabular_estimators_name_the_argument_at_fault[{name}]"
        for name in ("LinearProbe", "PolynomialLatentRegression", "SymbolicDistiller")] + [
        f"{SKLEARN}::test_three_d_estimators_declare_their_input_and_keep_the_contract[{name}]"
        for name in ("RidgeProbeSweep", "LinearAutoregressive")]),
    "complex input": ("poor", [
        f"{FUZZ}::test_patching_and_collection_refuse_a_nan_empty_or_complex_batch[complex]",
        f"{FUZZ}::test_ablation_sweep_refuses_a_nan_empty_or_complex_batch[inputs-complex]",
        f"{ATTACKS_FILE}::test_complex_input_is_refused_not_truncated"]),
}
"""Attack → (``"broken"`` for what once fooled a run, ``"poor"`` for what once failed poorly; the pytest node ids
that hold it). An attack holds when all its tests pass."""


def test_every_attack_names_tests_that_exist():
    for attack, (kind, nodes) in ATTACKS.items():
        assert kind in ("broken", "poor") and nodes, attack
        for node in nodes:
            file, _, name = node.partition("::")
            function = name.partition("[")[0]
            tree = ast.parse((ROOT / file).read_text())
            assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, f"{attack}: {node} does not exist"


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("physlens: error: "), err
    return err


@pytest.mark.parametrize("device", ["vulkan", "xpu:0", "meta", "nonsense"])
def test_a_device_physlens_does_not_train_on_is_one_line(tmp_path, capsys, monkeypatch, device):
    import physlens.studies.oscillator as oscillator

    monkeypatch.setattr(oscillator, "train", lambda *a, **k: pytest.fail("trained before the study was checked"))
    study = tmp_path / "study.toml"
    study.write_text(STUDY.replace("n_ctx = 4\n", f'n_ctx = 4\ndevice = "{device}"\n'))
    err = _one_line_error(capsys, ["run", str(study), "--output", str(tmp_path / "runs"), "--quiet"])
    assert f"study file {str(study)!r}" in err and "[model] device must be" in err and repr(device) in err
    assert not (tmp_path / "runs").exists()


def test_sweep_files_are_read_as_study_files_are(tmp_path, capsys):
    """Before: /dev/zero as a sweep file 'did not exist', a study nested 100k deep gave 'maximum recursion depth
    exceeded' naming no file, and a sweep file's study was read without a bound."""
    err = _one_line_error(capsys, ["sweep", "/dev/zero", "--output", str(tmp_path / "runs")])
    assert "'/dev/zero' is a character device, not a regular file" in err
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    err = _one_line_error(capsys, ["sweep", str(deep), "--output", str(tmp_path / "runs")])
    assert f"{str(deep)!r} nests its arrays or tables too deeply" in err
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('[sweep]\nstudy = "/dev/zero"\nseeds = 2\n')
    err = _one_line_error(capsys, ["sweep", str(sweep), "--output", str(tmp_path / "runs")])
    assert "study file '/dev/zero' is a character device, not a regular file" in err
    typo = tmp_path / "typo.toml"
    typo.write_text(STUDY + "\n[sweep]\nseds = 2\n")
    err = _one_line_error(capsys, ["sweep", str(typo), "--output", str(tmp_path / "runs")])
    assert "[sweep] has unknown keys ['seds']; did you mean 'seeds'?" in err
    assert not (tmp_path / "runs").exists()


def test_a_sweep_file_that_is_a_fifo_hangs_nothing(tmp_path):
    fifo = tmp_path / "sweep.toml"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT / "src")]))}
    result = subprocess.run([sys.executable, "-m", "physlens.cli", "sweep", str(fifo), "--output", str(tmp_path / "runs")],
                            capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "is a FIFO, not a regular file" in result.stderr and len(result.stderr.splitlines()) == 1


def test_complex_input_is_refused_not_truncated():
    """Before: a complex target lost its imaginary part with only a ComplexWarning, and complex X was refused
    with the whole array printed into the message."""
    from physlens.probes.linear_probe import LinearProbe

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 2)), rng.normal(size=30)
    with pytest.raises(ValueError, match=r"^y must hold real numbers, got complex values") as caught:
        LinearProbe().fit(X, y + 1j)
    with pytest.raises(ValueError, match=r"^X must hold real numbers; Complex data not supported \(got complex128 values\)$"):
        LinearProbe().fit(X + 1j, y)
    fitted = LinearProbe().fit(X, y)
    with pytest.raises(ValueError, match=r"^X must hold real numbers"):
        fitted.predict(torch.as_tensor(X + 1j))
    assert "\n" not in str(caught.value)
