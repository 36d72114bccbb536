"""Several valid answers: the window and the weighted loss accept any of them."""

from __future__ import annotations

import math

import pytest
import torch

from megaproc.data.batch import IGNORE_INDEX
from megaproc.data.prompt_answer import PromptAnswerEncoder, collate_prompt_answer
from megaproc.data.task_source import answer_rows
from megaproc.eval.answer_correctness import teacher_forced_correct
from megaproc.hooks.curriculum import examples_correct
from megaproc.loss import token_cross_entropy, training_loss, weighted_token_loss


def test_rows_of_alternative_answers_are_tagged(tokenizer):
    enc = PromptAnswerEncoder(tokenizer)
    a = enc.encode_pairs([("p1", " 3"), ("p1", " 4")])
    b = enc.encode_pairs([("p2", " 5")])
    batch = collate_prompt_answer(answer_rows([a, b]), pad_id=0)
    assert batch["example_id"].tolist() == [0, 1, 0] and batch["primary"].tolist() == [True, True, False]


def _logits_predicting(labels: torch.Tensor, vocab: int, choose: dict) -> torch.Tensor:
    """Logits whose argmax is the label everywhere, except the positions in ``choose``."""
    logits = torch.zeros(*labels.shape, vocab)
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            target = choose.get((b, t), labels[b, t].item())
            if target != IGNORE_INDEX:
                logits[b, t, target] = 5.0
    return logits


def test_window_counts_the_alternative_answer_as_correct():
    # Two examples; example 0 has answers A (row 0) and B (row 2).  The model predicts B.
    labels = torch.tensor([[7, 11, 2], [7, 12, 2], [7, 13, 2]])
    word = torch.tensor([[False, True, False]] * 3)
    boundary = torch.tensor([[False, False, True]] * 3)
    example_id, primary = torch.tensor([0, 1, 0]), torch.tensor([True, True, False])
    logits = _logits_predicting(labels, 20, {(0, 1): 13})  # row 0 wrong (says 13), row 2 right
    rows = teacher_forced_correct(logits, labels, word, boundary)
    assert rows.tolist() == [False, True, True]
    assert examples_correct(rows, example_id, primary).tolist() == [True, True]
    wrong = _logits_predicting(labels, 20, {(0, 1): 9, (2, 1): 9})  # neither valid answer
    rows = teacher_forced_correct(wrong, labels, word, boundary)
    assert examples_correct(rows, example_id, primary).tolist() == [False, True]


def test_weighted_loss_is_the_marginal_over_valid_answers():
    torch.manual_seed(0)
    labels = torch.tensor([[4, 5, 11, 2], [4, 6, 12, 2], [4, 5, 13, 2]])
    answer = torch.tensor([[False, False, True, True]] * 3)
    example_id, primary = torch.tensor([0, 1, 0]), torch.tensor([True, True, False])
    logits = torch.randn(3, 4, 20)
    per_token = token_cross_entropy(logits, labels)
    loss = training_loss("weighted", per_token, labels, answer, example_id, primary)
    # Independent computation: N=8 label tokens and P=4 answer tokens on the primary rows.
    logp = torch.log_softmax(logits, -1)
    def answer_logp(row):
        return sum(logp[row, t, labels[row, t]].item() for t in (2, 3))
    w = 1 + 8 / 4
    prompt = -sum(logp[r, t, labels[r, t]].item() for r in (0, 1) for t in (0, 1))
    marginal0 = -math.log(math.exp(answer_logp(0)) + math.exp(answer_logp(2)))
    expected = (prompt + w * (marginal0 - answer_logp(1))) / (4 + w * 4)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # One answer per example: exactly the original weighted formula.
    single = training_loss("weighted", per_token[:2], labels[:2], answer[:2], example_id[:2], primary[:2])
    assert single.item() == weighted_token_loss(per_token[:2], labels[:2] != IGNORE_INDEX, answer[:2]).item()
    # mean counts primary rows only.
    mean = training_loss("mean", per_token, labels, answer, example_id, primary)
    assert mean.item() == pytest.approx(per_token[:2].mean().item())
