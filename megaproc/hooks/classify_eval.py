"""Train and test loss/accuracy of a sequence-classification run at each evaluation point.

Evaluation points: the start of a fresh run (epoch 0), every ``classify.eval_every_epochs``
epochs, and the end of training.  Each point evaluates the whole train and test splits
(collective: every rank scores its share, sums are all-reduced) and writes the
``logs/eval.jsonl`` record (``epoch, train_loss, train_acc, test_loss, test_acc``); the seed's
per-run files (``metrics.json``, ``logs.log``, ``config.json``) are rebuilt from those records
by :mod:`megaproc.seed_compat.outputs`, so a resume (which drops records past the resumed step)
keeps them consistent.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megaproc import distributed as dist_utils
from megaproc.console_log import get_logger
from megaproc.eval.forward import eval_mode
from megaproc.hooks.base import Hook
from megaproc.hooks.records import EvalLog
from megaproc.seed_compat.outputs import (CLASSIFY_EVENT, CLASSIFY_METRIC_KEYS,
                                          write_classify_files, write_config_json)

log = get_logger(__name__)


class ClassifyEvalHook(Hook):
    """Whole-split evaluation of the classifier at epoch boundaries."""

    name = "classify_eval"
    priority = 45

    def __init__(self, run_dir: Path, source, steps_per_epoch: int, eval_every_epochs: int,
                 batch_size: int, config_dict: dict):
        self.run_dir = Path(run_dir)
        self.log = EvalLog(run_dir)
        self.source = source
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.every = self.steps_per_epoch * max(1, int(eval_every_epochs))
        self.batch_size = int(batch_size)
        self.config_dict = config_dict
        self.last_step = -1

    @torch.no_grad()
    def run(self, trainer) -> dict:
        """Evaluate both splits (collective) and write the record and the per-run files."""
        engine = trainer.engine
        with eval_mode(engine), torch.no_grad():
            metrics = self.source.evaluate_all(
                lambda ids, mask: engine(input_ids=ids, attention_mask=mask).logits,
                self.batch_size, trainer.device)
        epoch = trainer.step / self.steps_per_epoch
        record = self.log.write(trainer, metrics, epoch=epoch, event=CLASSIFY_EVENT)
        self.last_step = trainer.step
        if dist_utils.is_main():
            self._write_files()
            parts = ", ".join(f"{k} {metrics[k]:.4f}" for k in CLASSIFY_METRIC_KEYS[2:]
                              if k in metrics)
            log.info(f"classification eval at step {trainer.step} (epoch {epoch:.2f}): {parts}")
        return record

    def _write_files(self) -> None:
        write_classify_files(self.run_dir, self.log.path, getattr(self.source, "data_notes", None))

    def on_train_start(self, trainer) -> None:
        self.log.open(trainer.step)
        if dist_utils.is_main():
            write_config_json(self.run_dir, self.config_dict)
            self._write_files()
        if trainer.step == 0:
            self.run(trainer)

    def on_step_end(self, trainer) -> None:
        if trainer.step % self.every == 0:
            self.run(trainer)

    def on_train_end(self, trainer) -> None:
        if trainer.exit_code == 0 and trainer.step > 0 and self.last_step != trainer.step:
            self.run(trainer)
