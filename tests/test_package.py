"""The package itself: a lazily loaded curated top level, and no work done at import."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import physlens

SRC = Path(__file__).resolve().parents[1] / "src"


def _run_clean(code: str) -> str:
    """Run ``code`` in a fresh interpreter without a display or a chosen backend; return its stdout."""
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "MPLBACKEND": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("name", [n for n in physlens.__all__ if n != "__version__"])
def test_every_top_level_name_is_the_subpackage_object(name):
    module = importlib.import_module(physlens._EXPORTS[name])
    assert getattr(physlens, name) is getattr(module, name)
    assert name in dir(physlens)
    assert name in module.__all__  # only public names are promoted


def test_the_names_a_study_starts_from_are_at_the_top_level():
    for name in ("OscillatorSystem", "OscillatorTransformer", "train", "load_checkpoint", "probe_sweep", "run_study"):
        assert name in physlens.__all__
    assert physlens.probes is importlib.import_module("physlens.probes")


def test_an_unknown_top_level_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'OscilatorSystem'"):
        physlens.OscilatorSystem  # noqa: B018
    assert not hasattr(physlens, "_warmup")


_PACKAGES = ["physlens"] + [info.name for info in pkgutil.walk_packages(physlens.__path__, "physlens.") if info.ispkg]


@pytest.mark.parametrize("package_name", _PACKAGES)
def test_no_public_name_is_also_a_submodule_name(package_name):
    # A function named like its module hides the module behind the package attribute (and the API
    # reference renders the module in its place), so every exported name must differ from every
    # submodule's name.
    package = importlib.import_module(package_name)
    submodules = {info.name for info in pkgutil.iter_modules(package.__path__)}
    assert sorted(submodules & set(getattr(package, "__all__", []))) == []


def test_functions_that_share_a_word_with_their_module_are_the_functions():
    from physlens.probes import distill, saliency
    from physlens.training import rollout

    assert all(inspect.isfunction(f) for f in (distill, saliency, rollout))


def test_import_physlens_loads_no_heavy_dependency():
    out = _run_clean(
        "import sys, json, physlens; "
        "print(json.dumps(sorted(m for m in ('torch', 'matplotlib', 'numpy', 'sklearn', 'transformer_lens') if m in sys.modules)))"
    )
    assert json.loads(out) == []


def test_importing_every_module_chooses_no_backend_and_draws_nothing():
    # _forkserver_preload is the fork server's warm-up entry point: importing it is its job.
    out = _run_clean(
        "import importlib, pkgutil, json, physlens, matplotlib\n"
        "names = [i.name for i in pkgutil.walk_packages(physlens.__path__, 'physlens.') if not i.name.endswith('_forkserver_preload')]\n"
        "for name in names: importlib.import_module(name)\n"
        "import matplotlib.pyplot as plt\n"
        "print(json.dumps([matplotlib.rcParams._get_backend_or_none(), plt.get_fignums(), len(names)]))\n"
    )
    backend, figures, count = json.loads(out)
    assert backend is None and figures == [] and count > 50


def test_figures_save_without_a_display(tmp_path):
    # With no DISPLAY and no MPLBACKEND, matplotlib falls back to Agg on its own; the warm-up draws
    # on a bare Figure and selects no backend at all.
    path = tmp_path / "curve.png"
    out = _run_clean(
        "import matplotlib, json\n"
        "from physlens.sweeps._warmup import warm_up\n"
        "warm_up()\n"
        "before = matplotlib.rcParams._get_backend_or_none()\n"
        "from physlens.plots import plot_loss_curve\n"
        f"plot_loss_curve([1.0, 0.5, 0.25]).savefig({str(path)!r})\n"
        "print(json.dumps([before, matplotlib.get_backend().lower()]))\n"
    )
    assert json.loads(out) == [None, "agg"]
    assert path.stat().st_size > 1000
