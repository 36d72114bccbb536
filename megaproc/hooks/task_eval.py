"""Held-out task accuracy written to logs/eval.jsonl (shared by the curriculum and pretraining).

Records hold ``step, heldout_acc, heldout_loss, num_examples, num_dropped, event, timestamp``
(the curriculum adds ``stage`` and ``alpha``).  :class:`TaskEvalHook` runs the evaluation every
``task.eval_every`` steps (and at step 0 of a fresh run) in runs without a curriculum, e.g.
pretraining with the synthetic mixin, so transfer of the task can be followed.
"""

from __future__ import annotations

import os
from pathlib import Path

from megaproc.eval.task_accuracy import (HeldoutEvaluator, heldout_metrics_of_engine,
                                         load_eval_records)
from megaproc.hooks.base import Hook
from megaproc.hooks.records import EvalLog


def build_heldout_evaluator(task_cfg, tokenizer, max_tokens: int, rank: int, world_size: int,
                            pad_id: int) -> HeldoutEvaluator | None:
    """Evaluator over ``task.eval_subset_size`` seeded random examples of
    ``task.splits_dir/eval.jsonl`` (seed ``task.seed``), or None without a splits dir."""
    if not task_cfg.splits_dir:
        return None
    path = os.path.join(task_cfg.splits_dir, "eval.jsonl")
    records = load_eval_records(path, task_cfg.eval_subset_size, seed=task_cfg.seed)
    return HeldoutEvaluator(records, tokenizer, max_tokens, batch_size=task_cfg.eval_batch_size,
                            rank=rank, world_size=world_size, pad_id=pad_id)


class HeldoutLog:
    """Runs a held-out evaluation (collective) and appends its record to logs/eval.jsonl."""

    def __init__(self, evaluator: HeldoutEvaluator | None, run_dir: Path):
        self.evaluator = evaluator
        self.log = EvalLog(run_dir)

    def open(self, step: int) -> None:
        """Drop records after ``step`` (they are redone after a resume)."""
        self.log.open(step)

    def record(self, trainer, **fields) -> dict | None:
        """Evaluate, write ``{step, **fields, metrics..., timestamp}`` and return it."""
        if self.evaluator is None:
            return None
        metrics = heldout_metrics_of_engine(self.evaluator, trainer.engine, trainer.device)
        return self.log.write(trainer, metrics, **fields)


class TaskEvalHook(Hook):
    """Held-out task accuracy every ``task.eval_every`` steps (and at the start of a fresh run)."""

    name = "task_eval"
    priority = 30

    def __init__(self, heldout: HeldoutLog, every: int):
        self.heldout = heldout
        self.every = int(every)

    def on_train_start(self, trainer) -> None:
        self.heldout.open(trainer.step)
        if trainer.step == 0:
            self.heldout.record(trainer, event="start")

    def on_step_end(self, trainer) -> None:
        if self.every and trainer.step % self.every == 0:
            self.heldout.record(trainer, event="periodic")
