"""A whole study in one command: data splits -> pre-pretraining -> pretraining / downstream
arms -> evaluation -> a results table, locally or on SLURM, resumable.

    python -m megaproc.study SPEC.yaml [--out-dir D] [--dry-run] [--parallel N] [--slurm]
    python -m megaproc.study SPEC.yaml --out-dir D --collect     # results only

The spec (docs/study.md, :mod:`megaproc.study_spec`) names stages, each a recipe plus
overrides with arms, grids and seeds; it expands into a graph of runs in which a run that
several arms start from is trained once (:mod:`megaproc.study_graph`).  Every run's config is
checked before anything starts (a bad key, recipe or dependency is one ``error:`` line, exit
code 2); ``--dry-run`` prints the graph and stops there.

Locally the runs execute in dependency order, ``--parallel`` at a time
(:mod:`megaproc.study_runner`); with ``--slurm`` each is a job chained by ``afterok``
dependencies (:mod:`megaproc.study_slurm`).  Rerunning continues: finished runs are skipped,
interrupted ones resume from their checkpoints, failed ones run again; a failed run's
dependents are skipped while the other arms go on (exit code 1).  Results:
``D/results.csv``, ``D/results.md``, ``D/plots/`` (:mod:`megaproc.study_results`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from megaproc.errors import run_cli
from megaproc.study_graph import describe, expand, validate
from megaproc.study_results import summary_metrics, write_results
from megaproc.study_runner import (finish_run, node_status, run_local, settings_changed,
                                   study_lock, with_skipped)
from megaproc.study_slurm import submit_study
from megaproc.study_spec import StudyError, load_spec
from megaproc.sweep_jobs import format_table

DEFAULT_ROOT = Path("runs") / "study"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m megaproc.study",
        description="Run a study: stages of runs from recipes, arms, grids and seeds, then "
                    "evaluation and a results table (locally or on SLURM).")
    parser.add_argument("spec", nargs="?", help="study file (configs/study/*.yaml)")
    parser.add_argument("--out-dir", help="study folder (default: the spec's out_dir, else "
                                          "runs/study/<name>)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check every run and print the graph; run nothing")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="runs at a time (locally; default 1)")
    parser.add_argument("--slurm", action="store_true",
                        help="submit every unfinished run as a SLURM job instead")
    parser.add_argument("--collect", action="store_true",
                        help="only write results.csv, results.md and plots/ from what exists")
    parser.add_argument("--no-plots", action="store_true", help="no plots/")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--finish-run", metavar="RUN_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--exit-code", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    return parser


def load_graph(spec_path: str, out_dir: str | None):
    """The spec's graph in its study folder, every run checked; prints the warnings."""
    spec = load_spec(spec_path)
    graph = expand(spec, out_dir or spec.out_dir or DEFAULT_ROOT / spec.name)
    for warning in validate(graph):
        print(f"warning: {warning}", file=sys.stderr)
    return graph


def report(graph, status: dict, plots: bool) -> None:
    """Write results.csv, results.md and plots/; print the table and where they are."""
    paths, rows, columns = write_results(graph, status, plots=plots)
    print(format_table(rows, ["run", "status", *summary_metrics(graph, rows, columns)]))
    print(f"results: {paths[0]}, {paths[1]}" + (f", {len(paths) - 2} plots in "
                                                f"{graph.out_dir / 'plots'}" if plots else ""))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.finish_run:
        return finish_run(args.finish_run, args.exit_code, args.log)
    if not args.spec:
        raise StudyError("a study file is required (python -m megaproc.study SPEC.yaml)")
    if args.parallel < 1:
        raise StudyError("--parallel must be >= 1")
    if sum((args.dry_run, args.slurm, args.collect)) > 1:
        raise StudyError("choose one of --dry-run, --slurm and --collect")
    graph = load_graph(args.spec, args.out_dir)
    status = {n.node_id: node_status(n) for n in graph.nodes}
    for node in graph.nodes:
        if status[node.node_id] in ("done", "trained") and settings_changed(node):
            print(f"warning: {node.node_id} was trained with other settings than the spec gives "
                  f"it now (see {node.directory / 'study_node.json'}); it is kept: delete its "
                  "folder to train it again", file=sys.stderr)
    if args.dry_run:
        print(describe(graph, status))
        return 0
    if args.collect:
        report(graph, status, not args.no_plots)
        return 0
    if args.slurm:
        submit_study(graph, Path(args.spec).resolve())
        return 0
    with study_lock(graph.out_dir):
        status = run_local(graph, args.parallel, progress=not args.no_progress)
        report(graph, status, not args.no_plots)
    unfinished = {k: v for k, v in with_skipped(graph, status).items() if v != "done"}
    if unfinished:
        print(f"{len(unfinished)} of {len(status)} nodes did not finish (rerun to retry): "
              + ", ".join(f"{k} ({v})" for k, v in unfinished.items()))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="python -m megaproc.study"))
