"""The ``classify`` run kind: binary sequence classification of boolean-function data.

Config
    ``classify.target_func`` (fn_a ... fn_l) at ``classify.sequence_length``, balanced
    ``train_set_size``/``test_set_size`` splits (cached, :mod:`megaproc.synthetic.boolean_data`);
    ``model.name`` a sequence classifier (:mod:`megaproc.models.classification`).  The plan is
    derived at resolve time: ``classify.n_epochs`` epochs of ``train_set_size`` examples set
    ``train.max_steps`` (so ``train.max_steps`` must not be set), and the LR anneals by cosine
    from ``optim.lr`` to ``classify.eta_min`` over those steps
    (``torch.optim.lr_scheduler.CosineAnnealingLR``, no warmup).
Tokenizer
    from-scratch classifiers get their symbol tokenizer; finetune wrappers the tokenizer of
    ``model.pretrained_path`` unless ``data.tokenizer`` is set.
Loss
    BCE-with-logits of one logit per sequence.
Hooks
    whole-split train/test loss and accuracy at epoch points (``logs/eval.jsonl`` and the
    seed's ``metrics.json``/``logs.log``/``config.json``), plus the hooks of every run.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from megaproc import distributed as dist_utils
from megaproc.data.classify_source import SPLITS, ClassifyBatchSource
from megaproc.errors import ConfigError
from megaproc.hooks import ClassifyEvalHook
from megaproc.loss import classification_loss
from megaproc.models.classification import (CLASSIFIER_NAMES, FINETUNE_WRAPPERS,
                                            build_run_classifier, classifier_encoder,
                                            run_tokenizer)
from megaproc.runs.base import HookInputs, RunKind, StepLoss, check_path, check_tokenizer_path
from megaproc.synthetic.boolean import FUNCTION_NAMES, BooleanDataError, get_function
from megaproc.synthetic.boolean_data import load_or_make_splits
from megaproc.config import to_dict
from megaproc.console_log import get_logger
from megaproc.tokenizer import load_tokenizer, symbol_tokenizer

log = get_logger(__name__)


def check_classify_config(cfg) -> None:
    """Refuse classification settings the run would only trip over later, naming the key: an
    unknown target function or model, a length the function is not defined at, odd split sizes,
    a finetune wrapper without ``model.pretrained_path``.  (A data set too large for its length
    is sampled with replacement, :mod:`megaproc.synthetic.boolean_data`.)"""
    c = cfg.classify
    if c.target_func not in FUNCTION_NAMES:
        raise ConfigError(f"config key 'classify.target_func' must be one of "
                          f"{list(FUNCTION_NAMES)}, got {c.target_func!r}")
    try:
        get_function(c.target_func).check_length(c.sequence_length)
    except BooleanDataError as exc:
        raise ConfigError(f"config key 'classify.sequence_length': {exc}") from None
    for key in ("train_set_size", "test_set_size"):
        if getattr(c, key) % 2:
            raise ConfigError(f"config key 'classify.{key}' must be even (exact 50/50 split), "
                              f"got {getattr(c, key)}")
    if cfg.model.name not in CLASSIFIER_NAMES:
        raise ConfigError(f"config key 'model.name' must be a sequence classifier with "
                          f"classify.target_func set ({', '.join(CLASSIFIER_NAMES)}), "
                          f"got {cfg.model.name!r}")
    if cfg.model.name in FINETUNE_WRAPPERS and not cfg.model.pretrained_path:
        raise ConfigError(f"config key 'model.pretrained_path' must name a local HF model "
                          f"directory for {cfg.model.name}")


class ClassifyRun(RunKind):
    """Boolean-function classification on the shared trainer."""

    name = "classify"

    def resolve(self, world_size: int, check_files: bool = True) -> None:
        """Check names and sizes, then derive ``train.max_steps`` and the cosine schedule."""
        cfg = self.cfg
        if cfg.classify.target_func is None:
            raise ConfigError("config key 'run.kind' is 'classify' but classify.target_func is "
                              "not set")
        check_classify_config(cfg)
        if "train.max_steps" in cfg.given_keys:
            raise ConfigError("config key 'train.max_steps' must not be set in a classification "
                              "run: classify.n_epochs decides the steps (set classify.n_epochs)")
        check_tokenizer_path(cfg.data.tokenizer, check_files)
        check_path(cfg.model.pretrained_path, "model.pretrained_path", "pretrained model",
                   check_files)
        c, t = cfg.classify, cfg.train
        global_batch = t.micro_batch * t.grad_accum * world_size
        t.max_steps = max(1, math.ceil(c.n_epochs * c.train_set_size / global_batch))
        cfg.schedule.kind, cfg.schedule.warmup_steps = "cosine", 0
        cfg.schedule.min_lr_ratio = min(1.0, c.eta_min / cfg.optim.lr)

    def build_tokenizer(self):
        """The symbol tokenizer (from scratch) or the pretrained model's (finetune wrappers)."""
        cfg = self.cfg
        if cfg.data.tokenizer:
            return load_tokenizer(cfg.data.tokenizer)
        if cfg.model.name in FINETUNE_WRAPPERS:
            return load_tokenizer(cfg.model.pretrained_path)
        return symbol_tokenizer(get_function(cfg.classify.target_func).alphabet)

    def data_fingerprint(self, tokenizer) -> str:
        """The data set settings and the seed that draws it."""
        c = self.cfg.classify
        parts = ["classify", c.target_func, str(c.sequence_length), str(c.train_set_size),
                 str(c.test_set_size), str(self.cfg.run.seed)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def build_data(self, tokenizer, rank: int, world_size: int, pad_id: int, log_fn):
        """The cached splits encoded by the classifier's encoder; no LM validation dataset
        (classification evaluates through :meth:`ClassifyBatchSource.evaluate`)."""
        cfg = self.cfg
        c, t = cfg.classify, cfg.train
        args = (c.target_func, c.sequence_length, c.train_set_size, c.test_set_size, cfg.run.seed)
        # Local rank 0 of each node generates (or reads) the cached files first; the others
        # wait and then read them.  Every rank reaches exactly one barrier.
        first = dist_utils.local_rank() == 0
        if not first:
            dist_utils.barrier()
        splits = load_or_make_splits(*args, cache_dir=c.cache_dir, log=log_fn)
        if first:
            dist_utils.barrier()
        encode = classifier_encoder(cfg.model, c, run_tokenizer(cfg, tokenizer))
        encoded = {name: [(encode(seq), label) for seq, label in splits.split(name)]
                   for name in SPLITS}
        how = "read from" if splits.from_cache else "generated into"
        log_fn(f"classification data {c.target_func} L={c.sequence_length}: train "
               f"{len(splits.train)}, test {len(splits.test)} ({how} {splits.cache_path})")
        source = ClassifyBatchSource(encoded["train"], encoded["test"], t.micro_batch,
                                     t.grad_accum, world_size, rank, cfg.run.seed, encode.pad_id,
                                     dataset_id=f"{c.target_func}|{splits.derived_seed}",
                                     log=log_fn, data_notes=splits.notes)
        return source, None

    def build_model(self, tokenizer, ds_config: dict, run_dir: Path, zero_stage: int):
        """The sequence classifier (a backbone plus a one-logit head)."""
        return build_run_classifier(self.cfg, tokenizer, ds_config, zero_stage)

    def forward_loss(self, engine, batch: dict, device) -> StepLoss:
        """BCE-with-logits of one logit per sequence; every sample counts in the logged loss."""
        logits = engine(input_ids=batch["input_ids"].to(device),
                        attention_mask=batch["attention_mask"].to(device)).logits
        per_sample, loss = classification_loss(logits, batch["labels"].to(device))
        return StepLoss(loss, per_sample, torch.ones_like(per_sample, dtype=torch.bool), logits)

    def workflow_hooks(self, inputs: HookInputs):
        """Whole-split evaluation at epoch points, with the seed's per-run files."""
        source = inputs.source
        return [ClassifyEvalHook(inputs.run_dir, source, source.steps_for_epochs(1),
                                 self.cfg.classify.eval_every_epochs, self.cfg.train.micro_batch,
                                 to_dict(self.cfg))]
