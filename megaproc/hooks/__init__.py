"""Hooks of the train loop, one per file (see :mod:`megaproc.hooks.base` for events and priorities).

Which hooks a run has is decided by its run kind (:meth:`megaproc.runs.base.RunKind.hooks`) and
its config; each hook gets the explicit pieces it needs (config sections, run directory,
tokenizer, batch source, rank and world size), never the trainer under construction.  Every
evaluation of a causal LM during training (held-out task accuracy, validation, HellaSwag, EWoK,
DeepMind Mathematics) runs through the one :class:`EvaluationHook` (the curriculum's held-out
evaluation through its :class:`EvalRunner`); :mod:`megaproc.hooks.evaluations` builds them from
the config.
"""

from megaproc.hooks.base import Hook, Hooks
from megaproc.hooks.checkpointing import CheckpointHook
from megaproc.hooks.classify_eval import ClassifyEvalHook
from megaproc.hooks.curriculum import CurriculumHook
from megaproc.hooks.evaluation import EvalRunner, Evaluation, EvaluationHook, ItemRowsFile
from megaproc.hooks.evaluations import (benchmark_evaluations, heldout_evaluation,
                                        validation_evaluation, validation_mask_key)
from megaproc.hooks.logging import LoggingHook
from megaproc.hooks.preemption import PREEMPTED_EXIT_CODE, PreemptionHook

__all__ = ["CheckpointHook", "ClassifyEvalHook", "CurriculumHook", "EvalRunner", "Evaluation",
           "EvaluationHook", "Hook", "Hooks", "ItemRowsFile", "LoggingHook",
           "PREEMPTED_EXIT_CODE", "PreemptionHook", "benchmark_evaluations",
           "heldout_evaluation", "validation_evaluation", "validation_mask_key"]
