"""``python -m megaproc.study --slurm`` on the real one-node SLURM cluster of tests/launch: each
run is a job waiting for its parent's (``afterok``), trained through launch/slurm_job.sh and
evaluated in the same job; the collect job writes results.csv once all have ended."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from tests.launch.conftest import slurm_cluster  # noqa: F401 - the module's SLURM cluster
from tests.study import (EVALUATE, QUICKSTART, SPLITS, TINY, eval_json, flat_numbers, read_csv,
                         run_study, write_spec)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# One CPU per job (two jobs fit the test node at a time), no GPUs, minutes not hours.
JOB = {"cpus-per-task": 1, "time": 20}


def started_and_ended(cluster, job_id: str) -> tuple[datetime, datetime]:
    """StartTime and EndTime of a finished job."""
    fields = cluster.job(int(job_id))
    return (datetime.fromisoformat(fields["StartTime"]),
            datetime.fromisoformat(fields["EndTime"]))


def test_slurm_study_runs_jobs_with_dependencies_and_writes_results(slurm_cluster, tmp_path):  # noqa: F811
    cluster = slurm_cluster
    spec = {"name": "slurmy", "slurm": JOB, "stages": [
        {"name": "splits", "splits": dict(SPLITS)},
        {"name": "base", "recipe": QUICKSTART, "overrides": dict(TINY)},
        {"name": "arms", "recipe": QUICKSTART, "from": "base", "overrides": dict(TINY),
         "arms": {"everything": {}, "attn": {"model.weights_to_transfer": ["attn"]}},
         "evaluate": dict(EVALUATE)}]}
    spec = write_spec(tmp_path / "study.yaml", spec)
    out = tmp_path / "out"
    try:
        proc = run_study(spec, out, "--slurm", timeout=120, SLURM_CONF=str(cluster.conf))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        jobs = json.loads((out / "slurm_jobs.json").read_text())["jobs"]
        assert set(jobs) == {"splits", "base/run", "arms/everything", "arms/attn", "collect"}
        for arm in ("arms/everything", "arms/attn"):
            submitted = json.loads((out / arm / "slurm_job.json").read_text())
            assert submitted["after"] == [jobs["base/run"], jobs["splits"]]
            assert f"--dependency=afterok:{jobs['base/run']}:{jobs['splits']}" in submitted["args"]
        # Rerunning while they are queued or running submits nothing and keeps their ids.
        again = run_study(spec, out, "--slurm", timeout=120, SLURM_CONF=str(cluster.conf))
        assert again.returncode == 0 and "submitted job" not in again.stdout, again.stdout
        kept = json.loads((out / "slurm_jobs.json").read_text())["jobs"]   # less the finished
        assert kept["collect"] == jobs["collect"] and kept.items() <= jobs.items(), (kept, jobs)

        end = cluster.wait_job(int(jobs["collect"]), ("COMPLETED", "FAILED", "CANCELLED"),
                               timeout=900)
        logs = "\n".join(p.read_text()[-1500:] for p in sorted((out / "slurm").glob("*.out")))
        assert end["JobState"] == "COMPLETED", logs
        for key in ("splits", "base/run", "arms/everything", "arms/attn"):
            assert cluster.job(int(jobs[key]))["JobState"] == "COMPLETED", logs
        parents_end = max(started_and_ended(cluster, jobs[k])[1] for k in ("base/run", "splits"))
        for arm in ("arms/everything", "arms/attn"):
            assert started_and_ended(cluster, jobs[arm])[0] >= parents_end
            assert (out / arm / "DONE").is_file()
        last_end = max(started_and_ended(cluster, jobs[k])[1] for k in jobs if k != "collect")
        assert started_and_ended(cluster, jobs["collect"])[0] >= last_end   # afterany on all
        base_log = (out / "slurm" / f"{jobs['base/run']}_slurmy.base.run.out").read_text()
        assert "srun launcher" in base_log          # trained through launch/slurm_job.sh

        rows = {r["run"]: r for r in read_csv(out / "results.csv")}
        assert set(rows) == {"base/run", "arms/everything", "arms/attn"}
        assert all(r["status"] == "done" for r in rows.values())
        for arm in ("arms/everything", "arms/attn"):
            expected = flat_numbers(eval_json(out / arm))
            assert expected
            for key, value in expected.items():
                assert float(rows[arm][key]) == value
        assert (out / "results.md").is_file()

        # Rerunning submits nothing: every run is done.
        again = run_study(spec, out, "--slurm", timeout=120, SLURM_CONF=str(cluster.conf))
        assert again.returncode == 0 and "submitted job" not in again.stdout, again.stdout
    finally:
        cluster.cancel_all()


def test_preempted_study_job_requeues_resumes_and_evaluates(slurm_cluster, tmp_path):  # noqa: F811
    cluster = slurm_cluster
    steps = 300     # enough that the signal, relayed twice, lands well before the end
    spec = {"name": "pre", "slurm": JOB, "stages": [
        {"name": "splits", "splits": dict(SPLITS)},
        {"name": "long", "recipe": QUICKSTART, "evaluate": dict(EVALUATE),
         "overrides": {**TINY, "train.max_steps": steps, "eval.every": 0}}]}
    spec = write_spec(tmp_path / "study.yaml", spec)
    out = tmp_path / "out"
    run = out / "long" / "run"
    try:
        proc = run_study(spec, out, "--slurm", timeout=120, SLURM_CONF=str(cluster.conf))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        jobs = json.loads((out / "slurm_jobs.json").read_text())["jobs"]
        job = int(jobs["long/run"])
        log = out / "slurm" / f"{job}_pre.long.run.out"
        deadline = time.time() + 600
        while not (run / "logs" / "train.jsonl").is_file() or \
                len((run / "logs" / "train.jsonl").read_text().splitlines()) < 3:
            assert time.time() < deadline and cluster.job(job).get("JobState") in (
                "PENDING", "RUNNING", "CONFIGURING"), log.read_text()[-3000:]
            time.sleep(0.05)
        # What SLURM does before the time limit: SIGUSR1 to the batch shell (study_run.sbatch).
        cluster.run(["scancel", "--signal=USR1", "--batch", str(job)])
        cluster.wait_job(job, ("PENDING",), timeout=300,
                         predicate=lambda f: f.get("Restarts") == "1")
        assert not (run / "DONE").exists() and not (run / "FAILED").exists()
        assert cluster.job(int(jobs["collect"]))["JobState"] == "PENDING"
        time.sleep(2)   # see tests/launch/test_slurm.py: not in the second of the revocation
        cluster.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])
        end = cluster.wait_job(int(jobs["collect"]), ("COMPLETED", "FAILED", "CANCELLED"),
                               timeout=900)
        text = log.read_text()
        assert end["JobState"] == "COMPLETED", text[-3000:]
        assert cluster.job(job)["JobState"] == "COMPLETED", text[-3000:]
        assert "requeueing job" in text and "resumed from" in text, text[-3000:]
        steps_logged = [json.loads(line)["step"]
                        for line in (run / "logs" / "train.jsonl").read_text().splitlines()]
        assert steps_logged == list(range(1, steps + 1))
        assert (run / "DONE").is_file() and (run / "eval.json").is_file()
        rows = read_csv(out / "results.csv")
        assert [r["status"] for r in rows] == ["done"]
    finally:
        cluster.cancel_all()
