"""The ``physlens`` command line: ``physlens run STUDY.toml`` runs a study and writes its report;
``physlens sweep FILE.toml`` runs a study over seeds and settings and writes a table and a sweep report."""

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

    sweep = commands.add_parser(
        "sweep", help="run a study over seeds and settings (a [sweep] table and/or --seeds/--set) and aggregate the trials",
        description="Run every trial of a sweep that has not finished yet, then write results.csv/.parquet and report.md. "
                    "Rerunning the same command skips finished trials and retries the others.",
    )
    sweep.add_argument("file", help="a study file (optionally with a [sweep] table) or a sweep file (probes/sweeps/*.toml)")
    sweep.add_argument("--seeds", type=int, default=None, help="run this many seeds, from the study's [study] seed on")
    sweep.add_argument("--set", dest="set_options", action="append", default=[], metavar="KEY=V1[,V2...]",
                       help="vary a study key over these values (one value: set it in every trial); repeatable, "
                            "e.g. --set model.n_layers=2,4 --set training.lr=1e-2")
    sweep.add_argument("--name", default=None, help="sweep directory name (default: [sweep] name, or <study name>-sweep)")
    sweep.add_argument("--output", default="runs", help="directory that receives <sweep name>/ (default: runs)")
    sweep.add_argument("--backend", choices=["local", "ray"], default="local",
                       help="local worker processes (default) or Ray tasks (embedded Ray, or a cluster with --address)")
    sweep.add_argument("--workers", type=int, default=None,
                       help="local: worker processes (default: one per core; 0 runs trials in this process); "
                            "ray without --address: CPUs of the embedded Ray")
    sweep.add_argument("--address", default=None, help="Ray cluster address (ray://host:10001, or 'auto' on a cluster node)")
    sweep.add_argument("--gpus-per-trial", type=float, default=0.0,
                       help="ray: GPUs each trial asks of the cluster (Ray hides GPUs from tasks that ask for none)")
    sweep.add_argument("--dry-run", action="store_true", help="list the trials and exit without running them")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    return _sweep(args)


def _run(args: argparse.Namespace) -> int:
    from physlens.studies import StudySpecError, run_study

    try:
        out = run_study(args.study, output_root=args.output, overwrite=args.overwrite, progress=not args.quiet,
                        threads=args.threads)
    except (StudySpecError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"physlens: error: {error}", file=sys.stderr)
        return 2
    print(f"report written to {out / 'report.md'}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from physlens.studies import StudySpecError
    from physlens.sweeps import SweepError, load_sweep, run_sweep
    from physlens.sweeps.spec import key_text

    try:
        sweep = load_sweep(args.file, seeds=args.seeds, set_options=args.set_options, name=args.name)
        if args.dry_run:
            print(f"sweep {sweep.name}: {len(sweep.trials)} trials of {sweep.study_path}")
            for trial in sweep.trials:
                print(f"  {trial.name}: " + ", ".join(f"{key_text(k)}={v!r}" for k, v in trial.overrides.items()))
            return 0
        result = run_sweep(sweep, output_root=args.output, backend=args.backend, workers=args.workers,
                           address=args.address, progress=not args.quiet, gpus_per_trial=args.gpus_per_trial)
    except (StudySpecError, SweepError, FileNotFoundError, ValueError) as error:
        print(f"physlens: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("physlens: interrupted; run the same command again to continue the sweep (finished trials are kept)",
              file=sys.stderr)
        return 130
    print(f"{result.n_finished} of {result.n_trials} trials finished ({result.n_skipped} were already), "
          f"{len(result.failures)} failed; table {result.directory / 'results.csv'}, report {result.report}")
    for name, error in result.failures.items():
        print(f"  failed: {name}: {error}", file=sys.stderr)
    return 1 if result.failures else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
