"""Hooks of the train loop, one per file (see :mod:`megaproc.hooks.base` for events and priorities).

:func:`build_hooks` chooses a run's hooks from its config; each hook gets the explicit pieces it
needs (config sections, run directory, tokenizer, batch source, rank and world size), never the
trainer under construction.
"""

from __future__ import annotations

from pathlib import Path

from megaproc.config import to_dict
from megaproc.console_log import get_logger
from megaproc.hooks.base import Hook, Hooks

log = get_logger(__name__)

__all__ = ["Hook", "Hooks", "build_hooks"]


def build_hooks(cfg, run_dir: Path, tokenizer, source, valid_dataset, hf_config, device,
                rank: int, world_size: int, pad_id: int) -> list[Hook]:
    """The hooks a run's config asks for (curriculum or task eval, benchmarks, validation,
    logging, checkpointing, preemption)."""
    from megaproc.hooks.checkpointing import CheckpointHook
    from megaproc.hooks.logging import LoggingHook
    from megaproc.hooks.preemption import PreemptionHook

    run_dir = Path(run_dir)
    hooks: list[Hook] = []
    heldout_needed = cfg.curriculum.enabled or cfg.task.eval_every
    if heldout_needed:
        from megaproc.hooks.task_eval import HeldoutLog, build_heldout_evaluator

        evaluator = build_heldout_evaluator(cfg.task, cfg.curriculum.eval_subset_size, tokenizer,
                                            cfg.train.seq_len + 1, rank, world_size, pad_id)
        heldout = HeldoutLog(evaluator, run_dir)
    if cfg.curriculum.enabled:
        from megaproc.eval.answer_correctness import word_continuation_table
        from megaproc.hooks.curriculum import CurriculumHook

        if heldout.evaluator is None:
            log.warning("warning: task.splits_dir is not set: no held-out evaluation")
        c = cfg.curriculum
        hooks.append(CurriculumHook(
            cfg.task.max_lookahead, c.curr_window, c.curr_check_every, c.curr_threshold,
            c.start_stage, source=source, heldout=heldout,
            continues_word=word_continuation_table(tokenizer, hf_config.vocab_size).to(device)))
    elif cfg.task.eval_every:
        from megaproc.hooks.task_eval import TaskEvalHook

        hooks.append(TaskEvalHook(heldout, cfg.task.eval_every))
    if cfg.classify.target_func is not None:
        from megaproc.hooks.classify_eval import ClassifyEvalHook

        steps_per_epoch = source.steps_for_epochs(1)
        hooks.append(ClassifyEvalHook(run_dir, source, steps_per_epoch,
                                      cfg.classify.eval_every_epochs, cfg.train.micro_batch,
                                      to_dict(cfg)))
    if cfg.eval.hellaswag_every or cfg.eval.ewok_every:
        from types import SimpleNamespace

        from megaproc.eval.loglik import context_length
        from megaproc.hooks.benchmark_eval import BenchmarkEvalHook

        # Benchmarks are scored at the model's own context, not the training sequence length.
        context = context_length(SimpleNamespace(config=hf_config))
        hooks.append(BenchmarkEvalHook(cfg.eval, run_dir, tokenizer, context, rank, world_size))
    if valid_dataset is not None:
        from megaproc.hooks.validation import VALIDATION_MASK, ValidationHook

        hooks.append(ValidationHook(cfg.eval, run_dir, valid_dataset, cfg.train.micro_batch,
                                    cfg.train.seq_len, pad_id, rank, world_size,
                                    mask_key=VALIDATION_MASK.get(cfg.train.loss),
                                    sliced_head=cfg.train.sliced_head))
    hooks += [LoggingHook(cfg.log, run_dir, cfg.train.max_steps), CheckpointHook(cfg.checkpoint),
              PreemptionHook()]
    return hooks
