"""Language-model metrics: cross entropy, perplexity and token accuracy over batches.

:class:`LMMetrics` accumulates the validation hook's sums (sharded over ranks, all-reduced);
:func:`lm_summary` turns ``[loss_sum, tokens, correct]`` into the published names for it and
for the ``prefix`` / ``hf_dataset`` evaluators (:mod:`megaproc.eval.lm_windows`).
"""

from __future__ import annotations

import math

import torch

from megaproc import distributed as dist_utils
from megaproc.data.document_mask import document_inputs
from megaproc.loss import label_mask, masked_sums

PPL_CAP = 50.0  # exp() of a loss above this is reported as exp(50), not inf


class LMMetrics:
    """Sums of token losses, tokens and correct argmax predictions."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)

    def add(self, logits: torch.Tensor, labels: torch.Tensor,
            mask: torch.Tensor | None = None) -> None:
        """Account one batch of logits [B, T, V] against labels [B, T] (only ``mask`` positions,
        default every label token)."""
        mask = None if mask is None else mask.to(logits.device)
        self.sums += masked_sums(logits, labels.to(logits.device), mask).to(self.sums.device)

    def result(self, reduce: bool = True, prefix: str = "val") -> dict:
        """``{prefix}_loss``, ``{prefix}_ppl``, ``{prefix}_token_acc`` and ``num_tokens``;
        ``reduce`` sums over ranks first (collective)."""
        sums = self.sums.clone()
        if reduce:
            dist_utils.all_reduce_sum(sums)
        return lm_summary(sums.cpu().tolist(), prefix)


def lm_summary(sums, prefix: str = "val") -> dict:
    """``{prefix}_loss`` (mean token cross entropy), ``{prefix}_ppl`` (its exp, capped at
    exp(50)), ``{prefix}_token_acc`` and ``num_tokens`` of ``[loss_sum, tokens, correct]``."""
    loss_sum, tokens, correct = (float(x) for x in sums)
    if tokens == 0:
        return {f"{prefix}_loss": None, f"{prefix}_ppl": None, f"{prefix}_token_acc": None,
                "num_tokens": 0}
    loss = loss_sum / tokens
    return {f"{prefix}_loss": loss, f"{prefix}_ppl": math.exp(min(loss, PPL_CAP)),
            f"{prefix}_token_acc": correct / tokens, "num_tokens": int(tokens)}


@torch.no_grad()
def lm_metrics(logits_fn, batches, device: torch.device | str = "cpu", reduce: bool = True,
               mask_key: str | None = None, sliced: bool = False) -> dict:
    """Metrics of ``logits_fn(input_ids, attention_mask) -> logits`` over collated ``batches``
    (over the tokens of ``batch[mask_key]`` only when given, e.g. ``"answer_mask"`` for what
    ``train.loss: answer_only`` trains).  With ``sliced`` (and ``mask_key``) the head runs only
    there: ``logits_fn(input_ids, attention_mask, positions)`` returns [N, V] logits at the
    ``True`` positions (:func:`megaproc.models.sliced_head.forward_logits`); same metrics.

    With ``reduce`` every rank must pass the same number of batches (the forwards of ZeRO-3
    are collective).  A batch's document masking keys (``position_ids``, ``document_ids``)
    reach ``logits_fn`` as keyword arguments.
    """
    metrics = LMMetrics(device)
    for batch in batches:
        inputs = (batch["input_ids"].to(device), batch["attention_mask"].to(device))
        documents = document_inputs(batch, device)
        labels = batch["labels"].to(device)
        if sliced and mask_key:
            positions = batch[mask_key].to(device).bool() & label_mask(labels)
            metrics.add(logits_fn(*inputs, positions, **documents), labels[positions])
        else:
            metrics.add(logits_fn(*inputs, **documents), labels,
                        batch[mask_key] if mask_key else None)
    return metrics.result(reduce=reduce)
