"""The ``graph_search`` run kind: pre-pretraining on live graph-search examples.

Data
    :class:`~megaproc.data.task_source.TaskBatchSource` streams examples of the generator
    (``task.*``) at the curriculum's stage; the prompts of ``task.splits_dir``'s
    eval/test/mixin splits never appear.  There is no validation set: the held-out task
    evaluation on ``task.splits_dir/eval.jsonl`` replaces it.
Tokenizer
    ``task.tokenizer: symbolic`` gives the task vocabulary (one token per vertex id and control
    symbol, :mod:`megaproc.task_vocab`); otherwise ``data.tokenizer`` or the built-in one.
Loss
    ``train.loss`` over the answer (``weighted`` as the original ``pptrain.py``, or
    ``answer_word`` for the symbolic form).
Hooks
    the accuracy-gated curriculum (``curriculum.enabled``) or, without it, the held-out task
    accuracy every ``task.eval_every`` steps, plus the hooks of every run.
"""

from __future__ import annotations

import hashlib
import json
import os

from megaproc.data.task_source import build_task_source
from megaproc.errors import ConfigError
from megaproc.eval.answer_correctness import word_continuation_table
from megaproc.hooks import CurriculumHook, heldout_evaluation
from megaproc.runs.base import (CausalLMRun, HookInputs, check_path, check_tokenizer_path,
                                eval_runner)
from megaproc.synthetic import ReservedPrompts
from megaproc.task_vocab import task_tokenizer


class GraphSearchRun(CausalLMRun):
    """Live graph-search examples, optionally behind the accuracy-gated curriculum."""

    name = "graph_search"

    def resolve(self, world_size: int, check_files: bool = True) -> None:
        """The task stream trains alone; the tokenizer, splits and model name are checked."""
        cfg = self.cfg
        cfg.task.kind = "graph_search"
        if cfg.data.train or cfg.data.mixin_percent > 0:
            raise ConfigError("config key 'task.kind' trains on the task stream only; leave "
                              "data.train empty and data.mixin_percent at 0")
        check_tokenizer_path(cfg.data.tokenizer, check_files)
        if cfg.task.tokenizer == "symbolic":
            if cfg.task.natural_language:
                raise ConfigError("config key 'task.tokenizer' symbolic needs "
                                  "task.natural_language: false (one token per symbol)")
            if cfg.data.tokenizer:
                raise ConfigError("config key 'data.tokenizer' must be null with "
                                  "task.tokenizer: symbolic (the run uses the task vocabulary)")
        else:
            self.resolve_tokenizer()
        self.check_model_name()
        check_path(cfg.task.splits_dir, "task.splits_dir", "splits directory", check_files)

    def build_tokenizer(self):
        """The task vocabulary (``task.tokenizer: symbolic``) or ``data.tokenizer``."""
        return task_tokenizer(self.cfg.task) or super().build_tokenizer()

    def data_fingerprint(self, tokenizer) -> str:
        """The generator settings, the reserved split prompts and the tokenizer's vocabulary
        (never the default corpus, which such a run does not read)."""
        task = self.cfg.task
        reserved = ReservedPrompts.from_split_dir(task.splits_dir).fingerprint() \
            if task.splits_dir and os.path.isdir(task.splits_dir) else "none"
        vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        parts = ["graph_search", str(task.max_input_size), str(task.max_lookahead),
                 str(task.natural_language), str(task.seed), reserved, vocab.hexdigest()[:16]]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def build_data(self, tokenizer, rank: int, world_size: int, pad_id: int, log_fn):
        """The live task stream at ``curriculum.start_stage``; no validation dataset."""
        cfg = self.cfg
        source = build_task_source(cfg.task, cfg.train, cfg.curriculum.start_stage, tokenizer,
                                   rank, world_size, pad_id, log_fn)
        return source, None

    def workflow_hooks(self, inputs: HookInputs):
        """The curriculum, with the held-out evaluation at its events."""
        cfg = self.cfg
        if not cfg.curriculum.enabled:
            return []
        heldout = heldout_evaluation(cfg.task, cfg.train.seq_len)
        if heldout is None:
            inputs.log("warning: task.splits_dir is not set: no held-out evaluation")
        c = cfg.curriculum
        continues_word = word_continuation_table(inputs.tokenizer, inputs.hf_config.vocab_size)
        return [CurriculumHook(cfg.task.max_lookahead, c.curr_window, c.curr_check_every,
                               c.curr_threshold, c.start_stage, source=inputs.source,
                               heldout=heldout, runner=eval_runner(inputs),
                               continues_word=continues_word.to(inputs.device))]

    def workflow_evaluations(self, inputs: HookInputs):
        """Without the curriculum: held-out task accuracy every ``task.eval_every`` steps."""
        cfg = self.cfg
        if cfg.curriculum.enabled or not cfg.task.eval_every:
            return []
        heldout = heldout_evaluation(cfg.task, cfg.train.seq_len, cfg.task.eval_every)
        return [heldout] if heldout is not None else []
