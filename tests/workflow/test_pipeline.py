"""python -m megaproc.pipeline (the README's main job) on a short budget: every step runs and
writes what the README lists, a rerun does nothing again, and a failing step is one line naming
its log while what finished before it is kept."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from megaproc.files import read_jsonl
from tests.launch import REPO, env

pytestmark = pytest.mark.slow

SIZES = ["--eval-size", "16", "--test-size", "16", "--mixin-size", "32"]
# One process, a few steps each; the recipes' models, tokenizers and transfer unchanged.
PPTRAIN = ["train.max_steps=30", "task.eval_subset_size=16", "log.log_every=5"]
PRETRAIN = ["train.max_steps=4", "task.eval_subset_size=16", "log.log_every=1", "eval.every=2",
            "eval.max_batches=1", "checkpoint.save_every=0"]


def pipeline(out, pretrain=PRETRAIN) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megaproc.pipeline", "--out-dir", str(out),
                           "--nproc", "1", *SIZES, "--pptrain", *PPTRAIN, "--pretrain", *pretrain],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=900)


def test_pipeline_runs_every_step_once_and_reports_failures_in_one_line(tmp_path):
    out = tmp_path / "pipeline"
    proc = pipeline(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["seconds"]) == {"splits", "pptrain", "pretrain", "evaluate_pptrain",
                                       "evaluate_pretrain", "export"}
    assert summary["pptrain"]["step"] == 30 and summary["pptrain"]["completed"] is False
    for name in ("pptrain", "pretrain"):
        result = json.loads((out / "eval" / f"{name}_test.json").read_text())
        assert result["checkpoint"].startswith(str(out / name / "checkpoints"))
        assert result["split"]["num_examples"] == summary["test"][name]["num_examples"] == 16
        assert summary["test"][name]["heldout_acc"] == result["split"]["heldout_acc"]
    transfer = json.loads((out / "pretrain" / "transfer.json").read_text())
    assert transfer and "attn" in json.dumps(transfer)            # it started from pptrain
    records = read_jsonl(out / "pretrain" / "logs" / "train.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert "loss/mixin" in json.dumps(records)                    # the mixin is blended in
    export = json.loads((out / "export" / "megaproc_export.json").read_text())
    assert export and (out / "export" / "config.json").is_file()

    again = pipeline(out)
    assert again.returncode == 0, again.stderr[-3000:]
    for step in ("splits", "pptrain", "pretrain", "evaluate pptrain", "evaluate pretrain",
                 "export"):
        assert f"[pipeline] {step}:" in again.stdout and "skipped" in again.stdout, step
    assert "starting" not in again.stdout
    assert read_jsonl(out / "pretrain" / "logs" / "train.jsonl") == records

    # Pretraining again, now failing: only it and the evaluations after pre-pretraining rerun.
    for path in (out / "pretrain", out / "export"):
        shutil.rmtree(path)
    for name in ("pptrain", "pretrain"):
        (out / "eval" / f"{name}_test.json").unlink()
    failed = pipeline(out, pretrain=[*PRETRAIN, "train.bogus=1"])
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()
    assert len(last) == 1 and "pretrain failed" in last[0] and "pretrain.log" in last[0], last
    assert "unknown config key 'train.bogus'" in (out / "logs" / "pretrain.log").read_text()
    assert "pptrain: " in failed.stdout and "complete, skipped" in failed.stdout
    # The pre-pretrained model's evaluation ran beside the failed step and was kept.
    assert (out / "eval" / "pptrain_test.json").is_file()
    assert not (out / "eval" / "pretrain_test.json").exists()
