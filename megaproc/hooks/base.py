"""Hook interface for the train loop, and the ordered set of a run's hooks.

A hook adds behaviour at a small fixed set of events and owns its state (OLMo-core's callbacks).
Every hook has a ``name`` (unique in a run; its ``state_dict`` lands in checkpoints under it) and a
``priority``: hooks run in ascending priority at every event, and :meth:`Hooks.close` runs them in
reverse.  After each optimizer step the trainer fires, in this order:

1. ``on_step_end(trainer)``: hooks do their work for the step (curriculum check, evaluations,
   the preemption check) and record metrics with ``trainer.record_metric(name, value)``;
2. ``on_log(trainer, metrics)`` on log steps: the step's metrics (the trainer's own plus every
   recorded one) go to the loggers, so no hook depends on another's position in a shared dict;
3. ``on_step_complete(trainer)``: the point where this step's checkpoint is taken (periodic, or
   asked for with ``trainer.request_checkpoint()``, e.g. by preemption) - after its log record.

Priorities in use (leave gaps for new hooks):

====  =====================================================================
 20   curriculum (records ``curr_acc, stage, alpha``; advances the stage; held-out eval)
 40   evaluation (every evaluator: held-out task accuracy, validation, HellaSwag, EWoK,
      DeepMind Mathematics; each record calls ``on_eval`` of every hook)
 45   classify_eval (whole-split classification metrics at epoch points)
 60   logging (train.jsonl, progress bar, TensorBoard, wandb)
 65   preemption (signal -> ask for a checkpoint -> stop with exit 75)
 70   checkpointing (the one hook that saves: periodic, requested and final)
====  =====================================================================

A hook ends training through the one stop channel, ``trainer.request_stop(reason, exit_code)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Iterable

from megaproc.console_log import get_logger

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from megaproc.trainer import Trainer

log = get_logger(__name__)


class Hook:
    """Base class: every event is a no-op."""

    name: ClassVar[str] = "hook"
    priority: ClassVar[int] = 100

    def on_train_start(self, trainer: "Trainer") -> None:
        """Called once after the engine is built and any checkpoint is loaded."""

    def on_batch(self, trainer: "Trainer", batch: dict) -> dict:
        """Called on each micro-batch before forward; may return a modified batch."""
        return batch

    def on_loss(self, trainer: "Trainer", batch: dict, logits: "torch.Tensor",
                per_token_loss: "torch.Tensor", loss: "torch.Tensor") -> "torch.Tensor":
        """Called after forward with per-token losses; may return a replacement loss."""
        return loss

    def on_step_end(self, trainer: "Trainer") -> None:
        """Called after each optimizer step; record metrics with ``trainer.record_metric``."""

    def on_log(self, trainer: "Trainer", metrics: dict) -> None:
        """Called on log steps with the step's metrics (read-only for hooks)."""

    def on_step_complete(self, trainer: "Trainer") -> None:
        """Called last for each step, after its log record (checkpoints are taken here)."""

    def on_eval(self, trainer: "Trainer", metrics: dict) -> None:
        """Called after an evaluation with its record."""

    def on_save(self, trainer: "Trainer", ckpt_dir: str) -> None:
        """Called after a checkpoint is written (the state itself comes from state_dict)."""

    def on_load(self, trainer: "Trainer", ckpt_dir: str) -> None:
        """Called after a checkpoint is loaded."""

    def on_train_end(self, trainer: "Trainer") -> None:
        """Called once when the loop ends normally or by a stop request (final save/eval)."""

    def on_error(self, trainer: "Trainer", error: BaseException) -> None:
        """Called when the loop raised; ``close`` follows."""

    def close(self) -> None:
        """Release files, progress bars, threads; called after success and failure alike."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state restored on resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class Hooks:
    """A run's hooks, keyed by name and ordered by priority (ties keep insertion order)."""

    def __init__(self, hooks: Iterable[Hook] = ()):
        self._hooks: list[Hook] = []
        for hook in hooks:
            self.add(hook)

    def add(self, hook: Hook) -> None:
        """Insert ``hook`` at its priority; a second hook of the same name is refused."""
        if any(h.name == hook.name for h in self._hooks):
            raise ValueError(f"duplicate hook name {hook.name!r}")
        self._hooks.append(hook)
        self._hooks.sort(key=lambda h: h.priority)  # stable: equal priorities keep their order

    def __iter__(self):
        return iter(list(self._hooks))

    def __len__(self) -> int:
        return len(self._hooks)

    def __getitem__(self, name: str) -> Hook:
        for hook in self._hooks:
            if hook.name == name:
                return hook
        raise KeyError(name)

    def describe(self) -> str:
        """``name(priority) -> ...`` in running order."""
        return " -> ".join(f"{h.name}({h.priority})" for h in self._hooks)

    # Events ---------------------------------------------------------------------------
    def _each(self, event: str, *args) -> None:
        for hook in self._hooks:
            getattr(hook, event)(*args)

    def on_train_start(self, trainer) -> None:
        """Dispatch ``on_train_start``."""
        self._each("on_train_start", trainer)

    def on_batch(self, trainer, batch: dict) -> dict:
        """Chain ``on_batch`` (each hook sees the previous one's batch)."""
        for hook in self._hooks:
            batch = hook.on_batch(trainer, batch)
        return batch

    def on_loss(self, trainer, batch, logits, per_token_loss, loss):
        """Chain ``on_loss`` (each hook sees the previous one's loss)."""
        for hook in self._hooks:
            loss = hook.on_loss(trainer, batch, logits, per_token_loss, loss)
        return loss

    def on_step_end(self, trainer) -> None:
        """Dispatch ``on_step_end``."""
        self._each("on_step_end", trainer)

    def on_log(self, trainer, metrics: dict) -> None:
        """Dispatch ``on_log``."""
        self._each("on_log", trainer, metrics)

    def on_step_complete(self, trainer) -> None:
        """Dispatch ``on_step_complete``."""
        self._each("on_step_complete", trainer)

    def on_eval(self, trainer, metrics: dict) -> None:
        """Dispatch ``on_eval``."""
        self._each("on_eval", trainer, metrics)

    def on_save(self, trainer, ckpt_dir: str) -> None:
        """Dispatch ``on_save``."""
        self._each("on_save", trainer, ckpt_dir)

    def on_load(self, trainer, ckpt_dir: str) -> None:
        """Dispatch ``on_load``."""
        self._each("on_load", trainer, ckpt_dir)

    def on_train_end(self, trainer) -> None:
        """Dispatch ``on_train_end``."""
        self._each("on_train_end", trainer)

    def on_error(self, trainer, error: BaseException) -> None:
        """Dispatch ``on_error``; a hook failing here must not hide the original error."""
        for hook in self._hooks:
            try:
                hook.on_error(trainer, error)
            except Exception as exc:  # noqa: BLE001 - keep going, report
                log.warning(f"hook {hook.name} failed in on_error: {exc}")

    def close(self) -> None:
        """``close`` every hook in reverse order, even if some fail."""
        for hook in reversed(self._hooks):
            try:
                hook.close()
            except Exception as exc:  # noqa: BLE001
                log.warning(f"hook {hook.name} failed to close: {exc}")

    def state_dict(self) -> dict:
        """``{name: hook.state_dict()}``."""
        return {hook.name: hook.state_dict() for hook in self._hooks}

    def load_state_dict(self, states: dict) -> None:
        """Restore every hook that has a saved state."""
        for hook in self._hooks:
            if hook.name in states:
                hook.load_state_dict(states[hook.name])
