"""``--slurm``: every unfinished node of a study as one SLURM job, chained by dependencies.

Each node is submitted through ``launch/submit.sh`` with ``launch/study_run.sbatch``:

``train RUN_DIR RECIPE overrides...``  the job runs ``launch/slurm_job.sh RECIPE overrides...``
    (one SLURM task per rank, ``checkpoint.resume=auto``, SIGUSR1 before the time limit ->
    checkpoint -> exit 75 -> ``scontrol requeue``), then, once training succeeded,
    ``python -m megaproc.study --finish-run RUN_DIR``: the ``DONE``/``FAILED`` marker and the
    evaluation (``eval.json``), inside the same job;
``evaluate RUN_DIR``  a run trained earlier whose evaluation is missing: only the finish step;
``command DIR CMD...``  a data stage: ``CMD`` (build_splits), then the finish step.

A job waits for its parents with ``--dependency=afterok:<ids>`` (parents finished before are
not waited for) and ``--kill-on-invalid-dep=yes``, so the dependents of a failed job are
cancelled instead of pending forever.  A last job, ``--dependency=afterany`` on all of them,
runs ``python -m megaproc.study SPEC --out-dir D --collect``: results.csv, results.md and the
plots, whatever failed.  Every job script runs this study's interpreter (``PYTHON``, from
``sys.executable``) with this environment (sbatch exports it).

Job ids go to ``RUN_DIR/slurm_job.json`` and ``D/slurm_jobs.json``; rerunning the command
skips finished nodes, reuses a job still queued or running (it is not submitted twice) and
resubmits the rest.  Job logs: ``D/slurm/<job id>_<job name>.out``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from megaproc.files import REPO_ROOT, atomic_write_json
from megaproc.study_graph import StudyGraph
from megaproc.study_runner import (EVAL_FAILED, child_env, node_command, node_status, say,
                                   write_node_file)
from megaproc.study_spec import StudyError

SUBMIT = REPO_ROOT / "launch" / "submit.sh"
JOB_SCRIPT = REPO_ROOT / "launch" / "study_run.sbatch"
JOB_FILE = "slurm_job.json"
ACTIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING",
                 "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT")
# sbatch options a collect job does not inherit from the study's (it needs one CPU).
RESOURCE_OPTIONS = ("gres", "gpus", "gpus-per-node", "gpus-per-task", "ntasks",
                    "ntasks-per-node", "nodes", "cpus-per-task", "cpus-per-gpu", "mem",
                    "mem-per-cpu", "mem-per-gpu", "exclusive")


def sbatch_options(*mappings: dict) -> dict:
    """Merged ``{option: value}`` (later mappings win; ``_`` in names becomes ``-``)."""
    out: dict = {}
    for mapping in mappings:
        out.update({str(k).replace("_", "-"): v for k, v in mapping.items()})
    return out


def option_args(options: dict) -> list[str]:
    """``--key=value`` arguments (``--key`` for ``true``, nothing for ``false``/``null``)."""
    args = []
    for key, value in options.items():
        if value is True:
            args.append(f"--{key}")
        elif value is not None and value is not False:
            args.append(f"--{key}={value}")
    return args


def job_state(job_id: str, env: dict) -> str:
    """The job's state in the queue (``""`` when SLURM no longer knows it)."""
    proc = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], env=env,
                          capture_output=True, text=True)
    return proc.stdout.strip().split("\n")[0] if proc.returncode == 0 else ""


def recorded_job(directory: Path, env: dict, name: str = JOB_FILE,
                 key: str | None = None) -> str | None:
    """The id of a job from an earlier submission (``DIR/slurm_job.json``, or ``key`` of the
    ``jobs`` in another file), if that job is still queued or running."""
    try:
        record = json.loads((directory / name).read_text())
        job_id = str(record["jobs"][key] if key else record["job_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return job_id if job_state(job_id, env) in ACTIVE_STATES else None


def sbatch(args: list[str], env: dict, cwd: Path) -> str:
    """Submit through launch/submit.sh; returns the job id."""
    proc = subprocess.run(["bash", str(SUBMIT), "--parsable", *args], env=env, cwd=cwd,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise StudyError(f"sbatch failed ({proc.returncode}): "
                         f"{message[-1] if message else 'no output'}")
    return proc.stdout.strip().split(";")[0]


def job_arguments(node, status: str) -> list[str]:
    """What study_run.sbatch gets for a node (see the module docstring)."""
    if node.kind == "splits":
        return ["command", str(node.directory), *node_command(node)]
    if status == "trained":
        return ["evaluate", str(node.directory)]
    return ["train", str(node.directory), str(node.recipe), *node.overrides]


def job_name(graph: StudyGraph, node_id: str) -> str:
    """``<study>.<run id>`` with ``/`` as ``.`` (it names the job's log file)."""
    return f"{graph.spec.name}.{node_id}".replace("/", ".")


def submit_study(graph: StudyGraph, spec_path: Path) -> dict:
    """Submit every unfinished node and the collect job; returns ``{node id: job id}`` (and
    ``"collect"``)."""
    out = graph.out_dir
    out.mkdir(parents=True, exist_ok=True)
    env = child_env()
    logs = out / "slurm"
    jobs: dict = {}
    submitted = 0
    status = {n.node_id: node_status(n) for n in graph.nodes}
    for node in graph.nodes:
        if status[node.node_id] == "done":
            continue
        reused = recorded_job(node.directory, env)
        if reused:
            jobs[node.node_id] = reused
            say(f"{node.node_id}: job {reused} still queued or running, not resubmitted")
            continue
        submitted += 1
        node.directory.mkdir(parents=True, exist_ok=True)
        write_node_file(node)
        for marker in ("FAILED", EVAL_FAILED):
            (node.directory / marker).unlink(missing_ok=True)
        waits = [jobs[p] for p in node.parents if p in jobs]
        options = sbatch_options({"nodes": 1, "ntasks-per-node": node.nproc},
                                 graph.spec.slurm, node.slurm)
        args = [f"--job-name={job_name(graph, node.node_id)}", f"--output={logs}/%j_%x.out",
                "--kill-on-invalid-dep=yes", *option_args(options)]
        if waits:
            args.append(f"--dependency=afterok:{':'.join(waits)}")
        job_id = sbatch([*args, str(JOB_SCRIPT), *job_arguments(node, status[node.node_id])],
                        env, out)
        atomic_write_json(node.directory / JOB_FILE, {
            "job_id": job_id, "submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
            "after": waits, "args": args})
        jobs[node.node_id] = job_id
        say(f"{node.node_id}: submitted job {job_id}"
            + (f" after {', '.join(waits)}" if waits else ""))
    previous = recorded_job(out, env, "slurm_jobs.json", "collect")
    if jobs and previous and not submitted:
        jobs["collect"] = previous      # it already waits for every job there is
        say(f"collect: job {previous} still waits for them, not resubmitted")
    elif jobs:
        common = {k: v for k, v in sbatch_options(graph.spec.slurm).items()
                  if k not in RESOURCE_OPTIONS}
        options = sbatch_options(common, {"nodes": 1, "ntasks": 1, "cpus-per-task": 1})
        collect = sbatch([f"--job-name={graph.spec.name}.collect", f"--output={logs}/%j_%x.out",
                          f"--dependency=afterany:{':'.join(jobs.values())}",
                          *option_args(options), str(JOB_SCRIPT), "collect", str(out),
                          str(spec_path)], env, out)
        jobs["collect"] = collect
        say(f"collect: job {collect} writes {out / 'results.csv'} once every job has ended")
    atomic_write_json(out / "slurm_jobs.json", {"submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                "python": sys.executable,
                                                "cwd": os.getcwd(), "jobs": jobs})
    return jobs
