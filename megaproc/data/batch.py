"""The sample and batch contract shared by every dataset and the trainer.

A *sample* is a dict produced by a dataset's ``__getitem__``:

- ``tokens``: 1-D integer array of at most ``seq_len + 1`` token ids (inputs are
  ``tokens[:-1]``, labels ``tokens[1:]``);
- ``source`` (optional, default 0): integer id of the blend source it came from;
- ``answer_mask`` (optional): 1-D bool array aligned with ``tokens``; True marks the answer
  tokens and the eos after them (what ``answer_only`` trains);
- ``word_mask`` (optional): the answer's own tokens, without that eos (what ``weighted``
  up-weights and what correctness checks); ``answer_mask`` when absent.

:func:`collate` turns a list of samples into model-ready tensors, padding short samples; with
``documents`` (a :class:`megaproc.data.document_mask.DocumentMasking`) it adds the document
masking of packed samples (``position_ids``, ``document_ids``, no loss on EOD inputs).
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = -100


def collate(samples: list[dict], pad_id: int, pad_to: int | None = None,
            documents=None) -> dict[str, torch.Tensor]:
    """Stack samples into a batch.

    Returns ``input_ids`` [B, T], ``labels`` [B, T] (``IGNORE_INDEX`` on padding),
    ``attention_mask`` [B, T], ``source`` [B], ``answer_mask`` and ``word_mask`` [B, T] (aligned
    with labels).
    ``T`` is ``pad_to - 1`` when given, else the longest sample minus one.
    ``documents`` (a ``DocumentMasking`` or None) applies the document switches
    (:mod:`megaproc.data.document_mask`); None leaves the batch as described.
    """
    lengths = [len(s["tokens"]) for s in samples]
    width = (pad_to if pad_to is not None else max(lengths)) - 1
    batch = len(samples)
    input_ids = np.full((batch, width), pad_id, dtype=np.int64)
    labels = np.full((batch, width), IGNORE_INDEX, dtype=np.int64)
    attention = np.zeros((batch, width), dtype=np.int64)
    answer = np.zeros((batch, width), dtype=bool)
    word = np.zeros((batch, width), dtype=bool)
    sources = np.zeros(batch, dtype=np.int64)
    for row, sample in enumerate(samples):
        tokens = np.asarray(sample["tokens"], dtype=np.int64)
        n = len(tokens) - 1
        if n > width:
            raise ValueError(f"sample of {n + 1} tokens does not fit a batch of width {width + 1}")
        input_ids[row, :n] = tokens[:-1]
        labels[row, :n] = tokens[1:]
        attention[row, :n] = 1
        if "answer_mask" in sample:
            answer[row, :n] = np.asarray(sample["answer_mask"], dtype=bool)[1:]
        word_mask = sample.get("word_mask", sample.get("answer_mask"))
        if word_mask is not None:
            word[row, :n] = np.asarray(word_mask, dtype=bool)[1:]
        sources[row] = int(sample.get("source", 0))
    batch = {
        "input_ids": torch.from_numpy(input_ids),
        "labels": torch.from_numpy(labels),
        "attention_mask": torch.from_numpy(attention),
        "answer_mask": torch.from_numpy(answer),
        "word_mask": torch.from_numpy(word),
        "source": torch.from_numpy(sources),
    }
    # Duck-typed (document_mask imports this module for IGNORE_INDEX, not the reverse).
    return batch if documents is None else documents.apply(batch)


def rank_sample_indices(consumed: int, micro_step: int, micro_batch: int, world_size: int,
                        rank: int) -> np.ndarray:
    """Global sample indices for one rank's micro-batch.

    The global order is fixed: optimizer step k consumes indices
    ``[consumed, consumed + micro_batch * grad_accum * world_size)``; inside it, micro-step
    ``a`` takes the next ``micro_batch * world_size`` indices and rank ``r`` the ``r``-th
    slice of ``micro_batch``.  So ranks never overlap and the order of samples does not
    depend on the world size.
    """
    start = consumed + micro_step * micro_batch * world_size + rank * micro_batch
    return np.arange(start, start + micro_batch, dtype=np.int64)
