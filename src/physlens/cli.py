"""The ``physlens`` command line: ``physlens run STUDY.toml`` runs a study and writes its report,
``physlens run --resume RUN_DIR`` continues an interrupted run, ``physlens runs`` lists runs and
their status, and ``physlens sweep FILE.toml`` runs a study over seeds and settings and writes a
table and a sweep report.

Every expected failure (a bad study file, an output directory that cannot be written, a damaged
checkpoint, a diverging training run) ends with one line on stderr and exit status 2, Ctrl-C with
one line saying how to continue and exit status 130; ``--traceback`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_ERROR = 2
"""Exit status of a run that failed for an expected reason (the message says which)."""
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as shells report it)."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("physlens")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
        return "unknown"


def _message(error: BaseException) -> str:
    """One line for an expected failure: the error's own words, its file for an OS error, and its notes."""
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
        if error.filename is not None and str(error.filename) not in text:
            text = f"{text}: {str(error.filename)!r}"
        if getattr(error, "filename2", None) is not None and str(error.filename2) not in text:
            text += f" -> {str(error.filename2)!r}"
    else:
        text = str(error) or type(error).__name__
    if type(error) in (FloatingPointError, RuntimeError, MemoryError):  # a bare builtin error: say which
        text = f"{type(error).__name__}: {text}"
    notes = getattr(error, "__notes__", None) or []
    return " ".join([text.replace("\n", " "), *(note.replace("\n", " ") for note in notes)])


EXPECTED = (ValueError, OSError, FloatingPointError, RuntimeError, MemoryError)
"""Failures the command reports in one line (the study, the files, the numbers); anything else is a bug
and keeps its traceback."""


def _guarded(action: Callable[[], int], args: argparse.Namespace, interrupted: str) -> int:
    if args.traceback:
        return action()
    try:
        return action()
    except KeyboardInterrupt as error:
        text = str(error) or interrupted
        print(f"physlens: {text}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except EXPECTED as error:
        print(f"physlens: error: {_message(error)}", file=sys.stderr)
        return EXIT_ERROR


def shipped_studies(directories: Sequence[Path] | None = None) -> list[tuple[Path, str, str]]:
    """The study files in ``probes/`` — of the working directory and of the source tree physlens runs
    from (default), read when asked — as ``(path, kind, description)``; a file that cannot be read as
    a study is left out. ``physlens --help`` lists them."""
    if directories is None:
        directories = [Path("probes"), Path(__file__).resolve().parents[2] / "probes"]
    found: dict[Path, tuple[Path, str, str]] = {}
    for directory in directories:
        if not directory.is_dir():
            continue
        for file in sorted(directory.glob("*.toml")):
            if file.resolve() in found:
                continue
            try:
                from physlens.studies import load_study

                header = load_study(file)["study"]
            except (ValueError, OSError):
                continue
            shown = os.path.relpath(file) if not os.path.relpath(file).startswith("..") else str(file)
            found[file.resolve()] = (Path(shown), header["kind"], header.get("description", ""))
    return list(found.values())


def _epilog() -> str:
    from physlens.studies import STUDY_KINDS

    lines = ["study kinds ([study] kind): " + ", ".join(sorted(STUDY_KINDS))]
    studies = shipped_studies()
    if studies:
        width = max(len(str(path)) for path, _, _ in studies)
        lines += ["", "shipped studies (physlens run FILE):"]
        for path, kind, description in studies:
            text = description if len(description) <= 70 else description[:69] + "…"
            lines.append(f"  {str(path):<{width}}  {kind:<10}  {text}".rstrip())
    lines += ["", "physlens run FILE runs a study, physlens runs lists runs, physlens sweep FILE runs a sweep; "
                  "add -h after a command for its options."]
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """The top-level parser: its help ends with the study kinds and the shipped studies, read only
    when the help is shown."""

    def format_help(self) -> str:
        return super().format_help() + "\n" + _epilog() + "\n"


RUN_USAGE = "physlens run STUDY.toml [--output DIR] [--overwrite] [--quiet] | physlens run --resume RUN_DIR [--quiet]"
"""The usage line of ``physlens run``."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``physlens`` command; returns the process exit code."""
    parser = _Parser(prog="physlens", description="Mechanistic interpretability of physics networks.",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"physlens {_version()}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error instead of one line")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a study file (probes/*.toml) and write its report, or --resume an interrupted run",
                              description="Run a study file, or continue an interrupted run from its last checkpoint.",
                              usage=RUN_USAGE)
    run.add_argument("study", nargs="?", help="path to a study TOML file")
    run.add_argument("--resume", metavar="RUN_DIR", default=None,
                     help="continue the interrupted run RUN_DIR (runs/<name>, as `physlens runs` lists it) from its last checkpoint")
    run.add_argument("--output", default="runs", help="directory that receives <study name>/ (default: runs)")
    run.add_argument("--overwrite", action="store_true", help="replace an earlier run of the same study")
    run.add_argument("--quiet", action="store_true", help="no progress bars: one line on stderr at most once a minute instead")
    run.add_argument("--threads", type=int, default=None, help="torch threads for the run (default: the study's [study] threads)")

    runs = commands.add_parser("runs", help="list the runs in a directory and their status (complete, running, resumable, interrupted)")
    runs.add_argument("directory", nargs="?", default="runs", help="directory of runs (default: runs)")

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
    _use_non_interactive_backend()
    if args.command == "run":
        if args.study is None and args.resume is None:
            studies = sorted((path.name != "oscillator.toml", str(path)) for path, _, _ in shipped_studies())
            example = f" (e.g. physlens run {studies[0][1]}; `physlens --help` lists the shipped studies)" if studies else ""
            run.error(f"give a study file to run{example}, or --resume RUN_DIR to continue an interrupted run "
                      "(`physlens runs` lists runs)")
        if args.study is not None and args.resume is not None:
            run.error("give either a study file or --resume RUN_DIR, not both")
        if args.resume is not None and args.overwrite:
            run.error("--overwrite does not apply to --resume (a resumed run keeps the setting it started with)")
        return _guarded(lambda: _run(args), args, "interrupted")
    if args.command == "runs":
        return _guarded(lambda: _runs(args), args, "interrupted")
    return _guarded(lambda: _sweep(args), args,
                    "interrupted; run the same command again to continue the sweep (finished trials are kept)")


def _use_non_interactive_backend() -> None:
    """The command saves its figures and never shows one, so it draws them without a GUI backend,
    whatever display the machine has."""
    import matplotlib

    matplotlib.use("Agg")


def _run(args: argparse.Namespace) -> int:
    from physlens.studies import resume_run, run_study

    if args.resume is not None:
        out = resume_run(args.resume, progress=not args.quiet, threads=args.threads, heartbeat=args.quiet)
    else:
        out = run_study(args.study, output_root=args.output, overwrite=args.overwrite, progress=not args.quiet,
                        threads=args.threads, heartbeat=args.quiet)
    print(f"report written to {out / 'report.md'}")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from physlens.studies import list_runs

    found = list_runs(args.directory)
    if not found:
        print(f"no runs in {args.directory}")
        return 0
    width = max(len("NAME"), *(len(info.name) for info in found))
    print(f"{'NAME':<{width}}  {'STATUS':<11}  {'KIND':<10}  DETAIL")
    for info in found:
        print(f"{info.name:<{width}}  {info.status:<11}  {info.kind or '-':<10}  {info.detail}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from physlens.sweeps import load_sweep, run_sweep
    from physlens.sweeps.spec import key_text

    sweep = load_sweep(args.file, seeds=args.seeds, set_options=args.set_options, name=args.name)
    if args.dry_run:
        print(f"sweep {sweep.name}: {len(sweep.trials)} trials of {sweep.study_path}")
        for trial in sweep.trials:
            print(f"  {trial.name}: " + ", ".join(f"{key_text(k)}={v!r}" for k, v in trial.overrides.items()))
        return 0
    try:
        result = run_sweep(sweep, output_root=args.output, backend=args.backend, workers=args.workers,
                           address=args.address, progress=not args.quiet, gpus_per_trial=args.gpus_per_trial)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("interrupted; run the same command again to continue the sweep (finished trials are kept)") from None
    print(f"{result.n_finished} of {result.n_trials} trials finished ({result.n_skipped} were already), "
          f"{len(result.failures)} failed; table {result.directory / 'results.csv'}, report {result.report}")
    for name, error in result.failures.items():
        print(f"  failed: {name}: {error}", file=sys.stderr)
    return 1 if result.failures else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
