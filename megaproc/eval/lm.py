"""Language-model metrics: cross entropy, perplexity and token accuracy over sample batches.

One computation for every LM evaluation (the ``prefix`` / ``hf_dataset`` evaluators of
:mod:`megaproc.eval.lm_windows` and training validation, :mod:`megaproc.eval.validation`):
:func:`lm_metrics_in_lockstep` collates batches of samples, shares them over the ranks with
:func:`megaproc.eval.sharding.run_in_lockstep`, adds every batch's ``[loss_sum, tokens,
correct]`` (:func:`batch_lm_sums`, float64) in batch order and names the result with
:func:`lm_summary`: ``val_loss``, ``val_ppl``, ``val_token_acc``, ``num_tokens``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from megaproc.data.batch import collate
from megaproc.data.document_mask import document_inputs
from megaproc.eval.evaluator import EvalContext
from megaproc.eval.sharding import run_in_lockstep
from megaproc.loss import label_mask, masked_sums
from megaproc.tokenizer import pad_id as tokenizer_pad_id

PPL_CAP = 50.0  # exp() of a loss above this is reported as exp(50), not inf


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
def batch_lm_sums(forward, batch: dict, device: torch.device | str = "cpu",
                  mask_key: str | None = None, sliced: bool = False) -> torch.Tensor:
    """float64 ``[loss_sum, tokens, correct]`` of one collated batch.

    ``forward(input_ids, attention_mask) -> logits`` (a :class:`~megaproc.eval.forward.
    ModelForward`); only the tokens of ``batch[mask_key]`` count when given (e.g.
    ``"answer_mask"``: what ``train.loss: answer_only`` trains).  With ``sliced`` (and
    ``mask_key``) the LM head runs only there (``forward.logits_at``, [N, V] logits at those
    positions, :mod:`megaproc.models.sliced_head`): the same sums.
    """
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    documents = document_inputs(batch, device)  # position/document ids of document masking
    if sliced and mask_key:
        positions = batch[mask_key].to(device).bool() & label_mask(labels)
        return masked_sums(forward.logits_at(ids, mask, positions, **documents),
                           labels[positions])
    logits = forward(ids, mask, **documents)
    selected = None if mask_key is None else batch[mask_key].to(logits.device)
    return masked_sums(logits, labels.to(logits.device), selected)


def lm_metrics_in_lockstep(ctx: EvalContext, sample: Callable[[int], dict],
                           batches: Sequence[Sequence[int]], pad_to: int, desc: str,
                           mask_key: str | None = None, sliced: bool = False,
                           documents=None) -> dict:
    """LM metrics of the samples ``sample(i)`` (dicts with ``tokens`` and any masks) for the
    index lists ``batches``, each padded to ``pad_to`` tokens (collective over ``ctx``'s
    ranks: a rank out of batches runs sample 0 as its dummy forward); ``documents`` (a
    :class:`~megaproc.data.document_mask.DocumentMasking`) applies document masking."""
    pad = tokenizer_pad_id(ctx.tokenizer)

    def run(chosen):
        indices = chosen if chosen is not None else range(1)
        tensors = collate([sample(int(i)) for i in indices], pad, pad_to=pad_to,
                          documents=documents)
        sums = batch_lm_sums(ctx.forward, tensors, ctx.device, mask_key, sliced)
        return None if chosen is None else sums.cpu().tolist()

    total = np.zeros(3, dtype=np.float64)
    for sums in run_in_lockstep(list(batches), run, ctx.rank, ctx.world_size, ctx.progress,
                                desc):
        total += np.asarray(sums, dtype=np.float64)
    return lm_summary(total.tolist())
