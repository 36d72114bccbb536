"""Validation loss, perplexity and token accuracy every ``eval.every`` steps and at the end.

Rank ``r`` evaluates its slice of each global validation batch (the same slicing as training,
:func:`~megaproc.data.batch.rank_sample_indices`), so every rank runs the same number of
forwards (collective under ZeRO-3); the sums are all-reduced by :mod:`megaproc.eval.lm`.
Records go to ``logs/eval.jsonl`` as ``step, val_loss, val_ppl, val_token_acc, num_tokens``
(over the tokens that train with ``train.loss: answer_only`` or ``answer_word``:
:data:`VALIDATION_MASK`).  A run with document masking (``data.reset_*``,
``data.eod_mask_loss``) validates with it too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megaproc.data.batch import collate, rank_sample_indices
from megaproc.eval.lm import lm_metrics
from megaproc.eval.forward import eval_mode
from megaproc.hooks.base import Hook
from megaproc.hooks.records import EvalLog
from megaproc.models.sliced_head import forward_logits

# The batch mask validation averages over for a ``train.loss`` that trains only some tokens.
VALIDATION_MASK = {"answer_only": "answer_mask", "answer_word": "word_mask"}


def validation_mask_key(loss_kind: str) -> str | None:
    """The batch mask validation averages over for ``train.loss = loss_kind`` (None: all)."""
    return VALIDATION_MASK.get(loss_kind)


class ValidationHook(Hook):
    """Validation metrics on ``eval.max_batches`` global batches of the validation dataset."""

    name = "validation"
    priority = 50

    def __init__(self, eval_cfg, run_dir: Path, dataset, micro_batch: int, seq_len: int,
                 pad_id: int, rank: int, world_size: int, mask_key: str | None = None,
                 sliced_head: bool = False, documents=None):
        self.cfg = eval_cfg
        self.mask_key = mask_key
        self.sliced_head = sliced_head  # the head only at the mask_key positions
        self.documents = documents  # the run's document masking (DocumentMasking or None)
        self.log = EvalLog(run_dir)
        self.dataset = dataset
        self.micro_batch, self.seq_len, self.pad_id = micro_batch, seq_len, pad_id
        self.rank, self.world_size = rank, world_size

    def batches(self):
        """This rank's collated validation micro-batches."""
        per_batch = self.micro_batch * self.world_size
        count = min(self.cfg.max_batches, len(self.dataset) // per_batch)
        for b in range(count):
            indices = rank_sample_indices(0, b, self.micro_batch, self.world_size, self.rank)
            yield collate([self.dataset[int(i)] for i in indices], self.pad_id,
                          pad_to=self.seq_len + 1, documents=self.documents)

    def run(self, trainer) -> dict:
        """Evaluate with the engine in eval mode (dropout off); write and return the record."""
        engine = trainer.engine
        with eval_mode(engine), torch.no_grad():
            metrics = lm_metrics(lambda ids, mask, positions=None, **documents:
                                 forward_logits(engine, ids, mask, positions, **documents),
                                 self.batches(), trainer.device, mask_key=self.mask_key,
                                 sliced=self.sliced_head)
        return self.log.write(trainer, metrics)

    def on_train_start(self, trainer) -> None:
        self.log.open(trainer.step)

    def on_step_end(self, trainer) -> None:
        if self.cfg.every and trainer.step % self.cfg.every == 0:
            self.run(trainer)

    def on_train_end(self, trainer) -> None:
        done = trainer.exit_code == 0 and trainer.step > 0  # not after a preemption
        if self.cfg.at_end and done and not (self.cfg.every and trainer.step % self.cfg.every == 0):
            self.run(trainer)
