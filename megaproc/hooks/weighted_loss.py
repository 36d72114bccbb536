"""Weighted loss (``train.loss: weighted``): the whole sequence is trained, answers up-weighted.

For one micro-batch on one rank, with ``N`` = label tokens (padding excluded) and ``P`` =
answer tokens among them (``answer_mask``: the answer and its eos), every answer token gets
weight ``w_pred = 1 + N / P`` and every other token weight 1, as in the original
``pptrain.py``.  The loss is the weighted *mean*::

    loss = sum_t w_t * ce_t / sum_t w_t

so its scale stays that of a cross entropy (a batch without answer tokens gives the plain
token mean).  The answer tokens then carry ``P + N`` of the ``2N`` total weight, i.e. at least
half of the gradient however short the answer is.  The logged ``loss`` stays the unweighted
token-mean cross entropy, comparable across runs.
"""

from __future__ import annotations

import torch

from megaproc.data.batch import IGNORE_INDEX
from megaproc.hooks.base import Hook


def answer_weights(label_mask: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Per-token weights [B, T]: ``1 + N/P`` on answer tokens, 1 on other label tokens, 0 on pads."""
    label_mask = label_mask.bool()
    answer = answer_mask.bool() & label_mask
    total, pred = label_mask.sum(), answer.sum()
    weights = label_mask.to(torch.float32)
    if pred > 0:
        weights = torch.where(answer, 1.0 + total.float() / pred.float(), weights)
    return weights


def weighted_token_loss(per_token_loss: torch.Tensor, label_mask: torch.Tensor,
                        answer_mask: torch.Tensor) -> torch.Tensor:
    """Weighted mean of ``per_token_loss`` [B, T] with :func:`answer_weights`."""
    weights = answer_weights(label_mask, answer_mask).to(per_token_loss.dtype)
    return (per_token_loss * weights).sum() / weights.sum().clamp(min=1e-9)


class WeightedLossHook(Hook):
    """Replaces the token-mean loss by :func:`weighted_token_loss`."""

    name = "weighted_loss"

    def on_loss(self, trainer, batch, logits, per_token_loss, loss):
        labels = batch["labels"].to(per_token_loss.device)
        answer = batch["answer_mask"].to(per_token_loss.device)
        return weighted_token_loss(per_token_loss, labels != IGNORE_INDEX, answer)
