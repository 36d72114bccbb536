"""The one eval-mode toggle: evaluate a model or DeepSpeed engine with dropout off, then restore."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def evaluation_mode(module) -> Iterator[None]:
    """Put ``module`` (an ``nn.Module`` or a DeepSpeed engine, which forwards ``eval()``/``train()``
    to its module) in eval mode without autograd for the block, then restore its previous mode."""
    was_training = bool(getattr(module, "training", False))
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            module.train()
