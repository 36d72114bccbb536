"""Builders for the parts of a run: tokenizer, model, data source and hooks.

Kept apart from the Trainer so the loop module stays short and each workflow (plain LM
training, curriculum pre-pretraining, ...) can be wired in one place.
"""

from __future__ import annotations

import copy
from pathlib import Path

from megaproc import distributed as dist_utils
from megaproc.config import Config, ConfigError, data_sources
from megaproc.data.loader import IndexedBatchSource
from megaproc.engine import zero_stage


def uses_default_corpus(cfg: Config) -> bool:
    """True when no training prefixes are configured (the built-in stdlib corpus is used)."""
    return not cfg.data.train


def load_run_tokenizer(cfg: Config):
    """The run's tokenizer: ``data.tokenizer``, or the built-in default corpus's tokenizer."""
    from megaproc.tokenizer import load_tokenizer

    if cfg.data.tokenizer:
        return load_tokenizer(cfg.data.tokenizer)
    if not uses_default_corpus(cfg):
        raise ConfigError("config key 'data.tokenizer' must be set when data.train names prefixes")
    from megaproc.data.default_corpus import ensure_default_corpus

    log = print if dist_utils.is_main() else (lambda *a, **k: None)
    tokenizer_dir, _ = ensure_default_corpus(cfg.data.default_vocab_size, log=log)
    return load_tokenizer(tokenizer_dir)


def build_model_for_run(cfg: Config, tokenizer, ds_config: dict):
    """The HF causal LM for this run (optionally with weights from another run's checkpoint)."""
    from megaproc.models import build_model

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    init_from = cfg.model.init_from
    zero3 = zero_stage(ds_config) == 3 and not init_from and _wants_zero3_init(cfg, len(tokenizer))
    model = build_model(cfg.model, vocab_size=len(tokenizer), zero3_init=zero3,
                        ds_config=ds_config, **ids)
    if init_from:
        from megaproc.checkpoint import resolve_checkpoint_ref
        from megaproc.export import load_checkpoint_model

        source = resolve_checkpoint_ref(init_from)
        state = load_checkpoint_model(source).state_dict()
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if "lm_head" not in k or not model.config.tie_word_embeddings]
        if missing or unexpected:
            raise ConfigError(f"model.init_from {source}: weights do not match the model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        if dist_utils.is_main():
            print(f"[megaproc] initialised model weights from {source}", flush=True)
    return model


def _wants_zero3_init(cfg: Config, vocab_size: int) -> bool:
    """Whether to construct the model under ``zero.Init`` (see ``model.zero3_init``)."""
    if cfg.model.zero3_init != "auto":
        return cfg.model.zero3_init == "always"
    import os

    import psutil

    from megaproc.models import count_parameters, model_config

    if cfg.model.pretrained_path:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(cfg.model.pretrained_path, local_files_only=True)
    else:
        config = model_config(cfg.model.name, vocab_size, cfg.model.config_overrides,
                              cfg.model.max_position_embeddings)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", dist_utils.world_size()))
    return count_parameters(config) * 4 * local_ranks > psutil.virtual_memory().total / 4


def _default_data_config(cfg: Config):
    from megaproc.data.default_corpus import ensure_default_corpus

    data_cfg = copy.deepcopy(cfg.data)
    _, prefix = ensure_default_corpus(cfg.data.default_vocab_size, log=lambda *a, **k: None)
    data_cfg.train = [{"prefix": str(prefix), "weight": 1.0}]
    return data_cfg


def build_data(trainer):
    """``(batch_source, valid_dataset, source_names)`` for the run.

    With ``task.kind: graph_search`` the source streams live task examples (no validation
    dataset; the held-out task evaluation replaces it); otherwise indexed data is blended
    with the optional synthetic mixin.
    """
    from megaproc.workflows import task_config, validate_workflow

    cfg = trainer.cfg
    validate_workflow(cfg)
    if task_config(cfg).kind == "graph_search":
        from megaproc.data.task_source import SOURCE_NAME, build_task_source

        return build_task_source(trainer), None, [SOURCE_NAME]
    t = cfg.train
    data_cfg = _default_data_config(cfg) if uses_default_corpus(cfg) else cfg.data
    for key, entries in (("data.train", data_cfg.train), ("data.valid", data_cfg.valid)):
        data_sources(entries, key)  # validates entries, naming the bad key
    from megaproc.data.build import build_train_valid

    global_batch = t.micro_batch * t.grad_accum * trainer.world_size
    train_samples = t.max_steps * global_batch
    valid_samples = max(1, cfg.eval.max_batches) * t.micro_batch * trainer.world_size
    train, valid, names = build_train_valid(data_cfg, trainer.tokenizer, t.seq_len, cfg.run.seed,
                                            train_samples, valid_samples)
    source = IndexedBatchSource(train, t.micro_batch, t.grad_accum, trainer.world_size,
                                trainer.rank, trainer.pad_id, t.seq_len)
    if hasattr(train, "source_counts"):
        source.consumed_per_source = lambda: list(train.source_counts(source.consumed))
    return source, valid, names


def data_fingerprint(cfg: Config) -> str:
    """Identity of the run's data (prefix contents, weights, mixin) for resume checks."""
    import hashlib
    import os

    from megaproc.data.build import parse_sources
    from megaproc.data.indexed import IndexedDataset, content_fingerprint

    data_cfg = _default_data_config(cfg) if uses_default_corpus(cfg) else cfg.data
    parts = [data_cfg.blend_by, str(data_cfg.valid_fraction), str(data_cfg.mixin_percent)]
    for key in ("train", "valid"):
        for prefix, weight in parse_sources(getattr(data_cfg, key), f"data.{key}"):
            content = (IndexedDataset(prefix).content_fingerprint()
                       if IndexedDataset.exists(prefix) else "missing")
            parts.append(f"{key}:{content}:{weight}")
    mixin = data_cfg.mixin
    if mixin:
        if os.path.isfile(mixin):
            parts.append("mixin:" + content_fingerprint(mixin))
        elif IndexedDataset.exists(mixin):
            parts.append("mixin:" + IndexedDataset(mixin).content_fingerprint())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def build_hooks(trainer) -> list:
    """The hooks, in the order they run.

    Workflow hooks come first: the weighted loss (``train.loss: weighted``), the curriculum
    (``curriculum.enabled``; before logging, so train.jsonl gets ``curr_acc, stage, alpha``)
    or the periodic held-out task eval (``task.eval_every``); then logging, validation,
    checkpointing and preemption.
    """
    from megaproc.hooks.cadence import CheckpointHook, ValidationHook
    from megaproc.hooks.logging import LoggingHook
    from megaproc.hooks.preemption import PreemptionHook
    from megaproc.workflows import curriculum_config, task_config

    cfg = trainer.cfg
    hooks = []
    if cfg.train.loss == "weighted":
        from megaproc.hooks.weighted_loss import WeightedLossHook

        hooks.append(WeightedLossHook())
    if curriculum_config(cfg).enabled:
        from megaproc.hooks.curriculum import CurriculumHook

        hooks.append(CurriculumHook.from_trainer(trainer))
    elif task_config(cfg).eval_every:
        from megaproc.hooks.task_eval import HeldoutLog, TaskEvalHook, build_heldout_evaluator

        hooks.append(TaskEvalHook(HeldoutLog(build_heldout_evaluator(trainer),
                                             Path(cfg.run.out_dir)), task_config(cfg).eval_every))
    return hooks + [
        LoggingHook(cfg.log, Path(cfg.run.out_dir), cfg.train.max_steps),
        ValidationHook(cfg.eval, Path(cfg.run.out_dir)),
        CheckpointHook(cfg.checkpoint),
        PreemptionHook(),
    ]
