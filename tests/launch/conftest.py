"""Fixtures of the launch tests: a throwaway SLURM cluster and the reference 2-rank run.

Markers (registered in pytest.ini): ``slow`` launches training processes, ``slurm`` starts
the local SLURM daemons; ``pytest tests/launch -m "not slow"`` runs the quick checks only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.launch import FAST, losses, run
from tests.launch.slurm_cluster import SlurmCluster, unavailable_reason

# One short run shape shared by every launch test, so a single uninterrupted 2-rank run is
# the reference for all of them.  Enough steps that a preemption signal sent after step 3
# lands well before the end (each step takes tens of milliseconds here).
PREEMPT_STEPS = 60
RUN = FAST + [f"train.max_steps={PREEMPT_STEPS}", "checkpoint.save_every=0",
              "checkpoint.keep_last_k=0"]


def run_settings(out_dir: Path) -> list[str]:
    """Trainer overrides of a launch-test run writing to ``out_dir``."""
    return RUN + [f"run.out_dir={out_dir}"]


@pytest.fixture(scope="session")
def reference_losses(tmp_path_factory) -> dict[int, float]:
    """Per-step losses of the uninterrupted 1-node x 2-process run (deepspeed launcher)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = run(2, run_settings(out), launcher="deepspeed")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = losses(out)
    assert sorted(result) == list(range(1, PREEMPT_STEPS + 1))
    return result


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A one-node SLURM cluster for this module; skipped when SLURM cannot run here."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
