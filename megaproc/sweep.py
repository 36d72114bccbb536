"""Run a grid sweep of megaproc runs (see :mod:`megaproc.sweep_jobs` for the file format).

    python -m megaproc.sweep SWEEP.yaml [--dry-run] [--parallel N] [--slurm-array OUT.sbatch]

Every job is validated first (a bad key is refused, naming it, and nothing runs); finished jobs
are skipped, failed and interrupted ones run again; at the end a summary of the final metrics is
printed and written to ``results_root/experiment_name/summary.csv``.  The exit code is 1 when a
job failed, 2 on a bad sweep file.
"""

from __future__ import annotations

import argparse
import sys

from megaproc import sweep_jobs as sj
from megaproc.errors import ConfigError, run_cli


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m megaproc.sweep",
                                     description="Run a YAML grid sweep of megaproc runs.")
    parser.add_argument("sweep", help="sweep file (experiment_name, results_root, base_args, grid)")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs and exit")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="jobs at a time (with --slurm-array: array tasks at a time)")
    parser.add_argument("--slurm-array", metavar="OUT.sbatch",
                        help="write a SLURM job-array script for the unfinished jobs instead")
    parser.add_argument("--job-index", type=int, metavar="I",
                        help="run job I only (what each SLURM array task does)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 with one line on bad input)."""
    args = build_parser().parse_args(argv)
    return run_cli(run_sweep, args)


def run_sweep(args) -> int:
    """Validate every job, then run (or list, or write the SLURM array of) the unfinished ones."""
    if args.parallel < 1:
        raise ConfigError("--parallel must be >= 1")
    sweep = sj.load_sweep(args.sweep)
    jobs = sj.expand_jobs(sweep)
    for warning in sj.validate_jobs(sweep, jobs):
        print(f"warning: {warning}", file=sys.stderr)
    if args.job_index is not None:
        if not 0 <= args.job_index < len(jobs):
            raise ConfigError(f"--job-index must be in [0, {len(jobs) - 1}]")
        job = jobs[args.job_index]
        if sj.job_status(job) == "done":
            print(f"{job.job_id}: already done")
            return 0
        result = sj.run_job(job, sweep)
        print(f"{job.job_id}: {result['status']} (exit code {result['exit_code']})")
        return result["exit_code"]
    status = {job.job_id: sj.job_status(job) for job in jobs}
    todo = [job for job in jobs if status[job.job_id] != "done"]
    if args.dry_run:
        print(f"{sweep.experiment_dir}: {len(jobs)} jobs, {len(todo)} to run")
        for job in jobs:
            print(f"  [{status[job.job_id]:>11}] {job.job_id}: {' '.join(job.overrides)}")
        return 0
    if args.slurm_array:
        if not todo:
            print("every job is done; no script written")
            return 0
        with open(args.slurm_array, "w", encoding="utf-8") as handle:
            handle.write(sj.slurm_array_script(sweep, todo,
                                               args.parallel if args.parallel > 1 else None))
        print(f"wrote {args.slurm_array}: {len(todo)} array tasks (sbatch {args.slurm_array})")
        return 0
    skipped = len(jobs) - len(todo)
    print(f"{sweep.experiment_dir}: {len(todo)} jobs to run, {skipped} already done", flush=True)
    results = sj.run_jobs(todo, sweep, args.parallel, progress=not args.no_progress)
    rows = sj.summary_rows(jobs)
    summary = sweep.experiment_dir / "summary.csv"
    columns = sj.write_summary_csv(rows, jobs, summary)
    print(sj.format_table(rows, columns))
    print(f"summary: {summary}")
    unfinished = 0
    for state in ("failed", "interrupted"):
        ids = [job_id for job_id, result in results.items() if result["status"] == state]
        if ids:
            print(f"{len(ids)} {state} (see their stdout.log; rerun to retry): {', '.join(ids)}")
        unfinished += len(ids)
    return 1 if unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
