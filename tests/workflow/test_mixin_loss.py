"""data.mixin_loss: the synthetic mixin's rows train with their own loss, the corpus with train.loss."""

from __future__ import annotations

import json

import pytest
import torch

from megaproc.config import ConfigError, load_config
from megaproc.data.batch import IGNORE_INDEX
from megaproc.loss import per_source_loss, token_cross_entropy, training_loss, training_mask
from megaproc.runs import resolve, run_kind
from tests.launch import QUICKSTART

LOSSES = ("mean", "weighted", "answer_only", "answer_word")


def _batch(seed: int = 0, rows: int = 4, width: int = 10):
    """Random per-token losses, labels with padding, answers (answer + eos) and words."""
    g = torch.Generator().manual_seed(seed)
    per_token = torch.rand(rows, width, generator=g)
    labels = torch.randint(0, 50, (rows, width), generator=g)
    lengths = torch.tensor([10, 7, 9, 5])[:rows]
    for r, n in enumerate(lengths):
        labels[r, n:] = IGNORE_INDEX
    per_token = per_token * (labels != IGNORE_INDEX)
    answer = torch.zeros(rows, width, dtype=torch.bool)
    word = torch.zeros(rows, width, dtype=torch.bool)
    for r, n in enumerate(lengths):
        answer[r, n - 3:n] = True     # two answer tokens and the eos
        word[r, n - 3:n - 1] = True   # the answer's own tokens
    return per_token, labels, answer, word


@pytest.mark.parametrize("kind", LOSSES)
def test_one_kind_throughout_equals_training_loss(kind):
    per_token, labels, answer, word = _batch()
    sources = torch.tensor([0, 1, 0, 1])
    loss, mask = per_source_loss({1: kind}, kind, sources, per_token, labels, answer, word)
    assert loss.item() == pytest.approx(training_loss(kind, per_token, labels, answer,
                                                      word_mask=word).item(), rel=1e-6)
    if kind != "weighted":
        assert torch.equal(mask, training_mask(kind, labels, answer, word_mask=word))


def test_corpus_mean_with_an_answer_word_mixin_is_the_mean_over_what_each_row_trains():
    per_token, labels, answer, word = _batch(1)
    sources = torch.tensor([0, 1, 0, 1])            # rows 1 and 3 come from the mixin
    loss, mask = per_source_loss({1: "answer_word"}, "mean", sources, per_token, labels,
                                 answer, word)
    corpus = (labels != IGNORE_INDEX) & (sources == 0)[:, None]
    mixin = word & (sources == 1)[:, None]          # the answers' own tokens, not their eos
    expected = (per_token[corpus].sum() + per_token[mixin].sum()) / (corpus.sum() + mixin.sum())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(mask, corpus | mixin)
    assert not mask[1, 6] and not mask[3, 4]        # the mixin rows' eos targets do not train


def test_weighted_mixin_counts_its_weights_over_the_mixin_rows():
    per_token, labels, answer, word = _batch(2)
    sources = torch.tensor([1, 0, 0, 1])
    loss, _ = per_source_loss({1: "weighted"}, "mean", sources, per_token, labels, answer, word)
    valid = labels != IGNORE_INDEX
    rows = (sources == 1)[:, None]
    total, pred = (valid & rows).sum(), (word & valid & rows).sum()
    w_pred = 1 + total / pred
    weights = torch.where(word & rows, w_pred, valid.float())
    expected = (per_token * weights).sum() / weights.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_lm_kind_applies_it_to_the_mixin_rows_of_a_real_blend(tmp_path):
    mixin = tmp_path / "mixin.jsonl"
    mixin.write_text("".join(json.dumps({"prompt": f"find {k} from 3:", "output_texts": [f" {k}"]})
                             + "\n" for k in range(40)))
    cfg = resolve(load_config(QUICKSTART, [
        "model.name=tiny", "train.seq_len=32", "train.micro_batch=8", "train.max_steps=4",
        f"data.mixin={mixin}", "data.mixin_percent=0.25", "data.mixin_loss=answer_word",
        f"run.out_dir={tmp_path / 'run'}"]))
    kind = run_kind(cfg)
    tokenizer = kind.build_tokenizer()
    source, _ = kind.build_data(tokenizer, 0, 1, tokenizer.pad_token_id, lambda m: None)
    assert kind.source_losses == {1: "answer_word"}
    batch = source.micro_batch_at(0)
    assert set(batch["source"].tolist()) == {0, 1}
    torch.manual_seed(0)
    model = kind.build_model(tokenizer, {}, tmp_path, 0).eval()
    out = kind.forward_loss(model, batch, "cpu")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce = token_cross_entropy(logits, batch["labels"])
    corpus = (batch["labels"] != IGNORE_INDEX) & (batch["source"] == 0)[:, None]
    words = batch["word_mask"] & (batch["source"] == 1)[:, None]
    expected = (ce[corpus].sum() + ce[words].sum()) / (corpus.sum() + words.sum())
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    source.close()


def test_mixin_loss_needs_a_mixin():
    with pytest.raises(ConfigError, match="'data.mixin_loss'"):
        load_config(None, ["data.mixin_loss=answer_word"])
