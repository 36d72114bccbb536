"""``python -m megaproc.evaluate`` with the benchmark options, a HF dataset, items and errors."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from data_tools.deepmind_math import convert
from megaproc.evaluate import main
from tests.data_tools.test_deepmind_math import make_raw
from tests.eval.conftest import CORPUS, EWOK_ROWS, HELLASWAG_ROWS, write_jsonl

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main([*args, "--no-progress"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else None, captured.err


def test_all_benchmarks_in_one_object_with_items(tmp_path, model_dir, capsys, monkeypatch):
    hellaswag = write_jsonl(tmp_path / "hs.jsonl", HELLASWAG_ROWS)
    ewok = tmp_path / "ewok.zip"
    with zipfile.ZipFile(ewok, "w") as zf:
        zf.writestr("ewok.jsonl", "".join(json.dumps(r) + "\n" for r in EWOK_ROWS))
    convert(make_raw(tmp_path / "raw", splits=("interpolate", "extrapolate")), tmp_path / "dm")
    items = tmp_path / "out" / "items.jsonl"
    monkeypatch.delenv("EWOK_ZIP_PASSWORD", raising=False)
    code, result, err = _run(capsys, "--model", str(model_dir), "--hellaswag", str(hellaswag),
                             "--ewok", str(ewok), "--dm-math", str(tmp_path / "dm"),
                             "--items-out", str(items), "--max-examples", "4")
    assert code == 0, err
    assert torch.is_grad_enabled()  # main() leaves the caller's autograd state alone
    assert set(result["hellaswag"]) == {"path", "hellaswag_acc", "hellaswag_acc_norm",
                                        "hellaswag_num_examples"}
    assert result["hellaswag"]["hellaswag_num_examples"] == 4
    assert result["ewok"]["ewok_num_items"] == 4
    assert set(result["ewok"]) == {"source", "ewok_num_items", "ewok_domain", "ewok_mean_domain"} | {
        f"ewok_{r}_accuracy{t}" for r in ("sum", "mean") for t in ("", "_t1", "_t2")}
    dm = result["dm_math"]
    assert dm["dm_math_num_examples"] == 10
    assert set(dm["dm_math_by_split"]) == {"interpolate", "extrapolate"}
    assert result["run"] == {"device": "cpu", "dtype": "float32", "world_size": 1,
                             "batch_size": 16}
    rows = [json.loads(line) for line in items.read_text().splitlines()]
    assert [r["task"] for r in rows] == ["hellaswag"] * 4 + ["ewok"] * 4 + ["dm_math"] * 10
    assert len(rows[0]["loglik"]) == 4 and "logp_t2_c1" in rows[4] and "generated" in rows[-1]
    # --ewok without a path takes $EWOK_SRC
    monkeypatch.setenv("EWOK_SRC", str(ewok))
    code, by_env, err = _run(capsys, "--model", str(model_dir), "--ewok", "--max-examples", "4")
    assert code == 0, err
    assert by_env["ewok"] == result["ewok"]


def _reference_lm_metrics(model, tokenizer, texts, seq_len: int, windows: int) -> dict:
    stream = []
    for text in texts:
        stream += tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    loss_sum = correct = tokens = 0
    for k in range(windows):
        window = torch.tensor(stream[k * seq_len:k * seq_len + seq_len + 1])
        with torch.no_grad():
            logits = model(input_ids=window[None, :-1]).logits[0]
        loss_sum += float(F.cross_entropy(logits, window[1:], reduction="sum"))
        correct += int((logits.argmax(-1) == window[1:]).sum())
        tokens += seq_len
    return {"val_loss": loss_sum / tokens, "val_token_acc": correct / tokens, "num_tokens": tokens}


def test_hf_dataset_on_disk(tmp_path, model_dir, model, tokenizer, capsys):
    from datasets import Dataset, DatasetDict

    texts = sorted(set(CORPUS))
    DatasetDict({"train": Dataset.from_dict({"text": texts[::-1]}),
                 "validation": Dataset.from_dict({"text": texts, "id": list(range(len(texts)))})}
                ).save_to_disk(str(tmp_path / "c4"))
    code, result, err = _run(capsys, "--model", str(model_dir), "--hf-dataset", str(tmp_path / "c4"),
                             "--seq-len", "17", "--max-batches", "2", "--batch-size", "2")
    assert code == 0, err
    got = result["hf_dataset"]
    expected = _reference_lm_metrics(model, tokenizer, texts, 16, 4)
    assert got["column"] == "text" and got["split"] == "validation" and got["seq_len"] == 17
    assert got["num_tokens"] == expected["num_tokens"] == 64
    assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-5)
    assert got["val_token_acc"] == pytest.approx(expected["val_token_acc"])
    # A pre-tokenized dataset (input_ids column) is used as it is.
    stream = [t for text in texts for t in tokenizer.encode(text) + [tokenizer.eos_token_id]]
    Dataset.from_dict({"input_ids": [stream[i:i + 20] for i in range(0, 80, 20)]}).save_to_disk(
        str(tmp_path / "tok"))
    code, tokenized, err = _run(capsys, "--model", str(model_dir), "--hf-dataset",
                                str(tmp_path / "tok"), "--seq-len", "17", "--max-batches", "2",
                                "--batch-size", "2")
    assert code == 0, err
    assert tokenized["hf_dataset"]["column"] == "input_ids"
    assert tokenized["hf_dataset"]["val_loss"] == pytest.approx(got["val_loss"], rel=1e-5)


def test_bad_input_is_one_line_and_exit_2(tmp_path, model_dir, capsys, monkeypatch):
    bad = dict(HELLASWAG_ROWS[0])
    del bad["endings"]
    hellaswag = write_jsonl(tmp_path / "hs.jsonl", [HELLASWAG_ROWS[1], bad])
    monkeypatch.delenv("EWOK_SRC", raising=False)
    (tmp_path / "notds").mkdir()
    cases = [
        (["--hellaswag", str(hellaswag)], f"{hellaswag}:2: missing field 'endings'"),
        (["--ewok"], "no EWoK source"),
        (["--ewok", str(tmp_path / "nowhere.zip")], "EWoK source not found"),
        (["--dm-math", str(tmp_path / "nowhere")], "DeepMind Mathematics data not found"),
        (["--hf-dataset", str(tmp_path / "notds")], "not a dataset saved with save_to_disk"),
        (["--split", str(tmp_path / "absent.jsonl")], "file not found"),
        (["--split", str(hellaswag)], f"{hellaswag}:1: expected an object with 'prompt'"),
        (["--items-out", str(tmp_path / "i.jsonl"), "--hf-dataset", str(tmp_path / "notds")],
         "--items-out needs"),
        (["--prefix", str(tmp_path / "nowhere")], "indexed data not found"),
        (["--hellaswag", str(hellaswag), "--batch-size", "0"], "--batch-size: must be > 0"),
        ([], "nothing to evaluate"),
    ]
    for args, message in cases:
        code, _, err = _run(capsys, "--model", str(model_dir), *args)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (args, err)
    proc = subprocess.run([sys.executable, "-m", "megaproc.evaluate", "--model", str(model_dir),
                           "--hellaswag", str(hellaswag)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "hs.jsonl:2: missing field" in proc.stderr
