"""Weighted loss: w_pred = 1 + total_tokens / pred_tokens on answer tokens, weighted mean."""

from __future__ import annotations

import pytest
import torch

from megaproc.data.batch import IGNORE_INDEX
from megaproc.loss import answer_weights, training_loss, training_mask, weighted_token_loss


def test_weights_follow_the_formula_per_micro_batch():
    label_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    answer = torch.zeros_like(label_mask)
    answer[0, 4:6] = True
    answer[1, 3] = True
    answer[1, 5] = True  # on padding: not an answer token (no label)
    weights = answer_weights(label_mask, answer)
    total, pred = 10, 3
    w_pred = 1 + total / pred
    expected = torch.tensor([[1, 1, 1, 1, w_pred, w_pred, 0, 0], [1, 1, 1, w_pred, 0, 0, 0, 0]])
    assert torch.allclose(weights, expected.float())


def test_loss_is_the_weighted_mean_and_plain_mean_without_answers():
    torch.manual_seed(0)
    per_token = torch.rand(2, 6)
    label_mask = torch.ones(2, 6, dtype=torch.bool)
    label_mask[1, 4:] = False
    per_token = per_token * label_mask
    answer = torch.zeros_like(label_mask)
    answer[0, 5] = True
    w = 1 + 10 / 1
    manual = (per_token.sum() - per_token[0, 5] + w * per_token[0, 5]) / (9 + w)
    assert weighted_token_loss(per_token, label_mask, answer).item() == pytest.approx(manual.item())
    plain = per_token.sum() / label_mask.sum()
    no_answer = torch.zeros_like(label_mask)
    assert weighted_token_loss(per_token, label_mask, no_answer).item() == pytest.approx(plain.item())


def test_training_loss_kinds_from_batch_masks():
    labels = torch.tensor([[5, 6, 7, IGNORE_INDEX]])
    answer = torch.tensor([[False, False, True, False]])
    per_token = torch.tensor([[1.0, 2.0, 4.0, 0.0]])
    w = 1 + 3 / 1  # 3 label tokens, 1 answer token
    assert training_loss("weighted", per_token, labels, answer).item() == pytest.approx((1 + 2 + w * 4) / (2 + w))
    assert training_loss("mean", per_token, labels, answer).item() == pytest.approx(7 / 3)
    assert training_loss("answer_only", per_token, labels, answer).item() == pytest.approx(4.0)
    no_answer = torch.zeros_like(answer)
    assert training_loss("answer_only", per_token, labels, no_answer).item() == 0.0
    assert training_mask("answer_only", labels, answer).tolist() == [[False, False, True, False]]


def test_weighted_up_weights_the_answer_word_not_the_eos_after_it():
    """The eos after the answer is an ordinary token for ``weighted`` (weight 1), while
    ``answer_only`` still trains it (a model must learn to stop)."""
    labels = torch.tensor([[5, 6, 7, 8, 0]])              # ... answer tokens 7, 8 then eos 0
    answer = torch.tensor([[False, False, True, True, True]])   # answer + eos
    word = torch.tensor([[False, False, True, True, False]])    # answer only
    per_token = torch.tensor([[1.0, 2.0, 4.0, 8.0, 16.0]])
    w = 1 + 5 / 2                                        # 5 label tokens, 2 answer tokens
    expected = (1 + 2 + w * (4 + 8) + 16) / (3 + 2 * w)
    got = training_loss("weighted", per_token, labels, answer, word_mask=word)
    assert got.item() == pytest.approx(expected)
    assert training_loss("answer_only", per_token, labels, answer, word_mask=word).item() == \
        pytest.approx((4 + 8 + 16) / 3)
    # answer_word trains the answer's tokens only, and logs exactly those.
    assert training_loss("answer_word", per_token, labels, answer, word_mask=word).item() == \
        pytest.approx((4 + 8) / 2)
    assert training_mask("answer_word", labels, answer, word_mask=word).tolist() == word.tolist()


def test_batches_carry_the_word_mask_of_task_and_mixin_samples(tmp_path, tokenizer):
    """Live task samples and JSONL mixin samples both mark the answer without its eos."""
    import json

    from megaproc.data.batch import collate
    from megaproc.data.prompt_answer import (PromptAnswerDataset, PromptAnswerEncoder,
                                             collate_prompt_answer)

    tok = tokenizer
    path = tmp_path / "mix.jsonl"
    path.write_text(json.dumps({"prompt": "a b c", "output_texts": [" d e"]}) + "\n")
    mixin = PromptAnswerDataset(str(path), tok, seq_len=64)[0]
    task = PromptAnswerEncoder(tok).encode_pairs([("a b c", " d e")])[0]
    for batch in (collate([mixin], tok.pad_token_id), collate_prompt_answer([task], tok.pad_token_id)):
        answer, word = batch["answer_mask"][0], batch["word_mask"][0]
        labels = batch["labels"][0]
        assert answer.sum() == word.sum() + 1                 # the eos
        assert labels[answer & ~word].tolist() == [tok.eos_token_id]
        assert word.sum() == len(tok(" d e", add_special_tokens=False)["input_ids"])
