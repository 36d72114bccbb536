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
