"""The ``physlens`` command line: ``physlens run STUDY.toml`` runs a study and writes its report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``physlens`` command; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="physlens", description="Mechanistic interpretability of physics networks.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a study file (probes/*.toml) and write its report")
    run.add_argument("study", help="path to a study TOML file")
    run.add_argument("--output", default="runs", help="directory that receives <study name>/ (default: runs)")
    run.add_argument("--overwrite", action="store_true", help="replace an earlier run of the same study")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--threads", type=int, default=None, help="torch threads for the run (default: the study's [study] threads)")
    args = parser.parse_args(argv)

    from physlens.studies import StudySpecError, run_study

    try:
        out = run_study(args.study, output_root=args.output, overwrite=args.overwrite, progress=not args.quiet,
                          threads=args.threads)
    except (StudySpecError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"physlens: error: {error}", file=sys.stderr)
        return 2
    print(f"report written to {out / 'report.md'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
