"""python -m megaproc.study running real (tiny) trainings and evaluations locally: a shared
parent is trained once, a rerun trains nothing, a killed study resumes its interrupted run from
its checkpoint, a failing arm skips only its own dependents, results.csv equals each eval.json.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
import yaml

from megaproc.files import read_jsonl
from tests.study import (QUICKSTART, REPO, TINY, eval_json, flat_numbers, launches, read_csv,
                         run_study, study_command, study_env, two_arm_spec, write_spec)

pytestmark = pytest.mark.slow


def test_shared_parent_trained_once_rerun_trains_nothing(tmp_path):
    spec = write_spec(tmp_path / "study.yaml", two_arm_spec())
    out = tmp_path / "out"
    proc = run_study(spec, out, "--parallel", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    base = out / "base" / "run"
    arms = [out / "arms" / f"{arm}__seed{seed}" for arm in ("everything", "attn")
            for seed in (1, 2)]
    assert launches(base) == 1                              # trained once for four arms
    for run in arms:
        assert launches(run) == 1
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["init_from"] == f"latest:{base}"
        assert config["run"]["seed"] == int(run.name[-1])
        assert "transfer" in (run / "stdout.log").read_text()   # it loaded the parent's weights
    assert yaml.safe_load((base / "config.yaml").read_text())["model"]["init_from"] is None

    rows = {r["run"]: r for r in read_csv(out / "results.csv")}
    assert set(rows) == {"base/run"} | {f"arms/{r.name}" for r in arms}
    for run_id, row in rows.items():
        expected = flat_numbers(eval_json(out / run_id))
        assert "split.heldout_acc" in expected, sorted(expected)   # the test split's accuracy
        for key, value in expected.items():
            assert float(row[key]) == value, (run_id, key)
        assert row["status"] == "done"
        assert row["final.val_loss"] != ""
    assert (out / "results.md").read_text().count("| 2/2 |") == 2
    assert (out / "plots" / "arms_val_loss.png").is_file()

    eval_logs = {r: (out / r / "eval.log").read_text() for r in rows}
    again = run_study(spec, out)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "0 of 6 nodes to run, 6 already done" in again.stdout
    assert launches(base) == 1 and all(launches(run) == 1 for run in arms)
    assert {r: (out / r / "eval.log").read_text() for r in rows} == eval_logs


def test_killed_study_resumes_the_interrupted_run_from_its_checkpoint(tmp_path):
    steps = 200     # far more than the step the study is killed after
    spec = {"name": "resume", "stages": [
        {"name": "long", "recipe": QUICKSTART,
         "overrides": {**TINY, "train.max_steps": steps, "checkpoint.save_every": 5,
                       "checkpoint.keep_last_k": 2, "eval.every": 0}}]}
    spec = write_spec(tmp_path / "study.yaml", spec)
    out = tmp_path / "out"
    run = out / "long" / "run"
    log = open(tmp_path / "first.log", "w")
    study = subprocess.Popen(study_command(spec, out), cwd=REPO, env=study_env(), stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and study.poll() is None:
            saved = sorted((run / "checkpoints").glob("step_*/COMPLETE"))
            if saved and int(saved[-1].parent.name.removeprefix("step_")) >= 10:
                break
            time.sleep(0.05)
        assert study.poll() is None, "the study ended before it could be killed"
    finally:
        os.killpg(study.pid, signal.SIGKILL)                # the study and its trainer at once
        study.wait(timeout=60)
        log.close()
    assert (run / "RUNNING").is_file() and not (run / "DONE").exists()
    saved = sorted(int(p.parent.name.removeprefix("step_"))
                   for p in (run / "checkpoints").glob("step_*/COMPLETE"))
    assert saved and saved[-1] < steps

    proc = run_study(spec, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (run / "stdout.log").read_text()
    resumed = re.findall(r"resumed from \S*step_(\d{8}) at step (\d+)", text)
    assert resumed and int(resumed[-1][0]) >= saved[-1], text[-3000:]
    records = [r["step"] for r in read_jsonl(run / "logs" / "train.jsonl")]
    assert records == list(range(1, steps + 1))             # no step lost or logged twice
    assert launches(run) == 2 and (run / "DONE").is_file()


def test_failing_arm_skips_only_its_dependents(tmp_path):
    spec = {"name": "fail", "stages": [
        {"name": "first", "recipe": QUICKSTART, "overrides": dict(TINY),
         "arms": {"good": {},
                  # passes the config check (a study plans without touching files), fails
                  # when the trainer opens its tokenizer and data
                  "bad": {"data.train": [{"prefix": str(tmp_path / "missing"), "weight": 1.0}],
                          "data.tokenizer": str(tmp_path / "missing_tokenizer")}}},
        {"name": "second", "recipe": QUICKSTART, "from": "first", "overrides": dict(TINY)}]}
    spec = write_spec(tmp_path / "study.yaml", spec)
    out = tmp_path / "out"
    proc = run_study(spec, out)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["run"]: r["status"] for r in read_csv(out / "results.csv")}
    assert rows == {"first/good": "done", "first/bad": "failed",
                    "second/from-good": "done", "second/from-bad": "skipped"}
    assert "second/from-bad: skipped" in proc.stdout
    assert "first/bad: failed" in proc.stdout and str(out / "first" / "bad") in proc.stdout
    assert not (out / "second" / "from-bad").exists()

    again = run_study(spec, out)                             # the failed arm is retried
    assert again.returncode == 1
    assert launches(out / "first" / "bad") == 2
    assert launches(out / "first" / "good") == 1 and launches(out / "second" / "from-good") == 1
