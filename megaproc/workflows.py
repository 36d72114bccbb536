"""Registers config sections of the workflows built on the trainer (imported by train.py).

Two sections drive procedural pre-pretraining (see ``configs/pptrain.yaml``):

``task:``
    The synthetic task streamed as training data.  ``kind: graph_search`` trains on live
    graph-search examples (:mod:`megaproc.data.task_source`); ``kind: none`` (default) trains on
    ``data.*`` as usual.  ``splits_dir`` is a directory written by
    ``python -m data_tools.build_splits`` (``.../mis{n}_look{L}_seed{seed}``): the prompts of
    its ``eval/test/mixin.jsonl`` never appear in training, and its ``eval.jsonl`` feeds the
    held-out evaluation (also during pretraining when ``eval_every > 0``).

``curriculum:``
    The accuracy-gated lookahead curriculum (:mod:`megaproc.hooks.curriculum`); it needs
    ``task.kind: graph_search``.  Names and defaults follow the original ``pptrain.py``
    (``curr_window`` 200, ``curr_threshold`` 0.98, ``eval_subset_size`` 500).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megaproc.config import CHOICES, Config, ConfigError, register_section


@dataclass
class TaskConfig:
    """The synthetic task trained on (``kind: graph_search``) or evaluated on (``splits_dir``)."""

    # "none": train on data.* (plain LM / pretraining); "graph_search": stream the task.
    kind: str = "none"
    # Generator settings (max_input_size is the symbolic input size n; 6x lookahead is ample).
    max_input_size: int = 384
    max_lookahead: int = 64
    natural_language: bool = True
    seed: int = 12345
    # Split directory of data_tools.build_splits: reserved prompts + held-out eval.jsonl.
    splits_dir: Optional[str] = None
    # Held-out task eval every N steps in runs without a curriculum (e.g. pretraining); 0 = off.
    eval_every: int = 0
    # Examples per forward in the held-out evaluation (per rank).
    eval_batch_size: int = 16
    # Build the next micro-batch on a background thread while the model computes.
    prefetch: bool = True


@dataclass
class CurriculumConfig:
    """Accuracy-gated curriculum over lookahead stages 1..task.max_lookahead."""

    enabled: bool = False
    # Training examples (gathered from all ranks) whose accuracy gates the next stage.
    curr_window: int = 200
    # Check the window every N optimizer steps.
    curr_check_every: int = 10
    # Window accuracy needed to advance.
    curr_threshold: float = 0.98
    # Random eval.jsonl examples (seeded, same subset every time) for the held-out eval.
    eval_subset_size: int = 500
    # Stage the run starts at.
    start_stage: int = 1


TASK_KINDS = ("none", "graph_search")

register_section("task", TaskConfig)
register_section("curriculum", CurriculumConfig)
CHOICES["task.kind"] = TASK_KINDS


def task_config(cfg: Config) -> TaskConfig:
    """The run's ``task:`` section (defaults when the recipe has none)."""
    return cfg.extra.get("task") or TaskConfig()


def curriculum_config(cfg: Config) -> CurriculumConfig:
    """The run's ``curriculum:`` section (defaults when the recipe has none)."""
    return cfg.extra.get("curriculum") or CurriculumConfig()


def validate_workflow(cfg: Config) -> None:
    """Cross-field checks of the ``task``/``curriculum`` sections; errors name the key."""
    task, curr = task_config(cfg), curriculum_config(cfg)
    if task.kind not in TASK_KINDS:
        raise ConfigError(f"config key 'task.kind' must be one of {list(TASK_KINDS)}, got {task.kind!r}")
    for key, value in {"task.max_input_size": task.max_input_size,
                       "task.max_lookahead": task.max_lookahead,
                       "task.eval_batch_size": task.eval_batch_size,
                       "curriculum.curr_window": curr.curr_window,
                       "curriculum.curr_check_every": curr.curr_check_every,
                       "curriculum.start_stage": curr.start_stage}.items():
        if value <= 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {value}")
    for key, value in {"task.seed": task.seed, "task.eval_every": task.eval_every,
                       "curriculum.eval_subset_size": curr.eval_subset_size}.items():
        if value < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {value}")
    if not 0.0 <= curr.curr_threshold <= 1.0:
        raise ConfigError(f"config key 'curriculum.curr_threshold' must be in [0, 1], "
                          f"got {curr.curr_threshold}")
    if curr.start_stage > task.max_lookahead:
        raise ConfigError(f"config key 'curriculum.start_stage' must be <= task.max_lookahead "
                          f"({task.max_lookahead}), got {curr.start_stage}")
    if curr.enabled and task.kind != "graph_search":
        raise ConfigError("config key 'curriculum.enabled' needs task.kind: graph_search")
    if task.kind != "none" and (cfg.data.train or cfg.data.mixin_percent > 0):
        raise ConfigError("config key 'task.kind': a task run trains on the task stream only; "
                          "leave data.train empty and data.mixin_percent at 0")
    if task.eval_every and not task.splits_dir:
        raise ConfigError("config key 'task.eval_every' needs task.splits_dir (its eval.jsonl)")
