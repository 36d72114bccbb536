"""Run kinds: one module per workflow, chosen in one place from the config.

==================  ==========================================  =======================================
kind                chosen when                                  module
==================  ==========================================  =======================================
``lm``              neither of the below (the default)           :mod:`megaproc.runs.lm`
``graph_search``    ``task.kind: graph_search``                  :mod:`megaproc.runs.graph_search`
``classify``        ``classify.target_func`` set                 :mod:`megaproc.runs.classify`
==================  ==========================================  =======================================

``run.kind`` names the kind explicitly; the keys above must then agree with it.

:func:`resolve` is the one step between loading a config and building a run: it picks the kind,
derives every value that depends on the world size or the kind (``train.grad_accum`` from
``train.total_batch_tokens``, a classification run's ``train.max_steps`` and schedule, the
built-in corpus and tokenizer, typed data sources) and refuses what the run would refuse later
(an unknown model, a missing file, optional packages the config asks for).  ``--dry-run`` prints
its result; training builds from it.
"""

from __future__ import annotations

import copy
import importlib.util

from megaproc.config import Config
from megaproc.console_log import get_logger
from megaproc.engine import resolve_ds_config_path
from megaproc.errors import ConfigError
from megaproc.runs.base import HookInputs, RunKind, StepLoss
from megaproc.runs.classify import ClassifyRun
from megaproc.runs.graph_search import GraphSearchRun
from megaproc.runs.lm import LMRun

log = get_logger(__name__)
KINDS: dict[str, type[RunKind]] = {kind.name: kind for kind in (LMRun, GraphSearchRun,
                                                                ClassifyRun)}
__all__ = ["KINDS", "HookInputs", "RunKind", "StepLoss", "kind_name", "resolve", "run_kind"]

# Optional packages a config may ask for, and the extra that installs them.
OPTIONAL_PACKAGES = {"log.wandb": ("wandb", "logging"), "log.tensorboard": ("tensorboard", "logging"),
                     "log.plot_at_end": ("matplotlib", "logging")}


def kind_name(cfg: Config) -> str:
    """The run's kind: ``run.kind`` if set (checked against the keys), else inferred."""
    inferred = ("classify" if cfg.classify.target_func is not None
                else "graph_search" if cfg.task.kind == "graph_search" else "lm")
    explicit = cfg.run.kind
    if explicit is not None and explicit != inferred:
        if not (explicit == "graph_search" and inferred == "lm"):  # run.kind alone suffices
            raise ConfigError(f"config key 'run.kind' is {explicit!r} but the config describes "
                              f"a {inferred!r} run (task.kind / classify.target_func)")
        return explicit
    if cfg.classify.target_func is not None and cfg.task.kind != "none":
        raise ConfigError("config key 'classify.target_func' cannot be combined with task.kind")
    if cfg.curriculum.enabled and (explicit or inferred) != "graph_search":
        raise ConfigError("config key 'curriculum.enabled' needs task.kind: graph_search")
    return explicit or inferred


def run_kind(cfg: Config) -> RunKind:
    """The :class:`RunKind` object of ``cfg``."""
    return KINDS[kind_name(cfg)](cfg)


def _resolve_grad_accum(cfg: Config, world_size: int) -> None:
    """Derive ``train.grad_accum`` from ``train.total_batch_tokens`` when that is set."""
    t = cfg.train
    if t.total_batch_tokens is None:
        return
    per_step = t.micro_batch * t.seq_len * world_size
    if t.total_batch_tokens % per_step:
        raise ConfigError(f"config key 'train.total_batch_tokens' ({t.total_batch_tokens}) must "
                          f"be a multiple of micro_batch * seq_len * world size ({per_step})")
    derived = t.total_batch_tokens // per_step
    if "train.grad_accum" in cfg.given_keys and t.grad_accum != derived:
        log.warning(f"train.grad_accum {t.grad_accum} of the config is replaced by {derived}, "
                    f"derived from train.total_batch_tokens {t.total_batch_tokens}")
    t.grad_accum = derived


def _check_optional_packages(cfg: Config) -> None:
    for key, (module, extra) in OPTIONAL_PACKAGES.items():
        section, name = key.split(".")
        wanted = getattr(getattr(cfg, section), name)
        if key == "log.wandb":
            wanted = wanted and cfg.log.wandb_mode != "disabled"
        if wanted and importlib.util.find_spec(module) is None:
            raise ConfigError(f"config key '{key}' needs the {module} package: "
                              f"pip install 'megaproc[{extra}]'")


def resolve(cfg: Config, world_size: int = 1, check_files: bool = True) -> Config:
    """A resolved copy of ``cfg`` for ``world_size`` data-parallel ranks (see module docstring).

    ``check_files=False`` skips the checks that files exist (for planning tools whose runs
    depend on files earlier runs write).
    """
    if world_size < 1:
        raise ConfigError(f"world size must be >= 1, got {world_size}")
    resolved = copy.deepcopy(cfg)
    kind = run_kind(resolved)
    resolved.run.kind = kind.name
    _resolve_grad_accum(resolved, world_size)
    kind.resolve(world_size, check_files)
    kind.check_document_masking(check_files)
    _check_optional_packages(resolved)
    if check_files and not resolve_ds_config_path(resolved.deepspeed.config).is_file():
        raise ConfigError(f"config key 'deepspeed.config': file not found: "
                          f"{resolved.deepspeed.config}")
    resolved.validate()
    resolved._resolved_world_size = world_size
    return resolved


def is_resolved(cfg: Config, world_size: int) -> bool:
    """Whether ``cfg`` came out of :func:`resolve` for ``world_size``."""
    return getattr(cfg, "_resolved_world_size", None) == world_size
