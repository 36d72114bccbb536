"""Hooks that act every N steps: validation and checkpointing."""

from __future__ import annotations

import time
from pathlib import Path

from megaproc import distributed as dist_utils
from megaproc.hooks.base import Hook
from megaproc.hooks.logging import JsonlWriter, drop_records_after


class ValidationHook(Hook):
    """Validation loss every ``eval.every`` steps (and at the end), written to logs/eval.jsonl."""

    name = "validation"

    def __init__(self, eval_cfg, run_dir: Path):
        self.cfg = eval_cfg
        self.path = Path(run_dir) / "logs" / "eval.jsonl"
        self.writer = None

    def on_train_start(self, trainer) -> None:
        if dist_utils.is_main():
            drop_records_after(self.path, trainer.step)
            self.writer = JsonlWriter(self.path)

    def _run(self, trainer) -> None:
        metrics = trainer.evaluate()
        if metrics is None:
            return
        metrics = dict(metrics, step=trainer.step, timestamp=time.time())
        if self.writer is not None:
            self.writer.write(metrics)
        for hook in trainer.hooks:
            hook.on_eval(trainer, metrics)

    def on_step_end(self, trainer, metrics: dict) -> None:
        if self.cfg.every and trainer.step % self.cfg.every == 0:
            self._run(trainer)

    def on_train_end(self, trainer) -> None:
        done = trainer.exit_code == 0 and trainer.step > 0  # not after a preemption
        if self.cfg.at_end and done and not (self.cfg.every and trainer.step % self.cfg.every == 0):
            self._run(trainer)
        if self.writer is not None:
            self.writer.close()


class CheckpointHook(Hook):
    """Saves every ``checkpoint.save_every`` steps and, when enabled, at the end."""

    name = "checkpointing"

    def __init__(self, ckpt_cfg):
        self.cfg = ckpt_cfg

    def on_step_end(self, trainer, metrics: dict) -> None:
        if self.cfg.save_every and trainer.step % self.cfg.save_every == 0:
            trainer.save_checkpoint()

    def on_train_end(self, trainer) -> None:
        if self.cfg.save_final and trainer.step > 0 and trainer.last_saved_step != trainer.step:
            trainer.save_checkpoint()
