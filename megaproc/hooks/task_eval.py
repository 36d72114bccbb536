"""Held-out task evaluation written to logs/eval.jsonl (shared by the curriculum and pretraining).

Records hold ``step, heldout_acc, heldout_loss, num_examples, num_dropped, event, timestamp``
(the curriculum adds ``stage`` and ``alpha``).  :class:`TaskEvalHook` runs the evaluation every
``task.eval_every`` steps (and at step 0 of a fresh run) in runs without a curriculum, e.g.
pretraining with the synthetic mixin, so transfer of the task can be followed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from megaproc import distributed as dist_utils
from megaproc.hooks.base import Hook
from megaproc.hooks.logging import JsonlWriter, drop_records_after
from megaproc.eval.task_accuracy import HeldoutEvaluator, evaluate_engine, load_eval_records


def build_heldout_evaluator(trainer) -> HeldoutEvaluator | None:
    """Evaluator over ``curriculum.eval_subset_size`` seeded random examples of
    ``task.splits_dir/eval.jsonl`` (seed ``task.seed``), or None without a splits dir."""
    from megaproc.workflows import curriculum_config, task_config

    task = task_config(trainer.cfg)
    if not task.splits_dir:
        return None
    path = os.path.join(task.splits_dir, "eval.jsonl")
    records = load_eval_records(path, curriculum_config(trainer.cfg).eval_subset_size, seed=task.seed)
    return HeldoutEvaluator(records, trainer.tokenizer, trainer.cfg.train.seq_len + 1,
                            batch_size=task.eval_batch_size, rank=trainer.rank,
                            world_size=trainer.world_size, pad_id=trainer.pad_id)


class HeldoutLog:
    """Runs a held-out evaluation and appends its record to logs/eval.jsonl (rank 0 writes).

    The file is opened for each record: the validation hook shares logs/eval.jsonl and
    rewrites it at start-up (dropping records past the resumed step), which would leave a
    long-lived handle pointing at the replaced file.
    """

    def __init__(self, evaluator: HeldoutEvaluator | None, run_dir: Path):
        self.evaluator = evaluator
        self.path = Path(run_dir) / "logs" / "eval.jsonl"

    def open(self, step: int) -> None:
        """Drop records after ``step`` (they are redone after a resume)."""
        if dist_utils.is_main():
            drop_records_after(self.path, step)

    def evaluate(self, trainer, **fields) -> dict | None:
        """Evaluate (collective), write ``{step, **fields, metrics..., timestamp}``, return it."""
        if self.evaluator is None:
            return None
        metrics = evaluate_engine(self.evaluator, trainer.engine, trainer.device)
        record = {"step": trainer.step, **fields, **metrics, "timestamp": time.time()}
        if dist_utils.is_main():
            writer = JsonlWriter(self.path)
            writer.write(record)
            writer.close()
        for hook in trainer.hooks:
            hook.on_eval(trainer, record)
        return record

class TaskEvalHook(Hook):
    """Held-out task accuracy every ``task.eval_every`` steps (and at the start of a fresh run)."""

    name = "task_eval"

    def __init__(self, log: HeldoutLog, every: int):
        self.log = log
        self.every = int(every)

    def on_train_start(self, trainer) -> None:
        self.log.open(trainer.step)
        if trainer.step == 0:
            self.log.evaluate(trainer, event="start")

    def on_step_end(self, trainer, metrics: dict) -> None:
        if self.every and trainer.step % self.every == 0:
            self.log.evaluate(trainer, event="periodic")
