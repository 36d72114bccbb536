"""Held-out task evaluation: greedy-answer accuracy and answer loss on split examples.

Used by the curriculum hook (``eval_subset_size`` seeded random ``eval.jsonl`` examples, at the
start and after every stage advance), by the periodic task eval of pretraining runs and by
``python -m megaproc.evaluate`` (``test.jsonl``).

* ``heldout_acc``: fraction of examples whose greedy answer equals one of ``output_texts``
  (every valid answer is checked with one teacher-forced row; see
  :mod:`megaproc.eval.answer_correctness` for why that equals greedy decoding).
* ``heldout_loss``: mean cross entropy per answer token of ``output_texts[0]`` (token-weighted
  over all examples).
* ``num_examples``: examples evaluated; ``num_dropped``: examples left out because the prompt
  plus an answer is longer than the model's context (``max_tokens``).

Distributed: rank ``r`` evaluates examples ``r, r + world, ...``; every rank runs the same
number of forwards (padding with a dummy row that counts for nothing), so ZeRO-3's gathered
forwards stay in lock step; the sums are all-reduced.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from megaproc import distributed as dist_utils
from megaproc.data.prompt_answer import PromptAnswerEncoder, collate_prompt_answer
from megaproc.eval.answer_correctness import teacher_forced_correct, word_continuation_table
from megaproc.eval.rows import json_rows
from megaproc.loss import per_row_sums


def eval_subset(records: list[dict], size: int, seed: int) -> list[dict]:
    """``size`` records drawn without replacement by a seeded permutation (all if size >= len)."""
    if size <= 0 or size >= len(records):
        return list(records)
    order = np.random.default_rng(seed).permutation(len(records))[:size]
    return [records[int(i)] for i in order]


def load_eval_records(path: str, max_examples: int = 0, seed: int | None = None) -> list[dict]:
    """Records of a split file, optionally a seeded random subset (``seed``) or the first N."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split file not found: {path}")
    records = []
    with open(path, encoding="utf-8") as handle:
        for _, where, record in json_rows(handle, path):
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or \
                    not isinstance(record.get("output_texts"), list) or not record["output_texts"]:
                raise ValueError(f"{where}: expected an object with 'prompt' and a "
                                 "non-empty 'output_texts' list")
            records.append(record)
    if max_examples and seed is not None:
        return eval_subset(records, max_examples, seed)
    return records[:max_examples] if max_examples else records


class HeldoutEvaluator:
    """Accuracy and answer loss of a model on a fixed list of split records."""

    def __init__(self, records: list[dict], tokenizer, max_tokens: int, batch_size: int = 16,
                 rank: int = 0, world_size: int = 1, pad_id: int | None = None):
        self.encoder = PromptAnswerEncoder(tokenizer)
        self.continues_word = word_continuation_table(tokenizer)
        self.last_correct = None   # per local example, from the latest run()
        self.batch_size = max(1, int(batch_size))
        self.pad_id = int(pad_id if pad_id is not None else (tokenizer.pad_token_id or 0))
        self.num_dropped = 0
        self.rows: list[tuple[int, bool, dict]] = []       # (local example id, primary?, sample)
        self.num_local_examples = 0
        for record in records[rank::world_size]:
            answers = [a for a in record["output_texts"] if isinstance(a, str) and a]
            samples = self.encoder.encode_pairs([(record["prompt"], a) for a in answers])
            if not samples or any(len(s["tokens"]) > max_tokens for s in samples):
                self.num_dropped += 1
                continue
            for k, sample in enumerate(samples):
                self.rows.append((self.num_local_examples, k == 0, sample))
            self.num_local_examples += 1

    def _dummy(self) -> dict:
        tokens = np.full(2, self.pad_id, dtype=np.int64)
        mask = np.zeros(2, dtype=bool)
        return {"tokens": tokens, "answer_mask": mask, "word_mask": mask, "boundary_mask": mask}

    @torch.no_grad()
    def run(self, logits_fn, device: torch.device | str = "cpu") -> dict:
        """Evaluate; ``logits_fn(input_ids, attention_mask) -> logits`` (collective if distributed)."""
        local_batches = math.ceil(len(self.rows) / self.batch_size)
        counts = torch.tensor([local_batches], dtype=torch.float64, device=device)
        if dist_utils.world_size() > 1:
            torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.MAX)
        num_batches = int(counts.item())
        correct = np.zeros(self.num_local_examples, dtype=bool)
        loss_sum = loss_tokens = 0.0
        for b in range(num_batches):
            chunk = self.rows[b * self.batch_size:(b + 1) * self.batch_size]
            samples = [sample for _, _, sample in chunk] or [self._dummy()]
            batch = collate_prompt_answer(samples, self.pad_id)
            labels = batch["labels"].to(device)
            logits = logits_fn(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            row_correct = teacher_forced_correct(logits, labels, batch["word_mask"],
                                                 batch["boundary_mask"], self.continues_word)
            row_correct = row_correct.cpu().numpy()
            sums, tokens = per_row_sums(logits, labels, batch["word_mask"])
            for i, (example, primary, _) in enumerate(chunk):
                correct[example] |= bool(row_correct[i])
                if primary:
                    loss_sum += float(sums[i])
                    loss_tokens += float(tokens[i])
        self.last_correct = correct
        totals = torch.tensor([float(correct.sum()), float(self.num_local_examples), loss_sum,
                               loss_tokens, float(self.num_dropped)], dtype=torch.float64,
                              device=device)
        dist_utils.all_reduce_sum(totals)
        totals = totals.cpu().tolist()
        examples = int(totals[1])
        return {"heldout_acc": totals[0] / examples if examples else None,
                "heldout_loss": totals[2] / totals[3] if totals[3] else None,
                "num_examples": examples, "num_dropped": int(totals[4])}


def engine_logits_fn(engine):
    """``logits_fn`` running a DeepSpeed engine (or any HF model) forward."""
    def logits_fn(input_ids, attention_mask):
        return engine(input_ids=input_ids, attention_mask=attention_mask).logits
    return logits_fn


def heldout_metrics_of_engine(evaluator: HeldoutEvaluator, engine, device) -> dict:
    """Run ``evaluator`` with ``engine`` in eval mode (dropout off), then back to train mode."""
    was_training = engine.training
    engine.eval()
    try:
        return evaluator.run(engine_logits_fn(engine), device)
    finally:
        if was_training:
            engine.train()
