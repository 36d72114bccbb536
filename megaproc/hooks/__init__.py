"""Hooks of the train loop, one per file (see :mod:`megaproc.hooks.base` for events and priorities).

Which hooks a run has is decided by its run kind (:meth:`megaproc.runs.base.RunKind.hooks`) and
its config; each hook gets the explicit pieces it needs (config sections, run directory,
tokenizer, batch source, rank and world size), never the trainer under construction.
"""

from megaproc.hooks.base import Hook, Hooks
from megaproc.hooks.benchmark_eval import BenchmarkEvalHook
from megaproc.hooks.checkpointing import CheckpointHook
from megaproc.hooks.classify_eval import ClassifyEvalHook
from megaproc.hooks.curriculum import CurriculumHook
from megaproc.hooks.logging import LoggingHook
from megaproc.hooks.preemption import PREEMPTED_EXIT_CODE, PreemptionHook
from megaproc.hooks.task_eval import HeldoutLog, TaskEvalHook, build_heldout_evaluator
from megaproc.hooks.validation import ValidationHook, validation_mask_key

__all__ = ["BenchmarkEvalHook", "CheckpointHook", "ClassifyEvalHook", "CurriculumHook", "Hook",
           "Hooks", "HeldoutLog", "LoggingHook", "PREEMPTED_EXIT_CODE", "PreemptionHook",
           "TaskEvalHook", "ValidationHook", "build_heldout_evaluator", "validation_mask_key"]
