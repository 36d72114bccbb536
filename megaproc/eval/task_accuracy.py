"""Held-out task evaluation: greedy-answer accuracy and answer loss on split examples.

:class:`SplitEvaluator` is what ``python -m megaproc.evaluate --split`` runs (e.g. on
``test.jsonl``) and what training runs (:mod:`megaproc.hooks.evaluation`): the curriculum on
``task.eval_subset_size`` seeded random ``eval.jsonl`` examples at the start and after every
stage advance, and the periodic held-out evaluation (``task.eval_every``) of other runs.

* ``heldout_acc``: fraction of examples whose greedy answer equals one of ``output_texts``
  (every valid answer is checked with one teacher-forced row; see
  :mod:`megaproc.eval.answer_correctness` for why that equals greedy decoding).
* ``heldout_loss``: mean cross entropy per answer token of ``output_texts[0]`` (token-weighted
  over all examples).
* ``num_examples``: examples evaluated; ``num_dropped``: examples left out because the prompt
  plus an answer is longer than the model's context (``max_tokens``).

Distributed: every rank encodes all examples and plans the same batches (rows in example
order); :func:`megaproc.eval.sharding.run_in_lockstep` gives rank ``r`` batches ``r, r + W,
...``, pads every rank to the same number of forwards (a dummy row that counts for nothing, as
ZeRO-3's gathered forwards need) and gathers the per-row results, which are combined in example
order - so W ranks give exactly the numbers of one.

:class:`SplitEvaluator` (name ``split``, ``python -m megaproc.evaluate --split``) adds
``by_lookahead``: ``{L: {heldout_acc, num_examples}}`` over the examples whose record has a
``lookahead`` (``data_tools.build_splits`` writes it), and one row per evaluated example.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from megaproc.data.prompt_answer import PromptAnswerEncoder, collate_prompt_answer
from megaproc.eval.answer_correctness import teacher_forced_correct, word_continuation_table
from megaproc.eval.evaluator import BatchSize, EvalContext, EvalResult, rows_per_batch
from megaproc.eval.rows import EvalInputError, json_rows
from megaproc.eval.sharding import run_in_lockstep
from megaproc.loss import per_row_sums
from megaproc.tokenizer import pad_id as tokenizer_pad_id


def eval_subset(records: list[dict], size: int, seed: int) -> list[dict]:
    """``size`` records drawn without replacement by a seeded permutation (all if size >= len)."""
    if size <= 0 or size >= len(records):
        return list(records)
    order = np.random.default_rng(seed).permutation(len(records))[:size]
    return [records[int(i)] for i in order]


def load_eval_records(path: str, max_examples: int = 0, seed: int | None = None) -> list[dict]:
    """Records of a split file, optionally a seeded random subset (``seed``) or the first N."""
    if not os.path.isfile(path):
        raise EvalInputError(f"split file not found: {path}")
    records = []
    with open(path, encoding="utf-8") as handle:
        for _, where, record in json_rows(handle, path):
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or \
                    not isinstance(record.get("output_texts"), list) or not record["output_texts"]:
                raise EvalInputError(f"{where}: expected an object with 'prompt' and a "
                                 "non-empty 'output_texts' list")
            records.append(record)
    if max_examples and seed is not None:
        return eval_subset(records, max_examples, seed)
    return records[:max_examples] if max_examples else records


class HeldoutEvaluator:
    """Accuracy and answer loss of a model on a fixed list of split records.

    ``rank``/``world_size`` say how :meth:`run` shares the batches (every rank must pass the
    same records); after a run, ``last_correct`` [examples] and ``last_loss`` [examples, 2]
    (answer cross-entropy sum and tokens of ``output_texts[0]``) hold the per-example results
    and ``kept`` the record index of each evaluated example.
    """

    def __init__(self, records: list[dict], tokenizer, max_tokens: int,
                 batch_size: BatchSize = 16, rank: int = 0, world_size: int = 1,
                 pad_id: int | None = None):
        self.encoder = PromptAnswerEncoder(tokenizer)
        self.continues_word = word_continuation_table(tokenizer)
        self.last_correct = None
        self.last_loss = None
        self.batch_size = batch_size
        self.rank, self.world_size = int(rank), int(world_size)
        self.pad_id = int(pad_id if pad_id is not None else tokenizer_pad_id(tokenizer))
        self.num_dropped = 0
        self.kept: list[int] = []
        self.rows: list[tuple[int, bool, dict]] = []       # (example id, primary?, sample)
        for index, record in enumerate(records):
            answers = [a for a in record["output_texts"] if isinstance(a, str) and a]
            samples = self.encoder.encode_pairs([(record["prompt"], a) for a in answers])
            if not samples or any(len(s["tokens"]) > max_tokens for s in samples):
                self.num_dropped += 1
                continue
            for k, sample in enumerate(samples):
                self.rows.append((len(self.kept), k == 0, sample))
            self.kept.append(index)

    def _dummy(self) -> dict:
        tokens = np.full(2, self.pad_id, dtype=np.int64)
        mask = np.zeros(2, dtype=bool)
        return {"tokens": tokens, "answer_mask": mask, "word_mask": mask, "boundary_mask": mask}

    def _run_batch(self, logits_fn, chunk, device) -> list[tuple]:
        samples = [sample for _, _, sample in chunk] if chunk else [self._dummy()]
        batch = collate_prompt_answer(samples, self.pad_id)
        labels = batch["labels"].to(device)
        logits = logits_fn(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        if not chunk:
            return []
        row_correct = teacher_forced_correct(logits, labels, batch["word_mask"],
                                             batch["boundary_mask"], self.continues_word)
        sums, tokens = per_row_sums(logits, labels, batch["word_mask"])
        return [(example, primary, bool(ok), float(total), float(count))
                for (example, primary, _), ok, total, count in
                zip(chunk, row_correct.cpu().tolist(), sums.cpu().tolist(), tokens.cpu().tolist())]

    @torch.no_grad()
    def run(self, logits_fn, device: torch.device | str = "cpu", progress: bool = False) -> dict:
        """Evaluate; ``logits_fn(input_ids, attention_mask) -> logits`` (collective when
        ``world_size > 1``).  Returns ``heldout_acc``, ``heldout_loss``, ``num_examples`` and
        ``num_dropped``."""
        longest = max((len(sample["tokens"]) for _, _, sample in self.rows), default=2)
        size = rows_per_batch(self.batch_size, longest)
        batches = [self.rows[start:start + size] for start in range(0, len(self.rows), size)]
        results = run_in_lockstep(batches, lambda chunk: self._run_batch(logits_fn, chunk, device),
                                  self.rank, self.world_size, progress, "held-out")
        correct = np.zeros(len(self.kept), dtype=bool)
        loss = np.zeros((len(self.kept), 2), dtype=np.float64)
        for batch in results:
            for example, primary, ok, total, count in batch:
                correct[example] |= ok
                if primary:
                    loss[example] = (total, count)
        self.last_correct, self.last_loss = correct, loss
        examples = len(self.kept)
        tokens = float(loss[:, 1].sum())
        return {"heldout_acc": float(correct.sum()) / examples if examples else None,
                "heldout_loss": float(loss[:, 0].sum()) / tokens if tokens else None,
                "num_examples": examples, "num_dropped": self.num_dropped}


def by_lookahead(rows: list[dict]) -> dict:
    """``{L: {"heldout_acc", "num_examples"}}`` of per-example rows that name a lookahead
    (keys in ascending lookahead order, as strings: they are JSON object keys)."""
    groups: dict[int, list[bool]] = {}
    for row in rows:
        if isinstance(row.get("lookahead"), int):
            groups.setdefault(row["lookahead"], []).append(bool(row["correct"]))
    return {str(look): {"heldout_acc": sum(flags) / len(flags), "num_examples": len(flags)}
            for look, flags in sorted(groups.items())}


class SplitEvaluator:
    """Held-out accuracy on a ``data_tools.build_splits`` file, with ``by_lookahead``."""

    name = "split"

    def __init__(self, records: list[dict], path: str | None = None, max_tokens: int = 0):
        self.records = list(records)
        self.path = path
        self.max_tokens = int(max_tokens)
        self._encoded: dict = {}  # the encoded examples, kept for the next run (training)

    @classmethod
    def from_file(cls, path: str | Path, max_examples: int = 0,
                  max_tokens: int = 0) -> "SplitEvaluator":
        """Read and check the file now; ``max_tokens`` (0: the model's context) is the length
        limit of prompt plus answer."""
        records = load_eval_records(str(path), max_examples)
        if not records:
            raise EvalInputError(f"--split {path}: no examples")
        return cls(records, str(path), max_tokens)

    def run(self, ctx: EvalContext) -> EvalResult:
        """Evaluate every example (collective over ``ctx``'s ranks)."""
        limit = min(self.max_tokens or ctx.max_length, ctx.max_length)
        key = (id(ctx.tokenizer), limit)
        if key not in self._encoded:
            self._encoded = {key: HeldoutEvaluator(self.records, ctx.tokenizer, limit)}
        evaluator = self._encoded[key]
        evaluator.batch_size, evaluator.rank, evaluator.world_size = \
            ctx.batch_size, ctx.rank, ctx.world_size
        metrics = evaluator.run(ctx.forward, ctx.device, ctx.progress)
        rows = []
        for example, index in enumerate(evaluator.kept):
            total, count = evaluator.last_loss[example]
            rows.append({"task": "split", "example": index,
                         "lookahead": self.records[index].get("lookahead"),
                         "correct": bool(evaluator.last_correct[example]),
                         "answer_loss": total / count if count else None,
                         "answer_tokens": int(count)})
        metrics["by_lookahead"] = by_lookahead(rows)
        return EvalResult(metrics, rows, {"path": self.path} if self.path else {})
