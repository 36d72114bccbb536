"""Preemption: on SIGUSR1/SIGTERM finish the current step, save, and exit for requeue.

The process exits with :data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``) after the checkpoint
is complete; ``launch/*.sbatch`` requeue the job on that code.  All ranks agree on stopping
through a one-element all-reduce each step, so a signal seen by any rank stops every rank at
the same step.
"""

from __future__ import annotations

import signal

import torch

from megaproc import distributed as dist_utils
from megaproc.hooks.base import Hook

PREEMPTED_EXIT_CODE = 75


class PreemptionHook(Hook):
    """Turns SIGUSR1/SIGTERM into save-and-exit at the next step boundary."""

    name = "preemption"
    signals = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.stop = False
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def on_train_start(self, trainer) -> None:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_step_end(self, trainer, metrics: dict) -> None:
        flag = torch.tensor([1.0 if self.requested else 0.0], device=dist_utils.device())
        if dist_utils.all_reduce_sum(flag).item() > 0:
            if dist_utils.is_main():
                print(f"[megaproc] preemption signal: saving at step {trainer.step} and exiting "
                      f"with code {PREEMPTED_EXIT_CODE} for requeue", flush=True)
            trainer.save_checkpoint()
            trainer.exit_code = PREEMPTED_EXIT_CODE
            self.stop = True

    def should_stop(self) -> bool:
        return self.stop

    def on_train_end(self, trainer) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
