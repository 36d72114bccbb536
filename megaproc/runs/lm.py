"""The ``lm`` run kind: a causal LM on indexed data (pretraining, downstream fine-tuning).

Data
    ``data.train``: indexed ``.bin/.idx`` prefixes and/or prompt/answer ``.jsonl`` files with
    blend weights; empty means the built-in default corpus (the Python standard library's
    sources, :mod:`megaproc.data.default_corpus`), whose prefix and tokenizer the resolved config
    names.  ``data.mixin`` adds the synthetic mixin at ``data.mixin_percent`` of the samples.
    Validation: ``data.valid`` or a held-out document range of each indexed train prefix.
    ``data.reset_position_ids`` / ``reset_attention_mask`` / ``eod_mask_loss``: document
    masking of the packed samples (:mod:`megaproc.data.document_mask`), Megatron-LM's switches.
Loss
    ``train.loss`` over next-token predictions (``mean`` for corpora, ``answer_only`` for
    DeepMind Mathematics prompt/answer files); the mixin's rows train with ``data.mixin_loss``
    when it is set (e.g. ``answer_word``: only the answer, not the eos or the prompt).
Hooks
    validation loss (when there is a validation set), held-out graph-search accuracy every
    ``task.eval_every`` steps when ``task.splits_dir`` is set (pretraining with the mixin), plus
    the hooks of every run.
"""

from __future__ import annotations

import hashlib
import os

from megaproc.config import data_sources
from megaproc.data.build import MIXIN_NAME, build_train_valid, is_prompt_answer_file
from megaproc.data.default_corpus import default_corpus_paths
from megaproc.data.document_mask import document_inputs
from megaproc.data.document_mask import data_document_masking, data_switch_keys
from megaproc.data.indexed import IndexedDataset, content_fingerprint
from megaproc.data.sources import IndexedBatchSource
from megaproc.errors import ConfigError
from megaproc.hooks import heldout_evaluation
from megaproc.loss import per_source_loss, token_cross_entropy
from megaproc.models.document_attention import document_attention_problem
from megaproc.models.factory import run_config
from megaproc.models.sliced_head import forward_logits
from megaproc.runs.base import (CausalLMRun, HookInputs, StepLoss, check_path,
                                check_tokenizer_path)


# Any vocabulary size builds the model's config; only its type and attention kernel are read.
DOCUMENT_CHECK_VOCAB = 64


def _file_or_prefix_fingerprint(path: str) -> str:
    if os.path.isfile(path):
        return content_fingerprint(path)
    if IndexedDataset.exists(path):
        return IndexedDataset(path).content_fingerprint()
    return "missing"


def check_source_exists(prefix: str, key: str) -> None:
    """An indexed prefix needs ``PREFIX.bin`` and ``PREFIX.idx``; a prompt/answer file itself."""
    if is_prompt_answer_file(prefix):
        check_path(prefix, key, "prompt/answer file", True)
    elif not IndexedDataset.exists(prefix):
        raise ConfigError(f"config key '{key}': indexed data prefix not found: {prefix} "
                          f"(expected {prefix}.bin and {prefix}.idx)")


class LMRun(CausalLMRun):
    """Indexed (or prompt/answer) data blended with the optional mixin."""

    name = "lm"
    source_losses: dict[int, str] = {}  # blend source id -> its own loss kind (build_data)

    def resolve(self, world_size: int, check_files: bool = True) -> None:
        """Typed data sources (the built-in corpus when ``data.train`` is empty), the tokenizer
        that wrote indexed prefixes, files that must exist, the model name."""
        data = self.cfg.data
        builtin = not data.train
        if self.cfg.task.tokenizer != "data":
            raise ConfigError("config key 'task.tokenizer' symbolic is the vocabulary of the "
                              "graph-search stream (task.kind: graph_search); an lm run reads "
                              "data.tokenizer")
        check_tokenizer_path(data.tokenizer, check_files)
        if builtin:
            tokenizer_dir, prefix = default_corpus_paths(data.default_vocab_size)
            if data.tokenizer and data.tokenizer != str(tokenizer_dir):
                raise ConfigError("config key 'data.tokenizer' must be left unset when training "
                                  "on the built-in corpus (data.train empty): its token ids "
                                  "belong to the built-in tokenizer")
            data.train = [{"prefix": str(prefix), "weight": 1.0, "name": "corpus"}]
        data.train = data_sources(data.train, "data.train")
        data.valid = data_sources(data.valid, "data.valid")
        indexed = [s for s in data.train if not is_prompt_answer_file(s.prefix)]
        if indexed and not builtin and not data.tokenizer:
            # Token ids of an indexed prefix mean something only with the tokenizer that wrote
            # them; prompt/answer (.jsonl) sources are tokenized on the fly by any tokenizer.
            raise ConfigError("config key 'data.tokenizer' must be set when data.train names "
                              "indexed prefixes")
        self.resolve_tokenizer()
        self.check_model_name()
        if check_files:
            for key in ("train", "valid"):
                for i, source in enumerate(getattr(data, key)):
                    if not (builtin and key == "train"):
                        check_source_exists(source.prefix, f"data.{key}[{i}]")
            if data.mixin and data.mixin_percent > 0 and not (
                    os.path.isfile(data.mixin) or IndexedDataset.exists(data.mixin)):
                raise ConfigError(f"config key 'data.mixin': not found: {data.mixin} (expected a "
                                  ".jsonl file or an indexed prefix with .bin/.idx)")
            check_path(self.cfg.task.splits_dir, "task.splits_dir", "splits directory",
                       check_files)

    def check_document_masking(self, check_files: bool = True) -> None:
        """The document-masking switches need a model family and an attention kernel that
        take them (:func:`~megaproc.models.document_attention.document_attention_problem`)."""
        data, model = self.cfg.data, self.cfg.model
        if not data.document_masking:
            return
        if model.pretrained_path and not os.path.isdir(os.path.expanduser(model.pretrained_path)):
            return  # check_files=False for a model a later run writes: checked when it is built
        try:
            config = run_config(model, DOCUMENT_CHECK_VOCAB)
        except ValueError as exc:
            raise ConfigError(f"config key 'model': {exc}") from None
        problem = document_attention_problem(config, data.reset_attention_mask)
        if problem:
            raise ConfigError(f"config key {data_switch_keys(data)}: {problem}")

    def data_fingerprint(self, tokenizer) -> str:
        """The content of every prefix and the mixin, the weights and blend settings."""
        data = self.cfg.data
        parts = [data.blend_by, str(data.valid_fraction), str(data.mixin_percent)]
        for key in ("train", "valid"):
            for source in getattr(data, key):
                parts.append(f"{key}:{_file_or_prefix_fingerprint(source.prefix)}:{source.weight}")
        if data.mixin:
            parts.append("mixin:" + _file_or_prefix_fingerprint(data.mixin))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def build_data(self, tokenizer, rank: int, world_size: int, pad_id: int, log_fn):
        """The blend's batch source and the validation blend."""
        cfg, t = self.cfg, self.cfg.train
        # Whole epochs are built, so the planned samples do not depend on max_steps; this only
        # says how many samples the run needs at least.
        global_batch = t.micro_batch * t.grad_accum * world_size
        valid_samples = cfg.eval.max_batches * t.micro_batch * world_size
        train, valid, names = build_train_valid(cfg.data, tokenizer, t.seq_len, cfg.run.seed,
                                                t.max_steps * global_batch, valid_samples)
        mixin_loss = cfg.data.mixin_loss
        # The mixin is the blend's last source; its rows may train with their own loss.
        self.source_losses = {len(names) - 1: mixin_loss} \
            if names[-1] == MIXIN_NAME and mixin_loss not in (None, t.loss) else {}
        source = IndexedBatchSource(train, t.micro_batch, t.grad_accum, world_size, rank, pad_id,
                                    t.seq_len,
                                    documents=data_document_masking(cfg.data, tokenizer))
        return source, valid

    def forward_loss(self, engine, batch: dict, device) -> StepLoss:
        """The causal-LM losses; rows of the mixin train with ``data.mixin_loss`` when it
        differs from ``train.loss`` (:func:`~megaproc.loss.per_source_loss`, full head)."""
        if not self.source_losses or not bool(
                (batch["source"] == next(iter(self.source_losses))).any()):
            return super().forward_loss(engine, batch, device)
        labels = batch["labels"].to(device)
        logits = forward_logits(engine, batch["input_ids"].to(device),
                                batch["attention_mask"].to(device), None,
                                **document_inputs(batch, device))
        per_token = token_cross_entropy(logits, labels)
        loss, mask = per_source_loss(self.source_losses, self.cfg.train.loss, batch["source"],
                                     per_token, labels, batch["answer_mask"].to(device),
                                     batch["word_mask"].to(device))
        return StepLoss(loss, per_token, mask, logits)

    def workflow_evaluations(self, inputs: HookInputs):
        """Held-out task accuracy every ``task.eval_every`` steps (pretraining with the mixin)."""
        task = self.cfg.task
        heldout = heldout_evaluation(task, self.cfg.train.seq_len, task.eval_every) \
            if task.eval_every else None
        return [heldout] if heldout is not None else []
