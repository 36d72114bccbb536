"""A changed plan on resume is applied, reported and exact (2 CPU ranks, real DeepSpeed engines).

- Stop at step 8 of a ``max_steps=8`` run, resume with ``max_steps=16``: per-step losses 9..16
  are bitwise equal to a straight 16-step run, under ZeRO-2 and ZeRO-3.  (The schedule is
  warmup-then-constant, so the first 8 steps of both runs see the same LRs; what this checks
  is that neither the data order nor the optimizer/scheduler state depends on ``max_steps``.)
- Extending a cosine run continues the cosine to the new end, and a changed ``optim.lr`` and
  warmup apply from the resume step and are reported.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from megaproc.schedules import lr_multiplier
from tests.launch import FAST, losses, read_jsonl, run

pytestmark = pytest.mark.slow

PLAN = ["schedule.kind=warmup_constant", "schedule.warmup_steps=2", "checkpoint.keep_last_k=0",
        "checkpoint.save_every=0"]


def train(nproc: int, out: Path, steps: int, extra: list[str] = ()) -> str:
    proc = run(nproc, FAST + PLAN + [f"run.out_dir={out}", f"train.max_steps={steps}", *extra])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("stage", [2, 3])
def test_extending_max_steps_on_resume_is_bitwise_exact(tmp_path, stage):
    zero = [f"deepspeed.config=ds_configs/zero{stage}.json"]
    straight = tmp_path / "straight"
    train(2, straight, 16, zero)
    extended = tmp_path / "extended"
    train(2, extended, 8, zero)
    assert sorted(p.name for p in (extended / "checkpoints").iterdir()) == ["step_00000008"]
    out = train(2, extended, 16, zero)
    assert "changed plan applied from step 8" in out and "train.max_steps: 8 -> 16" in out
    reference, resumed = losses(straight), losses(extended)
    assert sorted(resumed) == list(range(1, 17))
    for step in range(9, 17):
        assert resumed[step] == reference[step], step  # bitwise: same data, same state


def test_resume_applies_a_new_cosine_end_lr_and_warmup(tmp_path):
    out = tmp_path / "cosine"
    cosine = ["schedule.kind=cosine", "schedule.min_lr_ratio=0.1"]
    train(1, out, 6, cosine + ["optim.lr=5e-3", "schedule.warmup_steps=2"])
    first = {r["step"]: r["lr"] for r in read_jsonl(out / "logs" / "train.jsonl")}
    for step, lr in first.items():
        assert lr == pytest.approx(5e-3 * lr_multiplier(step - 1, "cosine", 2, 6, 0.1))
    stdout = train(1, out, 12, cosine + ["optim.lr=2e-3", "schedule.warmup_steps=8"])
    assert "optim.lr: 0.005 -> 0.002" in stdout and "schedule.warmup_steps: 2 -> 8" in stdout
    records = {r["step"]: r["lr"] for r in read_jsonl(out / "logs" / "train.jsonl")}
    assert sorted(records) == list(range(1, 13))
    for step in range(7, 13):  # the new plan from the resume step on: warmup 8, cosine to 12
        expected = 2e-3 * lr_multiplier(step - 1, "cosine", 8, 12, 0.1)
        assert records[step] == pytest.approx(expected), step
    assert math.isfinite(losses(out)[12])
