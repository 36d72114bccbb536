"""Language-model loss, perplexity and token accuracy on token windows of held-out text.

Two evaluators, one computation (:func:`window_metrics`):

``prefix`` (:class:`PrefixEvaluator`, ``--prefix P``)
    The samples of a :class:`~megaproc.data.gpt_dataset.GPTDataset` (seed 0) over an indexed
    ``.bin/.idx`` pair.
``hf_dataset`` (:class:`HFDatasetEvaluator`, ``--hf-dataset DIR``)
    A ``datasets`` directory written by ``save_to_disk`` (``--hf-split``, default validation,
    else test, else the only split): the ``--text-key`` texts tokenized with EOS after every
    document, or an ``input_ids`` column used as it is, concatenated into one token stream cut
    into consecutive windows (neighbours share one token, as the indexed samples do).

A window holds ``seq_len`` tokens (the model sees ``seq_len - 1`` and predicts each next one;
``seq_len`` defaults to the model's context).  ``max_batches`` batches of windows are
evaluated, or every window of the split with ``max_batches=0``.  Batches are shared over the
ranks by :func:`megaproc.eval.sharding.run_in_lockstep` and their ``[loss_sum, tokens,
correct]`` sums added in batch order, so any number of ranks gives the same numbers.
Metrics: ``val_loss``, ``val_ppl``, ``val_token_acc``, ``num_tokens``
(:func:`megaproc.eval.lm.lm_metrics_in_lockstep`, the computation training validation shares).

Both take the document masking of training (``documents``: ``reset_position_ids``,
``reset_attention_mask``, ``eod_mask_loss``, as ``python -m megaproc.evaluate
--reset-position-ids --reset-attention-mask --eod-mask-loss``): a window spanning several
documents is then scored as a run with ``data.reset_*`` / ``data.eod_mask_loss`` trains it
(:mod:`megaproc.data.document_mask`; EOD = the tokenizer's EOS).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megaproc.data.build import open_indexed
from megaproc.data.document_mask import document_masking
from megaproc.data.gpt_dataset import GPTDataset
from megaproc.data.indexed import IndexedDataset
from megaproc.eval.evaluator import EvalContext, EvalResult, rows_per_batch
from megaproc.eval.lm import lm_metrics_in_lockstep
from megaproc.eval.rows import EvalInputError
from megaproc.models.document_attention import document_attention_problem

TOKENIZE_CHUNK = 256  # documents tokenized per call


def window_count(available: int, max_batches: int, rows: int) -> int:
    """Windows to evaluate: all ``available`` with ``max_batches=0``, else at most
    ``max_batches * rows``."""
    return available if max_batches == 0 else min(available, max_batches * rows)


DOCUMENT_FLAGS = {"reset_position_ids": "--reset-position-ids",
                  "reset_attention_mask": "--reset-attention-mask",
                  "eod_mask_loss": "--eod-mask-loss"}


def window_document_masking(ctx: EvalContext, switches: dict | None):
    """The :class:`~megaproc.data.document_mask.DocumentMasking` of the ``switches``
    (``{"reset_position_ids": bool, ...}``) for ``ctx``'s tokenizer and model, or None when
    none is on; a tokenizer without EOS or a model that cannot take them is one clear line."""
    switches = {key: bool((switches or {}).get(key)) for key in DOCUMENT_FLAGS}
    flags = " / ".join(flag for key, flag in DOCUMENT_FLAGS.items() if switches[key])
    documents = document_masking(ctx.tokenizer, **switches, what=flags)
    model = getattr(ctx.forward, "model", None)
    config = getattr(getattr(model, "module", model), "config", None)
    if documents is not None and config is not None:
        problem = document_attention_problem(config, documents.reset_attention_mask)
        if problem:
            raise EvalInputError(f"{flags}: {problem}")
    return documents


def window_metrics(ctx: EvalContext, sample, count: int, seq_len: int, rows: int,
                   desc: str, documents=None) -> dict:
    """LM metrics of windows ``sample(0) .. sample(count - 1)`` (token arrays of ``seq_len``
    tokens), ``rows`` windows per forward (collective over ``ctx``'s ranks), with the
    document masking ``documents`` (a ``DocumentMasking`` or None)."""
    batches = [range(start, min(start + rows, count)) for start in range(0, count, rows)]
    return lm_metrics_in_lockstep(ctx, lambda i: {"tokens": np.asarray(sample(i))}, batches,
                                  seq_len, desc, documents=documents)


def _window_length(seq_len: int, max_length: int) -> int:
    length = min(seq_len or max_length, max_length)
    if length < 2:
        raise EvalInputError(f"--seq-len {length}: a window needs at least 2 tokens")
    return length


class PrefixEvaluator:
    """LM metrics on the samples of an indexed prefix (name ``prefix``)."""

    name = "prefix"

    def __init__(self, prefix: str, seq_len: int = 0, max_batches: int = 20,
                 documents: dict | None = None):
        if not IndexedDataset.exists(prefix):
            raise EvalInputError(f"--prefix {prefix}: indexed data not found "
                                 f"(expected {prefix}.bin and {prefix}.idx)")
        self.prefix, self.seq_len, self.max_batches = str(prefix), int(seq_len), int(max_batches)
        self.documents = documents  # the document-masking switches (see the module docstring)

    def run(self, ctx: EvalContext) -> EvalResult:
        """Evaluate the windows (collective over ``ctx``'s ranks)."""
        length = _window_length(self.seq_len, ctx.max_length)
        # GPTDataset samples hold seq_len + 1 tokens: a window of `length` tokens.
        dataset = GPTDataset(open_indexed(self.prefix, "--prefix"), length - 1, None, seed=0,
                             name="valid")
        rows = rows_per_batch(ctx.batch_size, length)
        count = window_count(len(dataset), self.max_batches, rows)
        if count == 0:
            raise EvalInputError(f"--prefix {self.prefix}: no samples of {length} tokens")
        metrics = window_metrics(ctx, lambda i: dataset[i]["tokens"], count, length, rows,
                                 "prefix", window_document_masking(ctx, self.documents))
        return EvalResult(metrics, [], {"path": self.prefix, "seq_len": length})


def open_hf_dataset(path: str, split: str | None, text_key: str):
    """The ``datasets.Dataset`` to evaluate, its split name and the column used (``text_key``
    or ``input_ids``)."""
    from datasets import DatasetDict, load_from_disk  # heavy: only with --hf-dataset

    if not Path(path).is_dir():
        raise EvalInputError(f"--hf-dataset {path}: directory not found")
    try:
        dataset = load_from_disk(path)
    except (FileNotFoundError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EvalInputError(f"--hf-dataset {path}: not a dataset saved with save_to_disk "
                             f"({first})") from None
    if isinstance(dataset, DatasetDict):
        names = list(dataset.keys())
        if split is None:
            split = next((s for s in ("validation", "test") if s in dataset),
                         names[0] if len(names) == 1 else None)
        if split not in dataset:
            raise EvalInputError(f"--hf-dataset {path}: choose a split with --hf-split "
                                 f"({', '.join(names)})")
        dataset = dataset[split]
    elif split is not None:
        raise EvalInputError(f"--hf-dataset {path}: a single dataset has no splits (--hf-split)")
    if text_key in dataset.column_names:
        return dataset, split, text_key
    if "input_ids" in dataset.column_names:
        return dataset, split, "input_ids"
    raise EvalInputError(f"--hf-dataset {path}: no {text_key!r} or 'input_ids' column "
                         f"(columns: {', '.join(dataset.column_names)})")


def token_stream(dataset, column: str, tokenizer, needed: int | None) -> np.ndarray:
    """The dataset's documents as one int64 token stream (EOS after each text), read until
    ``needed`` tokens are there (None: all)."""
    eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    pieces, total = [], 0
    for start in range(0, len(dataset), TOKENIZE_CHUNK):
        texts = dataset[start:start + TOKENIZE_CHUNK][column]
        if column == "input_ids":  # already tokenized (e.g. grouped blocks): used as they are
            ids = [list(map(int, row)) for row in texts]
        else:
            ids = [x + eos for x in tokenizer([t or "" for t in texts],
                                              add_special_tokens=False)["input_ids"]]
        for piece in ids:
            pieces.append(np.asarray(piece, dtype=np.int64))
            total += len(piece)
        if needed is not None and total >= needed:
            break
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


class HFDatasetEvaluator:
    """LM metrics on windows of a ``save_to_disk`` dataset's token stream (name
    ``hf_dataset``)."""

    name = "hf_dataset"

    def __init__(self, path: str, split: str | None = None, text_key: str = "text",
                 seq_len: int = 0, max_batches: int = 20, documents: dict | None = None):
        self.dataset, self.split, self.column = open_hf_dataset(path, split, text_key)
        self.path, self.seq_len, self.max_batches = str(path), int(seq_len), int(max_batches)
        self.documents = documents  # the document-masking switches (see the module docstring)

    def run(self, ctx: EvalContext) -> EvalResult:
        """Tokenize, cut and evaluate the windows (collective over ``ctx``'s ranks)."""
        length = _window_length(self.seq_len, ctx.max_length)
        step = length - 1
        rows = rows_per_batch(ctx.batch_size, length)
        needed = None if self.max_batches == 0 else self.max_batches * rows * step + 1
        stream = token_stream(self.dataset, self.column, ctx.tokenizer, needed)
        count = window_count(max(0, (len(stream) - 1) // step), self.max_batches, rows)
        if count == 0:
            raise EvalInputError(f"--hf-dataset {self.path}: fewer than {length} tokens")
        metrics = window_metrics(ctx, lambda k: stream[k * step:k * step + length], count,
                                 length, rows, "hf_dataset",
                                 window_document_masking(ctx, self.documents))
        info = {"path": self.path, "column": self.column, "seq_len": length}
        if self.split is not None:
            info["split"] = self.split
        return EvalResult(metrics, [], info)
