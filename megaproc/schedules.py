"""Learning-rate schedules as multipliers of the base LR, indexed by optimizer step."""

from __future__ import annotations

import math


def lr_multiplier(step: int, kind: str, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier after ``step`` optimizer steps.

    - ``constant``: 1.
    - ``warmup_constant``: linear warmup from 1/warmup to 1 over ``warmup_steps``, then 1.
    - ``cosine``: the same warmup, then cosine decay from 1 to ``min_lr_ratio`` at ``max_steps``.
    """
    if kind == "constant":
        return 1.0
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "warmup_constant":
        return 1.0
    if kind != "cosine":
        raise ValueError(f"unknown schedule kind {kind!r}")
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ScheduleMultiplier:
    """Picklable ``LambdaLR`` function for one schedule configuration."""

    def __init__(self, kind: str, warmup_steps: int, max_steps: int, min_lr_ratio: float):
        self.kind, self.warmup_steps = kind, warmup_steps
        self.max_steps, self.min_lr_ratio = max_steps, min_lr_ratio

    def __call__(self, step: int) -> float:
        return lr_multiplier(step, self.kind, self.warmup_steps, self.max_steps, self.min_lr_ratio)
