"""The command guides a newcomer: misspellings answered with their correction, a bare `physlens run` with a
usage line, `--help` with the study kinds and the shipped studies, `physlens runs` with a header row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from physlens._validation import did_you_mean
from physlens.cli import main, shipped_studies
from tests.test_run_safety import STUDY

ROOT = Path(__file__).resolve().parents[1]


def test_did_you_mean_answers_a_misspelling_and_lists_only_when_nothing_resembles():
    assert did_you_mean(["stpes"], ["steps", "lr", "seq_len"]) == "did you mean 'steps'?"
    assert did_you_mean(["stpes", "lrr"], ["steps", "lr"]) == "did you mean 'steps' for 'stpes', 'lr' for 'lrr'?"
    assert did_you_mean(["zzz"], ["steps", "lr"], listing="allowed keys are") == "allowed keys are ['lr', 'steps']"
    assert did_you_mean(["stpes", "zzz"], ["steps", "lr"]) == "did you mean 'steps' for 'stpes'?; valid names are ['lr', 'steps']"


def _run_error(tmp_path, capsys, text: str) -> str:
    study = tmp_path / "study.toml"
    study.write_text(text)
    code = main(["run", str(study), "--output", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def test_a_misspelt_study_key_gets_its_correction_not_every_key(tmp_path, capsys):
    err = _run_error(tmp_path, capsys, STUDY.replace("steps = 40", "stpes = 40"))
    assert "[training] has unknown keys ['stpes']; did you mean 'steps'?" in err and "allowed keys" not in err


def test_an_unknown_study_kind_gets_its_correction(tmp_path, capsys):
    err = _run_error(tmp_path, capsys, STUDY.replace('kind = "oscillator"', 'kind = "oscilator"'))
    assert "[study] kind 'oscilator' is not a study kind; did you mean 'oscillator'?" in err
    err = _run_error(tmp_path, capsys, STUDY.replace('kind = "oscillator"', 'kind = "pendulum"'))
    assert "kind must be one of ['fma', 'invariants', 'oscillator']" in err


def test_a_misspelt_hook_name_gets_its_correction():
    from physlens.models import OscillatorTransformer, TransformerConfig
    from physlens.probes.linear_probe import probe_sweep

    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=1, d_head=4, n_ctx=4, attn_only=True, dtype="float64")
    model = OscillatorTransformer(cfg)
    inputs = torch.randn(8, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"unknown hook names \['blocks.1.hook_resid_pots'\] for OscillatorTransformer; "
                                         r"did you mean 'blocks.1.hook_resid_post'\?$"):
        probe_sweep(model, inputs, ["blocks.1.hook_resid_pots"], targets=["x"], labels={"x": inputs[:, :, 0]})


def test_a_bare_run_prints_a_usage_line_with_an_example(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["run"])
    err = capsys.readouterr().err
    assert caught.value.code == 2
    usage, message = err.strip().splitlines()
    assert usage == "usage: physlens run STUDY.toml [--output DIR] [--overwrite] [--quiet] | physlens run --resume RUN_DIR [--quiet]"
    assert "give a study file to run (e.g. physlens run " in message and "oscillator.toml" in message and "--resume RUN_DIR" in message


def test_help_lists_the_study_kinds_and_the_shipped_studies_read_at_run_time(capsys, tmp_path, monkeypatch):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "study kinds ([study] kind): fma, invariants, oscillator" in out
    for file in sorted((ROOT / "probes").glob("*.toml")):
        assert file.name in out
    # A study file added to ./probes shows up at once; one that is not a study is left out.
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "mine.toml").write_text(STUDY.replace('name = "tiny"', 'name = "mine"')
                                                    .replace("seed = 1", 'seed = 1\ndescription = "my own study"'))
    (tmp_path / "probes" / "broken.toml").write_text("[study\n")
    monkeypatch.chdir(tmp_path)
    assert [(str(p), k, d) for p, k, d in shipped_studies([Path("probes")])] == [("probes/mine.toml", "oscillator", "my own study")]
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "probes/mine.toml" in out and "my own study" in out and "broken.toml" not in out


def test_runs_prints_a_header_row(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    for name in ("report.md", "metrics.json"):
        (tmp_path / "old" / name).write_text("{}")
    assert main(["runs", str(tmp_path)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "STATUS", "KIND", "DETAIL"] and row.split()[:2] == ["old", "complete"]
    assert header.index("STATUS") == row.index("complete")
