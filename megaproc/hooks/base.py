"""Hook interface for the train loop.

A hook adds behaviour at a fixed set of events and owns its state.  The trainer calls the
events in order for every hook; ``state_dict``/``load_state_dict`` land in checkpoints under
the hook's ``name``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from megaproc.trainer import Trainer


class Hook:
    """Base class: every event is a no-op."""

    name = "hook"

    def on_train_start(self, trainer: "Trainer") -> None:
        """Called once after the engine is built and any checkpoint is loaded."""

    def on_batch(self, trainer: "Trainer", batch: dict) -> dict:
        """Called on each micro-batch before forward; may return a modified batch."""
        return batch

    def on_loss(self, trainer: "Trainer", batch: dict, logits: "torch.Tensor",
                per_token_loss: "torch.Tensor", loss: "torch.Tensor") -> "torch.Tensor":
        """Called after forward with per-token losses; may return a replacement loss."""
        return loss

    def on_step_end(self, trainer: "Trainer", metrics: dict) -> None:
        """Called after each optimizer step; may add entries to ``metrics``."""

    def on_eval(self, trainer: "Trainer", metrics: dict) -> None:
        """Called after a validation pass with its metrics."""

    def on_save(self, trainer: "Trainer", ckpt_dir: str) -> None:
        """Called while a checkpoint is written (the state itself comes from state_dict)."""

    def on_load(self, trainer: "Trainer", ckpt_dir: str) -> None:
        """Called after a checkpoint is loaded."""

    def on_train_end(self, trainer: "Trainer") -> None:
        """Called once when the loop ends (normally or by preemption)."""

    def should_stop(self) -> bool:
        """True to end training after the current step."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state restored on resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
