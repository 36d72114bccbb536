"""Train and test loss/accuracy of a sequence-classification run at each evaluation point.

Evaluation points: the start of a fresh run (epoch 0), every ``classify.eval_every_epochs``
epochs, and the end of training.  Each point evaluates the whole train and test splits
(collective: every rank scores its share, sums are all-reduced) and writes, besides the
``logs/eval.jsonl`` record (``epoch, train_loss, train_acc, test_loss, test_acc``), the seed's
per-run files (rank 0):

* ``metrics.json`` — arrays per evaluation point: ``{"step": [...], "epoch": [...],
  "train_loss": [...], "train_acc": [...], "test_loss": [...], "test_acc": [...]}``;
* ``logs.log`` — one line per evaluation point;
* ``config.json`` — the resolved config, written at the start unless the run's launcher
  (``python -m megaproc.classify``, ``python -m megaproc.sweep``) already wrote its own.

Both derived files are rebuilt from ``logs/eval.jsonl`` at every point, so a resume (which
drops records past the resumed step) keeps them consistent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from megaproc import distributed as dist_utils
from megaproc.console_log import get_logger
from megaproc.hooks.base import Hook
from megaproc.hooks.records import EvalLog

log = get_logger(__name__)
METRIC_KEYS = ("step", "epoch", "train_loss", "train_acc", "test_loss", "test_acc")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
        engine.eval()
        try:
            metrics = self.source.evaluate_all(
                lambda ids, mask: engine(input_ids=ids, attention_mask=mask).logits,
                self.batch_size, trainer.device)
        finally:
            engine.train()
        epoch = trainer.step / self.steps_per_epoch
        record = self.log.write(trainer, metrics, epoch=epoch, event="classify")
        self.last_step = trainer.step
        if dist_utils.is_main():
            self._write_files()
            parts = ", ".join(f"{k} {metrics[k]:.4f}" for k in METRIC_KEYS[2:] if k in metrics)
            log.info(f"classification eval at step {trainer.step} (epoch {epoch:.2f}): {parts}")
        return record

    def _records(self) -> list[dict]:
        if not self.log.path.is_file():
            return []
        out = []
        for line in self.log.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("event") == "classify":
                out.append(record)
        return out

    def _write_files(self) -> None:
        records = self._records()
        arrays = {key: [r.get(key) for r in records] for key in METRIC_KEYS}
        _write_atomic(self.run_dir / "metrics.json", json.dumps(arrays, indent=1))
        lines = [" ".join(f"{k}={r[k]:.6g}" if isinstance(r.get(k), float) else f"{k}={r.get(k)}"
                          for k in METRIC_KEYS if k in r) for r in records]
        _write_atomic(self.run_dir / "logs.log", "".join(line + "\n" for line in lines))

    def on_train_start(self, trainer) -> None:
        self.log.open(trainer.step)
        if dist_utils.is_main():
            if not (self.run_dir / "config.json").is_file():
                _write_atomic(self.run_dir / "config.json", json.dumps(self.config_dict, indent=2))
            self._write_files()
        if trainer.step == 0:
            self.run(trainer)

    def on_step_end(self, trainer, metrics: dict) -> None:
        if trainer.step % self.every == 0:
            self.run(trainer)

    def on_train_end(self, trainer) -> None:
        if trainer.exit_code == 0 and trainer.step > 0 and self.last_step != trainer.step:
            self.run(trainer)
