"""Learning-rate schedules, recomputed from the current config at every step.

The scheduler's checkpointed state is the step count and nothing else: DeepSpeed saves
``lr_scheduler.state_dict()`` with the engine, and torch's ``LambdaLR`` would pickle the
schedule's parameters there (the ``__dict__`` of a callable object), so a resume with a new
``train.max_steps``, ``schedule.*`` or ``optim.lr`` would silently keep the old ones.  Here a
resume continues the *current* schedule from the saved step: extending ``max_steps`` continues
the cosine to the new end, a new LR or warmup applies from the resume step.
"""

from __future__ import annotations

import math


def lr_multiplier(step: int, kind: str, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier for the optimizer step after ``step`` completed steps.

    - ``constant``: 1.
    - ``warmup_constant``: linear warmup from 1/warmup to 1 over ``warmup_steps``, then 1.
    - ``cosine``: the same warmup, then cosine decay from 1 to ``min_lr_ratio`` at ``max_steps``.
    - ``linear``: the same warmup, then linear decay from 1 to ``min_lr_ratio`` at ``max_steps``.
    """
    if kind == "constant":
        return 1.0
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "warmup_constant":
        return 1.0
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if kind == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)
    raise ValueError(f"unknown schedule kind {kind!r}")


class ConfigSchedule:
    """LR scheduler for DeepSpeed whose LR is ``base_lr * lr_multiplier(step, ...)``.

    DeepSpeed calls :meth:`step` after every optimizer step and (de)serialises
    :meth:`state_dict`; the schedule parameters always come from the constructor, i.e. from the
    config of the running job.
    """

    def __init__(self, optimizer, base_lr: float, kind: str, warmup_steps: int, max_steps: int,
                 min_lr_ratio: float):
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.kind, self.warmup_steps = kind, int(warmup_steps)
        self.max_steps, self.min_lr_ratio = int(max_steps), float(min_lr_ratio)
        self.last_step = 0
        self.apply()

    @classmethod
    def from_config(cls, optimizer, cfg) -> "ConfigSchedule":
        """The schedule of a run's ``optim``/``schedule``/``train`` sections."""
        s = cfg.schedule
        return cls(optimizer, cfg.optim.lr, s.kind, s.warmup_steps, cfg.train.max_steps,
                   s.min_lr_ratio)

    def lr_at(self, step: int) -> float:
        """The LR of the optimizer step after ``step`` completed steps."""
        return self.base_lr * lr_multiplier(step, self.kind, self.warmup_steps, self.max_steps,
                                            self.min_lr_ratio)

    def apply(self) -> None:
        """Set every parameter group's LR for the current step."""
        lr = self.lr_at(self.last_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        """Advance one optimizer step."""
        self.last_step += 1
        self.apply()

    def get_last_lr(self) -> list[float]:
        """Current LR of every parameter group (torch scheduler interface)."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Only the step: the parameters come from the running config."""
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        """Restore the step and re-apply the (current) schedule."""
        self.last_step = int(state.get("last_step", state.get("last_epoch", 0)))
        self.apply()
