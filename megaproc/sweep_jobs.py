"""Grid sweeps of megaproc runs: the sweep file, its jobs, running them and the summary.

Sweep file (YAML)::

    experiment_name: qwen1.7B_binary_tasks      # results_root/experiment_name/<job id>/
    results_root: ./results
    recipe: configs/X.yaml                      # optional; see below
    base_args: {lr: 1e-5, ...}                  # every job
    grid: {sequence_length: [100, 50], target_func: [fn_a, fn_g]}   # cartesian product
    # optional: program (default megaproc/train.py), launcher (default [python]),
    #           slurm: {partition: gpu, gres: "gpu:1", time: "04:00:00", ...}

With ``recipe`` the keys of ``base_args`` and ``grid`` are dotted megaproc keys
(``train.max_steps``) of that recipe, so any workflow can be swept.  Without it the keys are the
seed's classification flags, translated by :mod:`megaproc.seed_compat.classify_flags` into overrides of
``configs/classify/base.yaml``.  Job ``<id>`` runs::

    LAUNCHER PROGRAM --config RECIPE k=v ... run.out_dir=results_root/experiment_name/<id>

in the current directory with stdout and stderr appended to ``<id>/stdout.log``.  Before any job
starts, every job's overrides are loaded with :func:`megaproc.config.load_config`: a bad key or
value is refused naming it, and nothing runs.

Job folder: ``config.json`` (args, overrides, command), ``stdout.log``, the run's own files,
and one marker: ``RUNNING`` while it runs, ``DONE`` (exit code 0; holds the final metrics)
or ``FAILED`` (exit code, tail of the log).  A rerun skips ``DONE`` jobs and runs failed and
interrupted ones again (the trainer resumes from their last checkpoint, if any).

Final metrics of a job: the last value of every numeric array (or the last record) of
``metrics.json``, else the last record of ``logs/eval.jsonl``, plus ``step`` and ``loss`` of the
last ``logs/train.jsonl`` record.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from tqdm.auto import tqdm

from megaproc.config import load_config
from megaproc.errors import ConfigError
from megaproc.files import REPO_ROOT, atomic_write_json, last_jsonl
from megaproc.runs import resolve
from megaproc.seed_compat.classify_flags import BASE_RECIPE, canonical_flag, format_value, translate
from megaproc.synthetic.boolean_data import replacement_note

DEFAULT_PROGRAM = "megaproc/train.py"
SWEEP_KEYS = ("experiment_name", "results_root", "recipe", "base_args", "grid", "program",
              "launcher", "slurm")
MARKERS = ("RUNNING", "DONE", "FAILED")
PREFERRED_METRICS = ("train_acc", "test_acc", "train_loss", "test_loss", "step", "loss")
MAX_ID_LENGTH = 120
# Exit codes of a job stopped by SIGINT/SIGTERM (killed by the signal, or exiting 128 + signal).
INTERRUPT_CODES = (-signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGTERM)


@dataclass
class Sweep:
    """A parsed sweep file (paths absolute)."""

    path: Path
    experiment_name: str
    results_root: Path
    recipe: Path
    seed_style: bool
    base_args: dict
    grid: dict
    program: Path
    launcher: list
    slurm: dict = field(default_factory=dict)

    @property
    def experiment_dir(self) -> Path:
        """``results_root/experiment_name``."""
        return self.results_root / self.experiment_name


@dataclass
class Job:
    """One point of the grid."""

    index: int
    job_id: str
    point: dict          # the grid values of this job
    args: dict           # base_args updated with the point
    overrides: list
    directory: Path
    command: list


# ----------------------------------------------------------------------------- the file
def resolve_path(path: str, near: Path, what: str) -> Path:
    """A path as given (cwd), else relative to the folder ``near`` (the sweep or study file's),
    else in the repository; a :class:`ConfigError` ``"<what>: <path> not found"`` otherwise."""
    for candidate in (Path(path).expanduser(), near / path, REPO_ROOT / path):
        if candidate.exists():
            return candidate.resolve()
    raise ConfigError(f"{what}: {path} not found")


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Read and check a sweep file (structure only; see :func:`validate_jobs` for values)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"sweep file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {path} must hold a mapping")
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"unknown sweep key '{unknown[0]}' (valid: {', '.join(SWEEP_KEYS)})")
    for key in ("experiment_name", "results_root"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ConfigError(f"sweep key '{key}' must be a non-empty string")
    if "/" in data["experiment_name"] or data["experiment_name"] in (".", ".."):
        raise ConfigError("sweep key 'experiment_name' must be a plain folder name")
    base, grid = data.get("base_args") or {}, data.get("grid") or {}
    if not isinstance(base, dict):
        raise ConfigError("sweep key 'base_args' must be a mapping")
    if not isinstance(grid, dict):
        raise ConfigError("sweep key 'grid' must be a mapping of key: [values]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep grid key '{key}' must list at least one value")
    launcher = data.get("launcher") or [sys.executable]
    if isinstance(launcher, str):
        launcher = shlex.split(launcher)
    sweep_dir = path.resolve().parent
    seed_style = "recipe" not in data
    recipe = resolve_path(data.get("recipe") or BASE_RECIPE, sweep_dir, "sweep key 'recipe'")
    program = resolve_path(data.get("program") or DEFAULT_PROGRAM, sweep_dir,
                           "sweep key 'program'")
    slurm = data.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ConfigError("sweep key 'slurm' must be a mapping of sbatch options")
    return Sweep(path.resolve(), data["experiment_name"],
                 Path(data["results_root"]).expanduser().resolve(), recipe, seed_style,
                 dict(base), dict(grid), program, [str(x) for x in launcher], dict(slurm))


# ----------------------------------------------------------------------------- jobs
def job_id(point: dict) -> str:
    """``key=value__key=value`` of a grid point (sorted keys), safe as a folder name."""
    if not point:
        return "run"
    parts = [f"{k}={format_value(v)}" for k, v in sorted(point.items())]
    text = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "__".join(parts)).strip("-")
    if len(text) > MAX_ID_LENGTH:
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        text = f"{text[:MAX_ID_LENGTH - 11]}-{digest}"
    return text


def _overrides(sweep: Sweep, args: dict) -> list[str]:
    if sweep.seed_style:
        if "results_path" in {canonical_flag(str(k)) for k in args}:
            raise ConfigError("sweep: 'results_path' is set per job (results_root/"
                              "experiment_name/<job id>); remove it from base_args/grid")
        return translate(args)
    for key in args:
        if "." not in str(key):
            raise ConfigError(f"sweep key '{key}' must be a dotted megaproc key (the sweep names "
                              f"a recipe); e.g. train.max_steps")
    if "run.out_dir" in args:
        raise ConfigError("sweep: 'run.out_dir' is set per job; remove it from base_args/grid")
    return [f"{key}={format_value(value)}" for key, value in args.items()]


def expand_jobs(sweep: Sweep) -> list[Job]:
    """The cartesian product of the grid, in file order (the last key varies fastest)."""
    keys = list(sweep.grid)
    jobs = []
    for index, values in enumerate(itertools.product(*(sweep.grid[k] for k in keys))):
        point = dict(zip(keys, values))
        args = {**sweep.base_args, **point}
        directory = sweep.experiment_dir / job_id(point)
        overrides = _overrides(sweep, args)
        command = [*sweep.launcher, str(sweep.program), "--config", str(sweep.recipe),
                   *overrides, f"run.out_dir={directory}"]
        jobs.append(Job(index, directory.name, point, args, overrides, directory, command))
    if len({job.job_id for job in jobs}) != len(jobs):
        raise ConfigError("sweep grid gives two jobs the same folder (repeated grid values?)")
    return jobs


def load_run_config(recipe, overrides: list[str]):
    """The config of one run loaded and resolved as the trainer does before any step (every
    key, the kind's checks, the model name); files that earlier runs may still write are not
    required.  A :class:`~megaproc.errors.ConfigError` names the bad key.  Sweeps and studies
    validate their runs here."""
    return resolve(load_config(recipe, overrides), check_files=False)


def validate_jobs(sweep: Sweep, jobs: list[Job]) -> list[str]:
    """Load every job's config (refusing the first bad one, naming its key); returns warnings
    about jobs whose classification data set repeats sequences (drawn with replacement)."""
    warnings = []
    for job in jobs:
        try:
            cfg = load_run_config(sweep.recipe, [*job.overrides, f"run.out_dir={job.directory}"])
        except ConfigError as exc:
            raise ConfigError(f"sweep job {job.job_id}: {exc}") from None
        note = run_data_note(cfg)
        if note:
            warnings.append(f"job {job.job_id}: {note}")
    return warnings


def run_data_note(cfg) -> Optional[str]:
    """What a classification run's data set does unusually (repeats sequences), or None."""
    c = cfg.classify
    if c.target_func is None:
        return None
    return replacement_note(c.target_func, c.sequence_length, c.train_set_size, c.test_set_size)


# ----------------------------------------------------------------------------- status
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def job_status(job: Job) -> str:
    """``done``, ``failed``, ``interrupted`` (started, never finished) or ``pending``."""
    d = job.directory
    if (d / "DONE").is_file():
        return "done"
    if (d / "FAILED").is_file():
        return "failed"
    if (d / "RUNNING").is_file() or (d / "stdout.log").is_file():
        return "interrupted"
    return "pending"


def _numbers(record: dict) -> dict:
    return {k: v for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "timestamp"}


def final_metrics(directory: str | os.PathLike) -> dict:
    """The final metrics of a run folder (see the module docstring)."""
    directory = Path(directory)
    out = {}
    train = last_jsonl(directory / "logs" / "train.jsonl")
    if train:
        out.update({k: train[k] for k in ("step", "loss") if k in train})
    metrics = _read_json(directory / "metrics.json")
    if isinstance(metrics, list) and metrics and isinstance(metrics[-1], dict):
        out.update(_numbers(metrics[-1]))
    elif isinstance(metrics, dict):
        for key, value in metrics.items():
            if isinstance(value, list) and value:
                value = value[-1]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = value
    else:
        evaluation = last_jsonl(directory / "logs" / "eval.jsonl")
        if evaluation:
            out.update(_numbers(evaluation))
    return out


# ----------------------------------------------------------------------------- running
def write_job_config(job: Job, sweep: Optional[Sweep] = None) -> None:
    """``config.json`` of a job folder: what was asked and what runs."""
    job.directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(job.directory / "config.json", {
        "experiment_name": sweep.experiment_name if sweep else None,
        "job_id": job.job_id, "args": job.args, "grid_point": job.point,
        "overrides": job.overrides, "recipe": str(sweep.recipe) if sweep else None,
        "command": job.command})


def run_job(job: Job, sweep: Optional[Sweep] = None, env: Optional[dict] = None,
            cwd: Optional[Path] = None) -> dict:
    """Run one job to completion (in ``cwd``, default the current directory); returns
    ``{"status", "exit_code", "seconds", "metrics"}``."""
    d = job.directory
    write_job_config(job, sweep)
    for marker in MARKERS:
        (d / marker).unlink(missing_ok=True)
    started = time.time()
    atomic_write_json(d / "RUNNING", {"pid": os.getpid(), "started": started})
    with open(d / "stdout.log", "a", encoding="utf-8") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(job.command)}\n")
        log.flush()
        # Ctrl-C reaches the child too (same process group); the job then keeps its RUNNING
        # marker, counts as interrupted and runs again next time.
        code = subprocess.run(job.command, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=env, cwd=cwd).returncode
    return record_exit(d, code, round(time.time() - started, 2), d / "stdout.log")


def record_exit(directory: Path, code: int, seconds: float, log_path: Path) -> dict:
    """Turn a job's exit code into its marker: ``DONE`` (code 0, with the final metrics),
    ``FAILED`` (the code and the tail of ``log_path``), or none for an interrupted job (its
    ``RUNNING`` stays behind); returns ``{"status", "exit_code", "seconds", "metrics"}``."""
    d = Path(directory)
    if code in INTERRUPT_CODES:              # stopped by Ctrl-C/SIGTERM: keep RUNNING behind
        return {"status": "interrupted", "exit_code": code, "seconds": seconds, "metrics": {}}
    if code == 0:
        metrics = final_metrics(d)
        atomic_write_json(d / "DONE", {"exit_code": 0, "seconds": seconds, "metrics": metrics})
        result = {"status": "done", "exit_code": 0, "seconds": seconds, "metrics": metrics}
    else:
        try:
            tail = Path(log_path).read_text(errors="replace").splitlines()[-5:]
        except OSError:
            tail = []
        atomic_write_json(d / "FAILED", {"exit_code": code, "seconds": seconds, "log_tail": tail})
        result = {"status": "failed", "exit_code": code, "seconds": seconds, "metrics": {}}
    (d / "RUNNING").unlink(missing_ok=True)
    return result


def run_jobs(jobs: list[Job], sweep: Optional[Sweep] = None, parallel: int = 1,
             progress: bool = True) -> dict[str, dict]:
    """Run ``jobs`` (``parallel`` at a time) with a progress bar; results keyed by job id."""
    results: dict[str, dict] = {}
    bar = tqdm(total=len(jobs), unit="job", desc="sweep", disable=not progress or not jobs)
    failed = 0
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {pool.submit(run_job, job, sweep): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            results[job.job_id] = future.result()
            failed += results[job.job_id]["status"] != "done"
            bar.set_postfix(failed=failed)
            bar.update(1)
    bar.close()
    return results


# ----------------------------------------------------------------------------- summary
def summary_rows(jobs: list[Job]) -> list[dict]:
    """One row per job: id, status, its grid values and final metrics (from its marker)."""
    rows = []
    for job in jobs:
        status = job_status(job)
        done = _read_json(job.directory / "DONE") or {} if status == "done" else {}
        rows.append({"job_id": job.job_id, "status": status,
                     **{str(k): v for k, v in job.point.items()}, **done.get("metrics", {})})
    return rows


def _columns(rows: list[dict], jobs: list[Job]) -> list[str]:
    grid_keys = [str(k) for k in (jobs[0].point if jobs else {})]
    metric_keys = sorted({k for row in rows for k in row} - {"job_id", "status", *grid_keys},
                         key=lambda k: (PREFERRED_METRICS.index(k) if k in PREFERRED_METRICS
                                        else len(PREFERRED_METRICS), k))
    return ["job_id", "status", *grid_keys, *metric_keys]


def write_summary_csv(rows: list[dict], jobs: list[Job], path: Path) -> list[str]:
    """Write the summary CSV; returns its columns."""
    columns = _columns(rows, jobs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return columns


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A fixed-width text table (floats to 4 decimals)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return "" if value is None else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- SLURM
def slurm_array_script(sweep: Sweep, jobs: list[Job], parallel: Optional[int] = None) -> str:
    """An sbatch script running the unfinished ``jobs`` as one job array.

    Each array task runs ``python -m megaproc.sweep SWEEP --job-index I``: the same job logic
    (markers, logs, skip when done) as a local run.
    """
    indices = ",".join(str(job.index) for job in jobs)
    throttle = f"%{parallel}" if parallel else ""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={sweep.experiment_name}",
             f"#SBATCH --array={indices}{throttle}",
             f"#SBATCH --output={sweep.experiment_dir}/slurm-%A_%a.out"]
    for key, value in sweep.slurm.items():
        lines.append(f"#SBATCH --{key.replace('_', '-')}={value}")
    lines += ["", "# Generated by: python -m megaproc.sweep "
              f"{shlex.quote(str(sweep.path))} --slurm-array ...",
              f"# {len(jobs)} unfinished jobs; finished ones are skipped if resubmitted.",
              "set -euo pipefail", f"cd {shlex.quote(os.getcwd())}",
              f"exec {shlex.quote(sys.executable)} -m megaproc.sweep "
              f"{shlex.quote(str(sweep.path))} --job-index \"${{SLURM_ARRAY_TASK_ID}}\"", ""]
    return "\n".join(lines)
