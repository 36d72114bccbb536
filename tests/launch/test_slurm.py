"""The real SLURM job scripts on a real (one-node, local) SLURM cluster.

- the job scripts carry the seed's contract: ``--signal=B:USR1@180``, ``--requeue``, appended
  logs in ``slurm/<jobid>_<name>.out``, mail on BEGIN/END/FAIL/REQUEUE; sbatch accepts them;
- ``launch/submit.sh`` creates the log folder, without which a job dies with no log at all;
- a 2-rank CPU job, preempted the way SLURM does it before the time limit (SIGUSR1 to the batch
  shell: ``scancel --signal=USR1 --batch``), saves a checkpoint, requeues itself, and the
  requeued job resumes and finishes with per-step losses equal to an uninterrupted run; once
  with one SLURM task per rank (srun) and once with the deepspeed launcher per node.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from tests.launch import QUICKSTART, REPO, losses, read_jsonl
from tests.launch.conftest import PREEMPT_STEPS, run_settings

pytestmark = pytest.mark.slurm

JOB_SCRIPTS = {"train.sbatch": "megaproc", "pptrain.sbatch": "pptrain",
               "pretrain.sbatch": "pretrain"}
# This machine instead of the scripts' 8-GPU node: 2 tasks of one CPU, no GPUs.
CPU_JOB = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gres=none", "--time=20"]


def sbatch_directives(path: Path) -> dict[str, str]:
    """``#SBATCH --key=value`` lines of a job script (sbatch stops at the first command)."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#SBATCH"):
            key, _, value = line.split(None, 1)[1].partition("=")
            out[key] = value
        elif line.strip() and not line.startswith("#"):
            break
    return out


def test_job_scripts_carry_the_preemption_contract():
    docs = (REPO / "docs" / "slurm.md").read_text()
    for name, job_name in JOB_SCRIPTS.items():
        d = sbatch_directives(REPO / "launch" / name)
        assert d["--signal"] == "B:USR1@180", name
        assert "--requeue" in d and d["--open-mode"] == "append", name
        assert d["--output"] == "slurm/%j_%x.out", name
        assert d["--mail-type"] == "BEGIN,END,FAIL,REQUEUE", name
        assert d["--job-name"] == job_name, name
        assert "launch/slurm_job.sh" in (REPO / "launch" / name).read_text()
    assert "--signal=B:USR1@180" in docs and "scontrol requeue" in docs


@pytest.fixture
def cluster(slurm_cluster):
    """The module's cluster, with every job cancelled after the test (a failed test must not
    leave a job holding the node's CPUs for the next one)."""
    yield slurm_cluster
    slurm_cluster.cancel_all()


def submit(cluster, submit_dir: Path, args: list[str], **env) -> int:
    """Submit through launch/submit.sh from ``submit_dir``; returns the job id."""
    submit_dir.mkdir(parents=True, exist_ok=True)
    # The job scripts run $PYTHON: hand them the interpreter running the tests (a virtual
    # environment need not be activated for its python to be the one on PATH).
    job_env = dict(cluster.env, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                   PYTHON=sys.executable, **env)
    proc = cluster.run([str(REPO / "launch" / "submit.sh"), "--parsable", *args],
                       cwd=submit_dir, env=job_env)
    return int(proc.stdout.strip().split(";")[0])


def test_sbatch_accepts_every_job_script(cluster, tmp_path):
    for name in JOB_SCRIPTS:
        proc = cluster.run(["sbatch", "--test-only", *CPU_JOB, str(REPO / "launch" / name),
                                  QUICKSTART], cwd=tmp_path, check=False)
        assert proc.returncode == 0 and "to start at" in proc.stderr, (name, proc.stderr)


def test_submit_creates_the_log_folder_a_bare_sbatch_dies_without_it(cluster, tmp_path):
    job = [*CPU_JOB, "--ntasks-per-node=1", "--job-name=dry", str(REPO / "launch" / "train.sbatch"),
           QUICKSTART, "--dry-run"]
    bare = tmp_path / "bare"
    bare.mkdir()
    bare_env = dict(cluster.env, MEGAPROC_ROOT=str(REPO))
    bare_id = int(cluster.run(["sbatch", "--parsable", *job], cwd=bare,
                                    env=bare_env).stdout.strip())
    wrapped_id = submit(cluster, tmp_path / "wrapped", job)
    bare_end = cluster.wait_job(bare_id, ("FAILED", "COMPLETED", "CANCELLED"), timeout=120)
    wrapped_end = cluster.wait_job(wrapped_id, ("FAILED", "COMPLETED", "CANCELLED"), timeout=300)
    assert bare_end["JobState"] == "FAILED" and not list(bare.rglob("*.out"))
    log = tmp_path / "wrapped" / "slurm" / f"{wrapped_id}_dry.out"
    assert wrapped_end["JobState"] == "COMPLETED", log.read_text()[-3000:]
    assert f"job {wrapped_id} (dry) start 0" in log.read_text()


def wait_for_steps(cluster, job_id: int, run_dir: Path, steps: int, timeout: float = 600) -> None:
    """Wait until the job's train.jsonl has ``steps`` records; fail if the job ends first."""
    path = run_dir / "logs" / "train.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= steps:
            return
        state = cluster.job(job_id).get("JobState")
        if state not in ("PENDING", "RUNNING", "CONFIGURING"):
            raise AssertionError(f"job {job_id} ended ({state}) before step {steps}")
        time.sleep(0.05)
    raise AssertionError(f"job {job_id}: no step {steps} after {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["srun", "deepspeed"])
def test_preempted_job_checkpoints_requeues_and_resumes(cluster, tmp_path, launcher,
                                                        reference_losses):
    run_dir = tmp_path / "run"
    name = f"pre_{launcher}"
    job_id = submit(cluster, tmp_path / "submit",
                    [*CPU_JOB, f"--job-name={name}", str(REPO / "launch" / "train.sbatch"),
                     QUICKSTART, *run_settings(run_dir)], MEGAPROC_LAUNCHER=launcher)
    log = tmp_path / "submit" / "slurm" / f"{job_id}_{name}.out"
    wait_for_steps(cluster, job_id, run_dir, 3)

    # What SLURM does --signal=B:USR1@180 before the time limit: SIGUSR1 to the batch shell only.
    cluster.run(["scancel", "--signal=USR1", "--batch", str(job_id)])
    requeued = cluster.wait_job(job_id, ("PENDING",), timeout=300,
                                      predicate=lambda f: f.get("Restarts") == "1")
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(checkpoints) == 1, (checkpoints, log.read_text()[-3000:])
    saved = int(checkpoints[0].removeprefix("step_"))
    assert 3 <= saved < PREEMPT_STEPS, "the preemption checkpoint must come before the end"
    assert (run_dir / "checkpoints" / checkpoints[0] / "COMPLETE").exists()
    text = log.read_text()
    assert "exiting with code 75" in text and f"requeueing job {job_id}" in text, text[-3000:]
    assert requeued["Restarts"] == "1"

    # SLURM holds a requeued job ~2 minutes (its Reason shows BeginTime once the scheduler has
    # looked at it, "None" just before: not asserted), which a test need not sit through.
    # Not at once, though: slurmd refuses to launch a
    # job whose credential is from the same second as the revocation of the previous run's
    # ("Job credential revoked"), one reason for SLURM's hold.
    time.sleep(2)
    cluster.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
    done = cluster.wait_job(job_id, ("COMPLETED", "FAILED", "CANCELLED"), timeout=600)
    text = log.read_text()
    assert done["JobState"] == "COMPLETED" and done["ExitCode"] == "0:0", text[-3000:]
    assert f"job {job_id} ({name}) start 1" in text  # the same log, appended
    assert re.search(rf"resumed from \S*step_{saved:08d}", text), text[-3000:]
    records = read_jsonl(run_dir / "logs" / "train.jsonl")
    assert [r["step"] for r in records] == list(range(1, PREEMPT_STEPS + 1))
    assert losses(run_dir) == reference_losses
    masters = re.findall(r"master (\S+):(\d+), config", text)
    assert len(masters) == 2  # one rendezvous per start; both runs cleaned /dev/shm up
    for addr, port in masters:
        assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{addr}_{port}_*"))
