"""Re-run the adversarial table: every attack in ``tests/test_attacks.py``'s ``ATTACKS``, with how many hold.

Run from the repository root: ``PYTHONPATH=src python tests/attack_table.py`` (extra arguments go to pytest,
e.g. ``-x``). Prints one row per attack (held or not, and its failing tests) and ``held N/M``; exits 0 when
every attack holds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class _Outcomes:
    """Collects each test's outcome by node id (a test that fails in setup or teardown fails)."""

    def __init__(self) -> None:
        self.passed: dict[str, bool] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        ok = report.passed or (report.when != "call" and not report.failed)
        self.passed[report.nodeid] = self.passed.get(report.nodeid, True) and ok and not report.skipped

    def held(self, node: str) -> bool:
        """Whether ``node`` passed; a parametrised test named without its parameters holds when every case ran and passed."""
        cases = [passed for nodeid, passed in self.passed.items() if nodeid == node or nodeid.startswith(node + "[")]
        return bool(cases) and all(cases)


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from tests.test_attacks import ATTACKS

    nodes = sorted({node for _, tests in ATTACKS.values() for node in tests})
    outcomes = _Outcomes()
    pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT), *argv, *nodes], plugins=[outcomes])
    held = 0
    print()
    for attack, (kind, tests) in ATTACKS.items():
        failing = [node for node in tests if not outcomes.held(node)]
        held += not failing
        print(f"{'held' if not failing else 'FAILS':<5}  {kind:<6}  {attack}" + (f"  ({', '.join(failing)})" if failing else ""))
    print(f"\nheld {held}/{len(ATTACKS)}")
    return 0 if held == len(ATTACKS) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
