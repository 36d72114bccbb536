"""The run's data: its batch source, validation dataset and data fingerprint, from the config.

Three kinds of run, chosen by the config:

* ``task.kind: graph_search`` — live graph-search examples
  (:class:`~megaproc.data.task_source.TaskBatchSource`), no validation dataset (the held-out
  task evaluation replaces it);
* ``classify.target_func`` set — a boolean-function classification dataset
  (:mod:`megaproc.data.classify_source`);
* otherwise indexed prefixes blended with the optional synthetic mixin
  (:func:`~megaproc.data.build.build_train_valid`); with no ``data.train`` the built-in default
  corpus (Python stdlib sources) is used.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os

from megaproc.data.build import build_train_valid, parse_sources
from megaproc.data.indexed import IndexedDataset, content_fingerprint
from megaproc.data.sources import BatchSource, IndexedBatchSource


def uses_default_corpus(cfg) -> bool:
    """True for an indexed-data run with no ``data.train`` (the built-in corpus is used)."""
    return cfg.task.kind == "none" and cfg.classify.target_func is None and not cfg.data.train


def resolved_data_config(cfg):
    """``cfg.data``, with the built-in corpus filled in when the run uses it."""
    if not uses_default_corpus(cfg):
        return cfg.data
    from megaproc.data.default_corpus import ensure_default_corpus

    data_cfg = copy.deepcopy(cfg.data)
    _, prefix = ensure_default_corpus(cfg.data.default_vocab_size, log=lambda *a, **k: None)
    data_cfg.train = [{"prefix": str(prefix), "weight": 1.0}]
    return data_cfg


def build_batch_source(cfg, tokenizer, rank: int, world_size: int, pad_id: int,
                       log) -> tuple[BatchSource, object | None]:
    """``(batch_source, valid_dataset_or_None)`` for the run described by ``cfg``."""
    t = cfg.train
    if cfg.task.kind == "graph_search":
        from megaproc.data.task_source import build_task_source

        return build_task_source(cfg.task, t, cfg.curriculum.start_stage, tokenizer, rank,
                                 world_size, pad_id, log), None
    if cfg.classify.target_func is not None:
        from megaproc.data.classify_source import build_classify_source

        return build_classify_source(cfg, tokenizer, rank, world_size, log)
    data_cfg = resolved_data_config(cfg)
    # Whole epochs are built, so the planned samples do not depend on max_steps; this only
    # says how many samples the run needs at least.
    global_batch = t.micro_batch * t.grad_accum * world_size
    valid_samples = cfg.eval.max_batches * t.micro_batch * world_size
    train, valid, _ = build_train_valid(data_cfg, tokenizer, t.seq_len, cfg.run.seed,
                                        t.max_steps * global_batch, valid_samples)
    source = IndexedBatchSource(train, t.micro_batch, t.grad_accum, world_size, rank, pad_id,
                                t.seq_len)
    return source, valid


def _file_or_prefix_fingerprint(path: str) -> str:
    if os.path.isfile(path):
        return content_fingerprint(path)
    if IndexedDataset.exists(path):
        return IndexedDataset(path).content_fingerprint()
    return "missing"


def data_fingerprint(cfg, tokenizer) -> str:
    """Identity of the data a run trains on, for resume checks.

    Indexed runs: the content of every prefix and the mixin, the weights and blend settings.
    Task runs: the generator settings, the reserved split prompts and the tokenizer's
    vocabulary (never the default corpus, which such a run does not read).  Classification
    runs: the dataset settings.
    """
    if cfg.task.kind == "graph_search":
        from megaproc.synthetic import ReservedPrompts

        task = cfg.task
        reserved = ReservedPrompts.from_split_dir(task.splits_dir).fingerprint() \
            if task.splits_dir and os.path.isdir(task.splits_dir) else "none"
        vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        parts = ["graph_search", str(task.max_input_size), str(task.max_lookahead),
                 str(task.natural_language), str(task.seed), reserved, vocab.hexdigest()[:16]]
    elif cfg.classify.target_func is not None:
        c = cfg.classify
        parts = ["classify", c.target_func, str(c.sequence_length), str(c.train_set_size),
                 str(c.test_set_size), str(cfg.run.seed)]
    else:
        data_cfg = resolved_data_config(cfg)
        parts = [data_cfg.blend_by, str(data_cfg.valid_fraction), str(data_cfg.mixin_percent)]
        for key in ("train", "valid"):
            for prefix, weight in parse_sources(getattr(data_cfg, key), f"data.{key}"):
                parts.append(f"{key}:{_file_or_prefix_fingerprint(prefix)}:{weight}")
        if data_cfg.mixin:
            parts.append("mixin:" + _file_or_prefix_fingerprint(data_cfg.mixin))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
