"""The one hook that saves checkpoints: every ``checkpoint.save_every`` steps, when a hook asks
(``trainer.request_checkpoint()``, e.g. preemption), and a final one when training ends."""

from __future__ import annotations

from megaproc.hooks.base import Hook


class CheckpointHook(Hook):
    """Asks the trainer to save (the :class:`~megaproc.checkpoint.Checkpointer` writes)."""

    name = "checkpointing"
    priority = 70

    def __init__(self, ckpt_cfg):
        self.cfg = ckpt_cfg

    def on_step_complete(self, trainer) -> None:
        periodic = self.cfg.save_every and trainer.step % self.cfg.save_every == 0
        if periodic or trainer.checkpoint_requested:
            trainer.save_checkpoint()

    def on_train_end(self, trainer) -> None:
        if self.cfg.save_final and trainer.step > 0:
            trainer.save_checkpoint()  # a no-op when this step is already saved
