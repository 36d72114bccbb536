"""The one evaluation hook: any evaluator of :mod:`megaproc.eval` on the training engine.

OLMo-core's ``EvaluatorCallback`` shape: the hook holds a list of :class:`Evaluation` (an
evaluator plus when and how training runs it) and, when one is due, runs it exactly as
``python -m megaproc.evaluate`` does - an :class:`~megaproc.eval.evaluator.EvalContext` over
the engine (:class:`~megaproc.eval.forward.ModelForward`: any ZeRO stage), the model's context,
the evaluation's batch size, this rank and the world size; every rank calls it in lock step
(the evaluators share their batches with :func:`megaproc.eval.sharding.run_in_lockstep`, so a
ZeRO-3 forward never waits for a rank that is done), inside the one eval-mode switch
(:func:`megaproc.eval.forward.eval_mode`: dropout off, every module back in its mode after).

When
    ``every`` steps (0: never periodically), at step 0 of a fresh run (``at_start``: the
    held-out task evaluation) and after the last step (``at_end``: validation and benchmarks
    with ``eval.at_end``) unless that step just ran it periodically - not after a preemption
    or a failure.

Records
    One record per evaluation in ``logs/eval.jsonl`` (:class:`~megaproc.hooks.records.EvalLog`,
    which also rebuilds the seed's ``step_metrics.json`` / ``hellaswag_metrics.jsonl``):
    ``{step, evaluator, event, **flat_metrics(result.metrics), timestamp}`` - the metric names
    of the command line's JSON (:func:`~megaproc.eval.evaluator.flat_metrics`), ``evaluator``
    the evaluator's name, ``event`` ``start``, ``periodic`` or ``end`` (the curriculum's
    held-out records: ``start``, ``advance``, ``completed``, plus ``stage``/``alpha``).  Per-item
    rows go to the evaluation's sinks (EWoK: ``RUN_DIR/ewok_items.jsonl``, with ``step``).
    After a resume the records and rows past the resumed step are dropped (those steps are
    redone).

:class:`EvalRunner` is the part the curriculum shares: it runs one evaluation on the trainer's
engine and writes its record, whoever decides when.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import torch

from megaproc import distributed as dist_utils
from megaproc.eval.evaluator import (BatchSize, EvalContext, EvalResult, Evaluator,
                                     flat_metrics)
from megaproc.eval.forward import ModelForward, context_length, eval_mode
from megaproc.hooks.base import Hook
from megaproc.hooks.records import EvalLog, drop_records_after


class ResultSink(Protocol):
    """Where an evaluation's per-item rows go besides its record."""

    def open(self, step: int) -> None:
        """Drop what lies past ``step`` (start of a run or a resume)."""

    def write(self, step: int, result: EvalResult) -> None:
        """Keep the rows of the evaluation at ``step``."""


class ItemRowsFile:
    """Per-item rows appended to a JSON-lines file with their ``step`` (rank 0), e.g. the
    seed's ``ewok_items.jsonl``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def open(self, step: int) -> None:
        """Drop rows of steps after ``step`` (rank 0)."""
        if dist_utils.is_main():
            drop_records_after(self.path, step)

    def write(self, step: int, result: EvalResult) -> None:
        """Append ``{"step": step, **row}`` for every row (rank 0)."""
        if not dist_utils.is_main():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            for row in result.rows:
                handle.write(json.dumps({"step": step, **row}, default=str) + "\n")


@dataclass
class Evaluation:
    """One evaluator as training runs it: ``batch_size`` rows per forward (or a rule),
    ``max_length`` (None: the model's context), when (``every``, ``at_start``, ``at_end``) and
    where its rows go (``sinks``)."""

    evaluator: Evaluator
    batch_size: BatchSize = 16
    every: int = 0
    at_start: bool = False
    at_end: bool = False
    max_length: int | None = None
    sinks: Sequence[ResultSink] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        """The evaluator's name (the record's ``evaluator`` field)."""
        return self.evaluator.name

    def due(self, step: int) -> bool:
        """True when ``every`` divides ``step``."""
        return bool(self.every) and step % self.every == 0


class EvalRunner:
    """Runs evaluations on a trainer's engine (collective) and writes their records."""

    def __init__(self, run_dir: str | Path, tokenizer, rank: int = 0, world_size: int = 1,
                 progress: bool = False):
        self.log = EvalLog(run_dir)
        self.tokenizer = tokenizer
        self.rank, self.world_size = int(rank), int(world_size)
        self.progress = bool(progress)

    def open(self, step: int, evaluations: Sequence[Evaluation] = ()) -> None:
        """Drop the records (and sink rows) past ``step``: the start of a run or a resume."""
        self.log.open(step)
        for evaluation in evaluations:
            for sink in evaluation.sinks:
                sink.open(step)

    def context(self, trainer, evaluation: Evaluation) -> EvalContext:
        """The :class:`EvalContext` of ``evaluation`` on the trainer's engine."""
        engine = trainer.engine
        return EvalContext(ModelForward(engine), self.tokenizer,
                           evaluation.max_length or context_length(engine),
                           evaluation.batch_size, trainer.device, self.rank, self.world_size,
                           self.progress)

    def run(self, trainer, evaluation: Evaluation, **fields) -> dict:
        """Evaluate in eval mode (every rank), keep the rows, write and return the record
        ``{step, evaluator, **fields, **metrics, timestamp}``."""
        ctx = self.context(trainer, evaluation)
        with eval_mode(trainer.engine), torch.no_grad():
            result = evaluation.evaluator.run(ctx)
        for sink in evaluation.sinks:
            sink.write(trainer.step, result)
        return self.log.write(trainer, flat_metrics(result.metrics), evaluator=evaluation.name,
                              **fields)


class EvaluationHook(Hook):
    """Runs every configured evaluation when it is due (see the module docstring)."""

    name = "evaluation"
    priority = 40

    def __init__(self, evaluations: Sequence[Evaluation], runner: EvalRunner):
        self.evaluations = list(evaluations)
        names = [e.name for e in self.evaluations]
        if len(set(names)) != len(names):
            raise ValueError(f"one evaluation per evaluator, got {names}")
        self.runner = runner

    def on_train_start(self, trainer) -> None:
        self.runner.open(trainer.step, self.evaluations)
        if trainer.step == 0:
            for evaluation in self.evaluations:
                if evaluation.at_start:
                    self.runner.run(trainer, evaluation, event="start")

    def on_step_end(self, trainer) -> None:
        for evaluation in self.evaluations:
            if evaluation.due(trainer.step):
                self.runner.run(trainer, evaluation, event="periodic")

    def on_train_end(self, trainer) -> None:
        if trainer.exit_code != 0 or trainer.step == 0:  # preempted, failed or nothing trained
            return
        for evaluation in self.evaluations:
            if evaluation.at_end and not evaluation.due(trainer.step):
                self.runner.run(trainer, evaluation, event="end")
