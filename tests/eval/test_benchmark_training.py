"""HellaSwag and EWoK during training (2 CPU ranks, each scoring its share of the items) give
exactly what ``python -m megaproc.evaluate`` reports on the checkpoint of the same step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.eval.conftest import EWOK_ROWS, HELLASWAG_ROWS, write_jsonl
from tests.launch import FAST, REPO, read_jsonl, run

pytestmark = pytest.mark.slow


def test_training_benchmarks_equal_the_evaluate_cli(tmp_path):
    hellaswag = write_jsonl(tmp_path / "hs.jsonl", HELLASWAG_ROWS * 2)
    ewok = write_jsonl(tmp_path / "ewok" / "items.jsonl", EWOK_ROWS).parent
    out = tmp_path / "run"
    proc = run(2, FAST + [f"run.out_dir={out}", "train.max_steps=4", "checkpoint.save_every=4",
                          f"eval.hellaswag_path={hellaswag}", "eval.hellaswag_every=4",
                          f"eval.ewok_path={ewok}", "eval.ewok_every=4"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [r for r in read_jsonl(out / "logs" / "eval.jsonl") if r["step"] == 4]
    merged = {k: v for r in records for k, v in r.items()}
    cli = subprocess.run([sys.executable, "-m", "megaproc.evaluate", "--checkpoint",
                          str(out / "checkpoints" / "step_00000004"), "--hellaswag", str(hellaswag),
                          "--ewok", str(ewok), "--no-progress"],
                         cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-2000:]
    result = json.loads(cli.stdout)
    assert result["hellaswag"]["hellaswag_num_examples"] == 2 * len(HELLASWAG_ROWS)
    # The training record and the command use the same names for the same quantities.
    for section, key in (("hellaswag", "hellaswag_acc"), ("hellaswag", "hellaswag_acc_norm"),
                         ("ewok", "ewok_sum_accuracy"), ("ewok", "ewok_mean_accuracy")):
        assert merged[key] == pytest.approx(result[section][key])
    step_metrics = json.loads((out / "step_metrics.json").read_text())
    assert step_metrics["4"]["hellaswag_acc"] == merged["hellaswag_acc"]
