"""Helpers for tests that run the real trainer on CPU ranks (gloo) under a real launcher.

Multi-rank jobs start under torchrun unless a test asks for the deepspeed launcher.  Both run the
same program with the same losses (tests/core/test_distributed_training.py checks it bitwise);
torchrun starts the ranks several seconds sooner, because the deepspeed launcher is two
interpreters that each import deepspeed (runner.py, then launch.py) before the first rank
starts.  Tests about the deepspeed launcher itself pass ``launcher="deepspeed"``, and so do
runs whose exit code is checked (the deepspeed launcher passes the trainer's code through;
torchrun exits 1) and jobs killed by a test (:func:`start`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from megaproc.distributed import free_port

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(REPO / "megaproc" / "train.py")
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")

# Small, fast settings on top of the quickstart recipe (tiny model, short sequences).
FAST = ["model.name=tiny", "train.seq_len=32", "train.micro_batch=2", "train.grad_accum=2",
        "log.log_every=1", "log.progress=false", "eval.every=0", "eval.max_batches=2",
        "schedule.warmup_steps=2", "optim.lr=5e-3", "model.dropout=0.1"]


LAUNCHERS = {"torchrun": ["-m", "torch.distributed.run", "--nproc_per_node"],
             "deepspeed": ["-m", "deepspeed.launcher.runner", "--num_gpus"]}


def command(nproc: int, overrides: list[str], config: str = QUICKSTART,
            launcher: str = "torchrun") -> list[str]:
    """Command line for ``nproc`` ranks under ``launcher`` (a key of :data:`LAUNCHERS`), or
    one plain process."""
    if nproc == 1:
        return [sys.executable, TRAIN, "--config", config, *overrides]
    return [sys.executable, *LAUNCHERS[launcher], str(nproc), "--master_port", str(free_port()),
            TRAIN, "--config", config, *overrides]


# Set by a launcher for its workers; a test process that made its own process group must not
# hand them to the jobs it starts (they would try to join or bind that group's port).
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                      "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "CROSS_RANK", "CROSS_SIZE")


def env(**extra) -> dict:
    """Environment for a training subprocess."""
    out = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    # Launch scripts run $PYTHON: the interpreter running the tests, activated or not.
    out.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHON=sys.executable, **extra)
    return out


def run(nproc: int, overrides: list[str], timeout: int = 600, config: str = QUICKSTART,
        launcher: str = "torchrun", **env_extra) -> subprocess.CompletedProcess:
    """Run a training job to completion and return the finished process."""
    return subprocess.run(command(nproc, overrides, config, launcher), cwd=REPO,
                          env=env(**env_extra), capture_output=True, text=True, timeout=timeout)


def start(nproc: int, overrides: list[str], log_path: Path, **env_extra) -> subprocess.Popen:
    """Start a training job in its own process group (so the whole job can be killed).

    Always the deepspeed launcher: its ranks stay in the launcher's process group, which
    :func:`kill_job` kills at once.  torchrun starts every worker in a session of its own, so
    killing torchrun's group would leave the workers training.
    """
    log = open(log_path, "w")
    return subprocess.Popen(command(nproc, overrides, launcher="deepspeed"), cwd=REPO,
                            env=env(**env_extra), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the job at once."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 600, what: str = "") -> None:
    """Poll until ``predicate()`` is true; fail if the job ends or time runs out first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"job ended (code {proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def losses(run_dir: Path) -> dict[int, float]:
    """Per-step loss of a run's train.jsonl."""
    return {r["step"]: r["loss"] for r in read_jsonl(Path(run_dir) / "logs" / "train.jsonl")}
