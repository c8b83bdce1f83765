"""The documentation site builds under ``--strict``, which executes every tutorial's code.

A tutorial code block that raises makes markdown-exec log a warning, and ``--strict`` turns any
warning into a failed build; ``test_a_failing_code_block_fails_the_strict_build`` pins that
behaviour on a throw-away site so a broken tutorial can never pass silently. The docs tooling is
the ``docs`` extra; without it these tests are skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

for _module in ("mkdocs", "material", "mkdocstrings", "markdown_exec"):
    pytest.importorskip(_module, reason="the docs extra is not installed")


def _build(config: Path, site: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=config.parent,
        env=env,
    )


def _tiny_site(root: Path, code: str) -> Path:
    (root / "docs").mkdir()
    (root / "docs" / "index.md").write_text(
        "# Tiny\n\n```python exec=\"on\"\n" + textwrap.dedent(code).strip() + "\n```\n"
    )
    config = root / "mkdocs.yml"
    config.write_text(
        "site_name: tiny\nmarkdown_extensions:\n  - pymdownx.superfences\nplugins:\n  - markdown-exec\n"
    )
    return config


def test_a_passing_code_block_is_executed_and_its_output_rendered(tmp_path: Path) -> None:
    config = _tiny_site(tmp_path, "print(6 * 7)")
    result = _build(config, tmp_path / "site", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "42" in (tmp_path / "site" / "index.html").read_text()


def test_a_failing_code_block_fails_the_strict_build(tmp_path: Path) -> None:
    config = _tiny_site(tmp_path, "raise RuntimeError('tutorial broke')")
    result = _build(config, tmp_path / "site", timeout=120)
    assert result.returncode != 0
    assert "tutorial broke" in result.stderr


@pytest.mark.slow
def test_site_builds_strictly_and_every_tutorial_runs(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = _build(ROOT / "mkdocs.yml", site, timeout=1800)
    assert result.returncode == 0, result.stderr[-5000:]
    tutorials = sorted((ROOT / "docs" / "tutorials").glob("*.md"))
    assert tutorials, "no tutorials found"
    for page in tutorials:
        html = (site / "tutorials" / page.stem / "index.html").read_text()
        # Every tutorial draws at least one figure from its own code (a base64 PNG or inline SVG).
        assert re.search(r"<img[^>]+src=\"data:image/png;base64,|<svg", html), f"{page.name} rendered no figure"
        assert "Traceback" not in html, f"{page.name} shows a traceback"
