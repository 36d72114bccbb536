"""Accuracy-gated lookahead curriculum (``curriculum.enabled: true`` with ``task.kind: graph_search``).

Stages run ``1..task.max_lookahead`` with ``alpha = stage / max_lookahead``; the task source
draws lookaheads up to ``generator.max_lookahead_for_stage(stage)`` (about ``stage``, capped
at the largest valid lookahead).

Window
    After every micro-batch the correctness of each training example (greedy full-word
    prediction of any of its valid answers, from the training forward itself: the source adds a
    row per alternative answer; see :mod:`megaproc.eval.answer_correctness`) is all-gathered from every rank and appended in rank
    order to a window of the last ``curr_window`` examples.  The window is therefore the same
    on every rank, holds ``micro_batch * grad_accum * world_size`` new examples per optimizer
    step, and costs no extra forward (it works under ZeRO-3).

Advancing
    Every ``curr_check_every`` optimizer steps, if the window is full and its accuracy is
    ``>= curr_threshold``, the stage advances: the window is cleared (the next stage must
    fill it with its own examples), the source draws the next examples at the new stage and
    the held-out evaluation runs.  Passing the last stage ends training (the final held-out
    evaluation is written with ``event: "completed"``); ``train.max_steps`` still bounds the
    run.  Held-out evaluation also runs at step 0 of a fresh run.

Logs and state
    On log steps ``train.jsonl`` gets ``curr_acc`` (window accuracy, None while empty),
    ``stage`` and ``alpha`` of the step just trained (recorded through the trainer).
    ``logs/eval.jsonl`` gets ``step, stage, alpha, heldout_acc, heldout_loss, num_examples,
    timestamp`` (+ ``evaluator: "split"``, ``event``, ``num_dropped`` and the ``split``
    evaluator's ``by_lookahead/<L>/...``: the held-out evaluation runs through
    :class:`~megaproc.hooks.evaluation.EvalRunner`, as the evaluation hook does); an
    ``advance`` or ``completed`` record also has ``passed_stage``, the stage whose window just
    reached the threshold (``completed`` is the pass of the last stage: the original script's
    stage moving past ``max_lookahead``), so a curriculum of ``S`` stages that ends on its own
    writes ``S`` records with ``passed_stage``.  The checkpoint holds the stage, the window
    and the completion flag; the source's state holds the generator index, so a resume
    continues exactly.
"""

from __future__ import annotations

from collections import deque

import torch

from megaproc import distributed as dist_utils
from megaproc.console_log import get_logger
from megaproc.eval.answer_correctness import teacher_forced_correct
from megaproc.hooks.base import Hook
from megaproc.hooks.evaluation import EvalRunner, Evaluation

log = get_logger(__name__)


def gather_flags(local: torch.Tensor) -> list[int]:
    """All ranks' 0/1 flags concatenated in rank order (every rank passes the same count)."""
    local = local.detach().to(torch.int64).reshape(-1)
    if dist_utils.world_size() == 1:
        return local.cpu().tolist()
    parts = [torch.empty_like(local) for _ in range(dist_utils.world_size())]
    torch.distributed.all_gather(parts, local)
    return torch.cat(parts).cpu().tolist()


def examples_correct(rows: torch.Tensor, example_id: torch.Tensor | None,
                     primary: torch.Tensor | None) -> torch.Tensor:
    """Per example (in primary-row order): correct when the greedy prediction is any of its valid
    answers, i.e. when any of its rows is correct."""
    if example_id is None:
        return rows
    example_id = example_id.to(rows.device)
    count = int(primary.sum())
    hits = torch.zeros(count, dtype=torch.int64, device=rows.device)
    hits.index_add_(0, example_id, rows.to(torch.int64))
    return hits > 0


class CurriculumHook(Hook):
    """Tracks the correctness window, advances the stage and runs the held-out evaluation."""

    name = "curriculum"
    priority = 20

    def __init__(self, max_stage: int, curr_window: int = 200, curr_check_every: int = 10,
                 curr_threshold: float = 0.98, start_stage: int = 1, source=None,
                 heldout: Evaluation | None = None, runner: EvalRunner | None = None,
                 continues_word: torch.Tensor | None = None):
        self.max_stage = int(max_stage)
        self.check_every = int(curr_check_every)
        self.threshold = float(curr_threshold)
        self.stage = int(start_stage)
        self.window: deque[int] = deque(maxlen=int(curr_window))
        self.completed = False
        self.source = source
        self.heldout = heldout if runner is not None else None
        self.runner = runner
        self.continues_word = continues_word

    # ------------------------------------------------------------------ window logic
    @property
    def alpha(self) -> float:
        """``stage / max_lookahead``."""
        return self.stage / self.max_stage

    def record(self, local_correct: torch.Tensor) -> None:
        """Append every rank's correctness flags of one micro-batch to the window (collective)."""
        self.window.extend(gather_flags(local_correct))

    def window_accuracy(self) -> float | None:
        """Accuracy over the window (None while it is empty)."""
        return sum(self.window) / len(self.window) if self.window else None

    def should_advance(self, step: int) -> bool:
        """True on a check step with a full window at or above the threshold."""
        if self.completed or step % self.check_every != 0 or len(self.window) < self.window.maxlen:
            return False
        return self.window_accuracy() >= self.threshold

    def advance(self, trainer) -> None:
        """Move to the next stage (or complete the curriculum) and evaluate on held-out data."""
        accuracy = self.window_accuracy()
        self.window.clear()
        if self.stage >= self.max_stage:
            self.completed = True
            log.info(f"curriculum: window accuracy {accuracy:.3f} >= {self.threshold} "
                     f"at step {trainer.step}: last stage {self.stage} passed, training ends")
            self._evaluate(trainer, "completed", passed_stage=self.stage)
            trainer.request_stop("curriculum completed")
            return
        self.stage += 1
        if self.source is not None:
            self.source.set_stage(self.stage)
        log.info(f"curriculum: window accuracy {accuracy:.3f} >= {self.threshold} at "
                 f"step {trainer.step}: stage {self.stage - 1} -> {self.stage} (alpha {self.alpha:.4f})")
        self._evaluate(trainer, "advance", passed_stage=self.stage - 1)

    def _evaluate(self, trainer, event: str, **fields) -> None:
        if self.heldout is None:
            return
        record = self.runner.run(trainer, self.heldout, stage=self.stage, alpha=self.alpha,
                                 event=event, **fields)
        if record["heldout_acc"] is not None:
            log.info(f"held-out eval at step {trainer.step} (stage {self.stage}): "
                     f"acc {record['heldout_acc']:.4f}, answer loss {record['heldout_loss']:.4f} "
                     f"on {record['num_examples']} examples")

    # ------------------------------------------------------------------ events
    def on_train_start(self, trainer) -> None:
        if self.heldout is not None:
            self.runner.open(trainer.step, [self.heldout])
        if self.source is not None:
            self.source.set_stage(self.stage)
        if self.completed:  # resumed from a run whose curriculum already finished
            trainer.request_stop("curriculum completed")
            return
        if trainer.step == 0:
            self._evaluate(trainer, "start")

    def on_loss(self, trainer, batch, logits, per_token_loss, loss):
        labels = batch["labels"].to(logits.device)
        # A sliced head gives [N, V] logits at batch["head_positions"] (models/sliced_head.py).
        rows = teacher_forced_correct(logits.detach(), labels, batch["word_mask"],
                                      batch["boundary_mask"], self.continues_word,
                                      positions=batch.get("head_positions"))
        self.record(examples_correct(rows, batch.get("example_id"), batch.get("primary")))
        return loss

    def on_step_end(self, trainer) -> None:
        # The step just trained, before a possible advance (logged on log steps).
        trainer.record_metric("curr_acc", self.window_accuracy())
        trainer.record_metric("stage", self.stage)
        trainer.record_metric("alpha", self.alpha)
        if self.should_advance(trainer.step):
            self.advance(trainer)

    def state_dict(self) -> dict:
        """Stage, window (as a 0/1 string, oldest first) and completion."""
        return {"stage": self.stage, "window": "".join(map(str, self.window)),
                "completed": self.completed, "max_stage": self.max_stage}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.stage = int(state["stage"])
        self.window.clear()
        self.window.extend(int(c) for c in state.get("window", ""))
        self.completed = bool(state.get("completed", False))
