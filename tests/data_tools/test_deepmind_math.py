"""DeepMind-Mathematics converter: split files, the mixin's answer mask, one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megaproc.data.deepmind_math import DeepMindMathError
from data_tools.deepmind_math import convert

REPO = Path(__file__).resolve().parents[2]
MODULES = {
    "algebra__linear_1d": [("Solve 3*x = 9 for x.", "3"), ("Solve -2*k + 4 = 0 for k.", "2"),
                           ("Solve 5*b = -10 for b.", "-2")],
    "arithmetic__add_or_sub": [("What is 12 + 30?", "42"), ("Calculate 7 - 10.", "-3")],
}


def make_raw(root: Path, splits=("train-easy", "train-medium", "interpolate", "extrapolate"),
             modules=MODULES) -> Path:
    """A miniature ``mathematics_dataset-v1.0`` directory."""
    for split in splits:
        (root / split).mkdir(parents=True, exist_ok=True)
        for module, pairs in modules.items():
            lines = [f"{q}\n{a} \n" for q, a in pairs]  # answers with a trailing space
            (root / split / f"{module}.txt").write_text("".join(lines), encoding="utf-8")
    return root


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_one_jsonl_per_split(tmp_path):
    raw = make_raw(tmp_path / "mathematics_dataset-v1.0")
    written = convert(raw, tmp_path / "out")
    assert written == {"train-easy.jsonl": 5, "train-medium.jsonl": 5, "interpolate.jsonl": 5,
                       "extrapolate.jsonl": 5}
    records = read(tmp_path / "out" / "interpolate.jsonl")
    assert records[0] == {"prompt": "Solve 3*x = 9 for x.\n", "answer": "3",
                          "module": "algebra__linear_1d", "split": "interpolate"}
    assert [r["module"] for r in records] == ["algebra__linear_1d"] * 3 + ["arithmetic__add_or_sub"] * 2
    assert [r["answer"] for r in records] == ["3", "2", "-2", "42", "-3"]


def test_merge_train_and_limits(tmp_path):
    raw = make_raw(tmp_path / "raw")
    written = convert(raw, tmp_path / "out", limit=1, merge_train=True)
    assert written == {"train.jsonl": 4, "interpolate.jsonl": 2, "extrapolate.jsonl": 2}
    splits = [r["split"] for r in read(tmp_path / "out" / "train.jsonl")]
    assert splits == ["train-easy", "train-easy", "train-medium", "train-medium"]
    assert convert(raw, tmp_path / "only", splits=["extrapolate"]) == {"extrapolate.jsonl": 5}


def test_mixin_reader_trains_on_the_answer_only(tmp_path):
    from megaproc.data.batch import collate
    from megaproc.data.prompt_answer import PromptAnswerDataset
    from megaproc.loss import training_mask
    from tests.eval.conftest import make_tokenizer

    convert(make_raw(tmp_path / "raw", splits=("train-easy",)), tmp_path / "out")
    tokenizer = make_tokenizer()
    dataset = PromptAnswerDataset(str(tmp_path / "out" / "train-easy.jsonl"), tokenizer, seq_len=64,
                               seed=0)
    assert dataset.num_examples == 5
    pairs = {q: a for module in MODULES.values() for q, a in module}
    for i in range(5):
        item = dataset[i]
        tokens, mask = item["tokens"], item["answer_mask"]
        prompt = tokenizer.decode(tokens[~mask][1:])  # after the BOS
        assert tokens[0] == tokenizer.bos_token_id and prompt.endswith("\n")
        answer = tokenizer.decode(tokens[mask][:-1])
        assert tokens[mask][-1] == tokenizer.eos_token_id
        assert pairs[prompt[:-1]] == answer
    batch = collate([dataset[i] for i in range(5)], tokenizer.pad_token_id)
    trained = training_mask("answer_only", batch["labels"], batch["answer_mask"])
    for row in range(5):  # labels that train: exactly the answer tokens and the eos
        labels = batch["labels"][row][trained[row]].tolist()
        assert labels[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(labels[:-1]) in pairs.values()
        assert np.all(batch["answer_mask"][row].numpy() == trained[row].numpy())


@pytest.mark.parametrize("content, message", [
    ("Solve 3*x = 9 for x.\n3\nWhat is 1 + 1?\n", "odd number of lines (3)"),
    ("Solve 3*x = 9 for x.\n\nWhat is 1 + 1?\n2\n", ":2: empty answer line"),
])
def test_bad_module_files(tmp_path, content, message):
    raw = make_raw(tmp_path / "raw", splits=("interpolate",))
    bad = raw / "interpolate" / "algebra__linear_1d.txt"
    bad.write_text(content)
    with pytest.raises(DeepMindMathError, match=re.escape(message)) as info:
        convert(raw, tmp_path / "out")
    assert str(bad) in str(info.value)
    assert not (tmp_path / "out" / "interpolate.jsonl").exists()  # nothing half-written
    assert not list((tmp_path / "out").glob(".*tmp*"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_tools.deepmind_math", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_help_and_one_line_errors(tmp_path):
    help_run = _cli("--help")
    assert help_run.returncode == 0 and "--merge-train" in help_run.stdout
    raw = make_raw(tmp_path / "raw", splits=("interpolate",))
    ok = _cli("--input", str(raw), "--out-dir", str(tmp_path / "out"))
    assert ok.returncode == 0 and "interpolate.jsonl: 5 examples" in ok.stdout
    for args, message in ((["--input", str(tmp_path / "absent")], "input directory not found"),
                          (["--input", str(raw), "--splits", "extrapolate"],
                           "split directory not found"),
                          (["--input", str(raw), "--splits", "train-tiny"], "unknown split")):
        bad = _cli(*args, "--out-dir", str(tmp_path / "o2"))
        assert bad.returncode == 2, bad.stderr
        assert bad.stderr.count("\n") == 1 and "error:" in bad.stderr and message in bad.stderr
