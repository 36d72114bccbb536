"""``data.reset_position_ids`` / ``reset_attention_mask`` / ``eod_mask_loss`` in a run.

- resolve refuses them where they cannot work (a graph-search run, flex attention, a wrong
  type), naming the key, and an lm run's training and validation batches carry them;
- slow: a 2-rank ZeRO-2 run with all three switches on a corpus of short documents trains
  (finite losses that fall, finite validation), and a resume from its middle checkpoint
  reproduces its losses bitwise.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from megaproc.config import ConfigError, load_config
from megaproc.data.batch import IGNORE_INDEX
from megaproc.runs import HookInputs, resolve, run_kind
from megaproc.tokenizer import pad_id as tokenizer_pad_id
from tests.data.conftest import TEXTS, make_tokenizer, write_indexed
from tests.launch import FAST, QUICKSTART, losses, read_jsonl, run

SWITCHES = ["data.reset_position_ids=true", "data.reset_attention_mask=true",
            "data.eod_mask_loss=true"]
N = 4  # checkpoint interval; the run trains 2N steps


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A saved tiny tokenizer and an indexed corpus of 2000 short documents (2-8 words of the
    test sentences, EOS after each): a 33-token sample spans several documents."""
    root = tmp_path_factory.mktemp("short_docs")
    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(root / "tokenizer")
    rng = np.random.default_rng(0)
    docs = []
    for _ in range(2000):
        words = TEXTS[int(rng.integers(len(TEXTS)))].split()
        start = int(rng.integers(len(words) - 1))
        text = " ".join(words[start:start + int(rng.integers(2, 9))])
        docs.append(np.asarray(tokenizer.encode(text) + [tokenizer.eos_token_id]))
    write_indexed(root / "docs", docs)
    return {"tokenizer": root / "tokenizer", "prefix": root / "docs",
            "eos": tokenizer.eos_token_id}


def data_overrides(corpus) -> list[str]:
    return [f"data.tokenizer={corpus['tokenizer']}", f"data.train=[{corpus['prefix']}]"]


@pytest.mark.parametrize("extra, words", [
    (["task.kind=graph_search", "data.eod_mask_loss=true"], "not to a graph_search run"),
    (["model.config_overrides=attn_implementation=flex_attention",
      "data.reset_attention_mask=true"], "flex_attention"),
    (["data.reset_position_ids=1"], "wrong type"),
])
def test_resolve_refuses_what_cannot_work(extra, words):
    with pytest.raises(ConfigError) as error:
        resolve(load_config(QUICKSTART, extra), 2, check_files=False)
    message = str(error.value)
    assert "data.reset_position_ids" in message or "data.reset_attention_mask" in message \
        or "data.eod_mask_loss" in message, message
    assert words in message, message


def test_lm_batches_and_validation_carry_the_switches(corpus, tmp_path):
    cfg = resolve(load_config(QUICKSTART, FAST + data_overrides(corpus) + SWITCHES), 1)
    kind = run_kind(cfg)
    tokenizer = kind.build_tokenizer()
    pad = tokenizer_pad_id(tokenizer)
    source, valid = kind.build_data(tokenizer, 0, 1, pad, print)
    try:
        batch = source.micro_batch_at(0)
    finally:
        source.close()
    eod = batch["input_ids"] == corpus["eos"]
    assert eod.sum() >= 4  # packed: several documents per row
    assert (batch["labels"][eod] == IGNORE_INDEX).all()
    assert (batch["position_ids"][:, 1:][eod[:, :-1]] == 0).all()  # restart after each EOD
    assert (batch["document_ids"].diff(dim=1) == eod[:, :-1].long()).all()
    hooks = kind.hooks(HookInputs(cfg, tmp_path, tokenizer, source, valid, None, "cpu", 0, 1,
                                  pad))
    evaluation = next(h for h in hooks if h.name == "evaluation")
    validation = next(e.evaluator for e in evaluation.evaluations
                      if e.evaluator.name == "validation")
    assert validation.documents == source.documents and source.documents.eod_mask_loss


@pytest.mark.slow
def test_two_rank_training_with_all_switches_trains_and_resumes_bitwise(corpus, tmp_path):
    settings = FAST + data_overrides(corpus) + SWITCHES + [
        "deepspeed.config=ds_configs/zero2.json", f"train.max_steps={2 * N}",
        f"checkpoint.save_every={N}", "checkpoint.keep_last_k=0", f"eval.every={N}"]
    straight = tmp_path / "straight"
    proc = run(2, settings + [f"run.out_dir={straight}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    curve = losses(straight)
    assert sorted(curve) == list(range(1, 2 * N + 1))
    assert all(math.isfinite(v) for v in curve.values())
    assert curve[2 * N] < curve[1] - 0.5
    evals = read_jsonl(straight / "logs" / "eval.jsonl")
    assert [e["step"] for e in evals] == [N, 2 * N]
    assert all(math.isfinite(e["val_loss"]) for e in evals)

    # The same run cut back to its checkpoint N, resumed: the last N losses are bitwise equal.
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / f"step_{2 * N:08d}")
    train_log = resumed / "logs" / "train.jsonl"
    kept = [line for line in train_log.read_text().splitlines() if line.strip()][:N]
    train_log.write_text("\n".join(kept) + "\n")
    proc = run(2, settings + [f"run.out_dir={resumed}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resumed from {resumed / 'checkpoints' / f'step_{N:08d}'}" in proc.stdout + proc.stderr
    assert losses(resumed) == curve
