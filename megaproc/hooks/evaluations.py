"""The evaluations a run's config asks for, built (and their inputs checked) before step 0.

=====================  =============================================  ===========================
evaluation             evaluator (``megaproc.eval``)                  when
=====================  =============================================  ===========================
held-out task          ``split`` on ``task.eval_subset_size`` seeded  ``task.eval_every`` and step
                       examples of ``task.splits_dir/eval.jsonl``,    0 (the curriculum: at its
                       ``task.eval_batch_size`` rows per forward      own events instead)
validation             ``validation``: the validation blend, or       ``eval.every``; at the end
                       each named ``data.valid`` source               with ``eval.at_end``
HellaSwag / EWoK /     ``hellaswag`` / ``ewok`` / ``dm_math`` on      ``eval.<name>_every``; at
DeepMind Mathematics   ``eval.<name>_path``, ``eval.batch_size`` rows  the end with ``eval.at_end``
=====================  =============================================  ===========================

Validation evaluates ``eval.max_batches`` global batches: ``train.micro_batch`` samples per rank
and forward, ``eval.max_batches * world_size`` batches in all, of ``train.seq_len + 1`` tokens,
over the tokens ``train.loss`` trains (:func:`validation_mask_key`).  With names in
``data.valid``, every source is evaluated on its own (unnamed entries of such a list take their
prefix's basename): an indexed prefix by the command line's ``prefix`` evaluator - its first
windows of a seed-0 ``GPTDataset``, the same for every run whatever ``run.seed``, i.e. ``python
-m megaproc.evaluate --prefix P --seq-len SEQ_LEN+1 --batch-size MICRO_BATCH --max-batches
MAX_BATCHES*WORLD_SIZE`` - and a prompt/answer ``.jsonl`` by its first examples in a seed-0
order (each at most once).
"""

from __future__ import annotations

import os
from pathlib import Path

from megaproc.config import data_sources
from megaproc.data.build import is_prompt_answer_file, open_source, source_names
from megaproc.data.document_mask import DATA_SWITCHES, data_document_masking
from megaproc.eval.ewok import EwokEvaluator
from megaproc.eval.exact_match import DmMathEvaluator
from megaproc.eval.hellaswag import HellaswagEvaluator
from megaproc.eval.lm_windows import PrefixEvaluator
from megaproc.eval.task_accuracy import SplitEvaluator, load_eval_records
from megaproc.eval.validation import SampleLMEvaluator, SourcesEvaluator
from megaproc.hooks.evaluation import Evaluation, ItemRowsFile

# The batch mask validation averages over for a ``train.loss`` that trains only some tokens.
VALIDATION_MASK = {"answer_only": "answer_mask", "answer_word": "word_mask"}
EWOK_ITEMS = "ewok_items.jsonl"  # the seed's per-item EWoK rows, beside step_metrics.json


def validation_mask_key(loss_kind: str) -> str | None:
    """The batch mask validation averages over for ``train.loss = loss_kind`` (None: all)."""
    return VALIDATION_MASK.get(loss_kind)


def heldout_evaluation(task_cfg, seq_len: int, every: int = 0) -> Evaluation | None:
    """The held-out task evaluation (``split``) on ``task.eval_subset_size`` examples of
    ``task.splits_dir/eval.jsonl`` drawn with ``task.seed`` (all of them with 0), at most
    ``seq_len + 1`` tokens each; None without a splits dir.  At step 0 and every ``every``
    steps when the hook runs it (the curriculum runs it at its own events)."""
    if not task_cfg.splits_dir:
        return None
    path = os.path.join(task_cfg.splits_dir, "eval.jsonl")
    records = load_eval_records(path, task_cfg.eval_subset_size, seed=task_cfg.seed)
    return Evaluation(SplitEvaluator(records, path, max_tokens=seq_len + 1),
                      batch_size=task_cfg.eval_batch_size, every=int(every), at_start=True)


def benchmark_evaluations(eval_cfg, run_dir: str | Path) -> list[Evaluation]:
    """HellaSwag, EWoK and DeepMind Mathematics for the ``eval.<name>_every`` that are set (the
    files are read and checked now: bad input fails the run before step 0)."""
    limit = int(eval_cfg.max_examples)
    evaluations = []

    def add(evaluator, every: int, sinks=()):
        evaluations.append(Evaluation(evaluator, eval_cfg.batch_size, every,
                                      at_end=eval_cfg.at_end, sinks=sinks))

    if eval_cfg.hellaswag_every:
        add(HellaswagEvaluator.from_file(eval_cfg.hellaswag_path, limit), eval_cfg.hellaswag_every)
    if eval_cfg.ewok_every:
        add(EwokEvaluator.from_source(eval_cfg.ewok_path, limit), eval_cfg.ewok_every,
            (ItemRowsFile(Path(run_dir) / EWOK_ITEMS),))
    if eval_cfg.dm_math_every:
        add(DmMathEvaluator.from_path(eval_cfg.dm_math_path, limit), eval_cfg.dm_math_every)
    return evaluations


def validation_evaluation(cfg, tokenizer, valid_dataset, world_size: int) -> Evaluation | None:
    """Validation of the run (see the module docstring); None without a validation set or
    when it would never run (``eval.every`` 0 and ``eval.at_end`` false)."""
    train, ev = cfg.train, cfg.eval
    if not (ev.every or ev.at_end):
        return None
    mask_key = validation_mask_key(train.loss)
    batches = ev.max_batches * max(1, int(world_size))
    pad_to = train.seq_len + 1  # the training sample length (the extra token is a label)
    valid = data_sources(cfg.data.valid, "data.valid")
    # Validation sees packed windows as training does (data.reset_* / eod_mask_loss).
    documents = data_document_masking(cfg.data, tokenizer)
    switches = {key: bool(getattr(cfg.data, key, False)) for key in DATA_SWITCHES}
    if any(source.name for source in valid):
        named = []
        for i, (name, source) in enumerate(zip(source_names(valid), valid)):
            if is_prompt_answer_file(source.prefix):
                examples = open_source(source.prefix, f"data.valid[{i}]", tokenizer,
                                       train.seq_len, seed=0)
                evaluator = SampleLMEvaluator(examples, batches, pad_to, mask_key,
                                              train.sliced_head, {"path": source.prefix},
                                              documents)
            else:
                evaluator = PrefixEvaluator(source.prefix, pad_to, batches, switches)
            named.append((name, evaluator))
        evaluator = SourcesEvaluator(named)
    elif valid_dataset is not None:
        evaluator = SampleLMEvaluator(valid_dataset, batches, pad_to, mask_key, train.sliced_head,
                                      documents=documents)
    else:
        return None
    return Evaluation(evaluator, batch_size=train.micro_batch, every=ev.every, at_end=ev.at_end)
