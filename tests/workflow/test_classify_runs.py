"""Sequence classification on the trainer: 2 CPU ranks under ZeRO-2, epochs -> steps, cosine to
eta_min, evaluation points in metrics.json/logs.log/config.json, and a resume with more epochs
(a changed plan: applied, reported, the schedule recomputed)."""

from __future__ import annotations

import json

import pytest

from megaproc.schedules import lr_multiplier
from tests.launch import REPO, read_jsonl, run

pytestmark = pytest.mark.slow

RECIPE = str(REPO / "configs" / "classify" / "base.yaml")


def overrides(out, cache, epochs: int) -> list[str]:
    return [f"run.out_dir={out}", f"classify.cache_dir={cache}", "classify.target_func=fn_d",
            "classify.sequence_length=12", "classify.train_set_size=32",
            "classify.test_set_size=16", f"classify.n_epochs={epochs}",
            "classify.eval_every_epochs=2", "classify.eta_min=1e-4", "train.micro_batch=4",
            "optim.lr=1e-3", "log.log_every=1", "checkpoint.save_final=true",
            "deepspeed.config=ds_configs/zero2.json"]


def test_two_rank_classification_epochs_metrics_and_resume_with_more_epochs(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = run(2, overrides(out, cache, 2), config=RECIPE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # 32 examples / (4 per rank x 2 ranks) = 4 steps per epoch: 2 epochs = 8 steps.
    train = read_jsonl(out / "logs" / "train.jsonl")
    assert [r["step"] for r in train] == list(range(1, 9))
    for r in train:  # cosine from 1e-3 to eta_min 1e-4 over the run's 8 steps, no warmup
        assert r["lr"] == pytest.approx(1e-3 * lr_multiplier(r["step"] - 1, "cosine", 0, 8, 0.1))
    assert json.loads((out / "metrics.json").read_text())["step"] == [0, 8]
    assert json.loads((out / "config.json").read_text())["classify"]["target_func"] == "fn_d"

    more = run(2, overrides(out, cache, 4), config=RECIPE)
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert "classify.n_epochs: 2 -> 4" in more.stdout and "train.max_steps: 8 -> 16" in more.stdout
    train = read_jsonl(out / "logs" / "train.jsonl")
    assert [r["step"] for r in train] == list(range(1, 17))
    for r in train[8:]:  # the new plan from the resume step: cosine over 16 steps
        assert r["lr"] == pytest.approx(1e-3 * lr_multiplier(r["step"] - 1, "cosine", 0, 16, 0.1))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == [0, 8, 16] and metrics["epoch"] == [0.0, 2.0, 4.0]
    assert all(0.0 <= a <= 1.0 for a in metrics["train_acc"] + metrics["test_acc"])
    assert len((out / "logs.log").read_text().splitlines()) == 3
