"""Preemption: on SIGUSR1/SIGTERM finish the current step, save, and exit for requeue.

The hook asks for a checkpoint of the current step (the checkpointing hook writes it) and stops
training; the process exits with :data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``) after the
checkpoint is complete, and the ``launch/`` scripts requeue the job on that code.  All ranks agree on stopping
through a one-element all-reduce each step, so a signal seen by any rank stops every rank at
the same step.
"""

from __future__ import annotations

import signal

import torch

from megaproc import distributed as dist_utils
from megaproc.console_log import get_logger
from megaproc.hooks.base import Hook

PREEMPTED_EXIT_CODE = 75
log = get_logger(__name__)


class PreemptionHook(Hook):
    """Turns SIGUSR1/SIGTERM into save-and-exit at the next step boundary."""

    name = "preemption"
    priority = 65
    signals = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def on_train_start(self, trainer) -> None:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_step_end(self, trainer) -> None:
        # One all-reduce per step: cheap next to a training step, and the only way every rank
        # stops at the same step when the signal reached just some of them.
        flag = torch.tensor([1.0 if self.requested else 0.0], device=dist_utils.device())
        if dist_utils.all_reduce_sum(flag).item() > 0:
            log.info(f"preemption signal: saving at step {trainer.step} and exiting with code "
                     f"{PREEMPTED_EXIT_CODE} for requeue")
            trainer.request_checkpoint()
            trainer.request_stop("preempted", PREEMPTED_EXIT_CODE)

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
