"""``python -m megaproc.evaluate --prefix P --reset-position-ids --reset-attention-mask
--eod-mask-loss``: each window scored as the documents in it run alone, without the predictions
made from an EOD; the flags without a windowed evaluator are one line and exit code 2."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megaproc.data.gpt_dataset import GPTDataset
from megaproc.data.indexed import IndexedDataset
from megaproc.evaluate import main
from tests.data.conftest import write_indexed
from tests.eval.conftest import CORPUS

FLAGS = ["--reset-position-ids", "--reset-attention-mask", "--eod-mask-loss"]


def evaluate(capsys, *args: str):
    code = main([*args, "--no-progress"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else None, captured.err


def reference(model, window: np.ndarray, eod: int) -> tuple[float, int]:
    """Summed cross entropy and count of one window: every document (up to and including its
    EOD) in a forward of its own from position 0; no loss where the input is an EOD."""
    inputs, targets = torch.as_tensor(window[:-1]), torch.as_tensor(window[1:])
    ends = [i + 1 for i, token in enumerate(inputs.tolist()) if token == eod]
    bounds = [0] + [e for e in ends if e < len(inputs)] + [len(inputs)]
    total, count = 0.0, 0
    for start, end in itertools.pairwise(bounds):
        with torch.no_grad():
            logits = model(input_ids=inputs[None, start:end]).logits[0]
        keep = inputs[start:end] != eod
        total += float(F.cross_entropy(logits[keep], targets[start:end][keep], reduction="sum"))
        count += int(keep.sum())
    return total, count


def test_prefix_with_document_masking_scores_each_document_alone(tmp_path, model_dir, model,
                                                                 tokenizer, capsys):
    eod = tokenizer.eos_token_id
    prefix = tmp_path / "valid_text"
    write_indexed(prefix, [np.asarray(tokenizer.encode(t) + [eod]) for t in CORPUS])
    samples = GPTDataset(IndexedDataset(str(prefix)), 32, None, seed=0, name="valid")
    args = ["--model", str(model_dir), "--prefix", str(prefix), "--seq-len", "33",
            "--batch-size", "4", "--max-batches", "0"]
    code, masked, err = evaluate(capsys, *args, *FLAGS)
    assert code == 0, err
    code, plain, err = evaluate(capsys, *args)
    assert code == 0, err

    total, count = 0.0, 0
    for i in range(len(samples)):
        window_total, window_count = reference(model, np.asarray(samples[i]["tokens"]), eod)
        total, count = total + window_total, count + window_count
    assert masked["prefix"]["num_tokens"] == count < plain["prefix"]["num_tokens"]
    assert masked["prefix"]["val_loss"] == pytest.approx(total / count, rel=1e-5)
    assert masked["prefix"]["val_loss"] != pytest.approx(plain["prefix"]["val_loss"], rel=1e-3)


def test_document_flags_need_a_windowed_evaluator(tmp_path, model_dir, capsys):
    split = tmp_path / "split.jsonl"
    split.write_text(json.dumps({"input": "a", "output_texts": ["b"]}) + "\n")
    code, _, err = evaluate(capsys, "--model", str(model_dir), "--split", str(split),
                            "--reset-attention-mask")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "need --prefix or --hf-dataset" in lines[0], err
