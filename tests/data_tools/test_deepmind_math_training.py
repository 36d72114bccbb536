"""DeepMind Mathematics end to end: convert, train with the loss on answer tokens only, validate
on answer tokens, and score exact match per module with ``python -m megaproc.evaluate``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from data_tools.deepmind_math import convert
from tests.data_tools.test_deepmind_math import make_raw
from tests.launch import FAST, REPO, read_jsonl, run

pytestmark = pytest.mark.slow


def test_answer_only_training_and_exact_match(tmp_path):
    from megaproc.data.default_corpus import ensure_default_corpus
    from megaproc.tokenizer import load_tokenizer

    raw = make_raw(tmp_path / "mathematics_dataset-v1.0")
    out = tmp_path / "dm"
    convert(raw, out, merge_train=True)
    run_dir = tmp_path / "run"
    valid = out / "interpolate.jsonl"
    n_valid = len(valid.read_text().splitlines())  # 5 examples: one pass = every example once
    proc = run(1, FAST + [f"run.out_dir={run_dir}", "train.max_steps=6", "train.loss=answer_only",
                          f"data.train=[{out / 'train.jsonl'}]", f"data.valid=[{valid}]",
                          "train.micro_batch=5", "train.grad_accum=1", "eval.max_batches=1",
                          "eval.every=3", "train.seq_len=48"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = read_jsonl(run_dir / "logs" / "train.jsonl")
    assert "loss/train.jsonl" in records[-1]
    # Validation counts exactly the answer tokens and the eos of the valid examples.
    tok = load_tokenizer(ensure_default_corpus(2048, log=lambda *a: None)[0])
    answers = [json.loads(line)["answer"] for line in valid.read_text().splitlines()]
    expected = sum(len(tok(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers)
    evals = read_jsonl(run_dir / "logs" / "eval.jsonl")
    assert n_valid == 5 and [e["num_tokens"] for e in evals] == [expected, expected]
    cli = subprocess.run([sys.executable, "-m", "megaproc.evaluate", "--checkpoint",
                          f"latest:{run_dir}", "--dm-math", str(out), "--no-progress"],
                         cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-2000:]
    result = json.loads(cli.stdout)["dm_math"]
    assert result["dm_math_num_examples"] == 10  # interpolate + extrapolate
    assert set(result["dm_math_by_module"]) == {
        f"{s}/{m}" for s in ("interpolate", "extrapolate")
        for m in ("algebra__linear_1d", "arithmetic__add_or_sub")}
    assert 0.0 <= result["dm_math_acc"] <= 1.0
