"""Prompt/answer examples as token samples, laid out exactly like the JSONL mixin.

A sample is ``tokens = [bos] + ids(prompt) + ids(answer) + [eos]`` (bos/eos only when the
tokenizer defines them; prompt and answer are tokenized separately, as
:class:`megaproc.data.mixin.JsonlTaskDataset` does, so the pre-pretraining stream and the
pretraining mixin agree token for token).  Besides the batch contract's ``answer_mask`` (the
answer tokens and the eos: what the weighted loss up-weights) every sample carries the two
masks that decide correctness (see :mod:`megaproc.eval.answer_correctness`):

* ``word_mask``: the answer's tokens (the greedy prediction must equal each of them);
* ``boundary_mask``: the position after the answer (the eos) when the answer text ends in a
  word character (letter, digit or ``_``): the greedy prediction there must not continue the
  word, so ``" 12"`` followed by ``"3"`` is wrong while ``" 12"`` followed by eos or ``" 5"``
  is right.  Natural-language answers end with ``"."``, which already closes the word.
"""

from __future__ import annotations

import numpy as np
import torch

from megaproc.data.batch import collate
from megaproc.tokenizer import private_backend


class TaskEncoder:
    """Tokenizes prompt/answer pairs into samples (``tokens``, ``answer_mask``, ``word_mask``)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bos_id = getattr(tokenizer, "bos_token_id", None)
        self.eos_id = getattr(tokenizer, "eos_token_id", None)
        self._backend = private_backend(tokenizer)

    @property
    def num_special_tokens(self) -> int:
        """bos and eos tokens added around every example."""
        return int(self.bos_id is not None) + int(self.eos_id is not None)

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (no special tokens)."""
        if self._backend is not None:
            return [enc.ids for enc in self._backend.encode_batch(list(texts), add_special_tokens=False)]
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def sample(self, prompt_ids: list[int], answer_ids: list[int], answer_text: str) -> dict:
        """One sample from already tokenized prompt and answer."""
        head = [self.bos_id] if self.bos_id is not None else []
        tail = [self.eos_id] if self.eos_id is not None else []
        tokens = np.asarray(head + list(prompt_ids) + list(answer_ids) + tail, dtype=np.int64)
        answer_start = len(head) + len(prompt_ids)
        answer_mask = np.zeros(len(tokens), dtype=bool)
        answer_mask[answer_start:] = True
        word_mask = np.zeros(len(tokens), dtype=bool)
        word_end = answer_start + len(answer_ids)
        word_mask[answer_start:word_end] = True
        boundary_mask = np.zeros(len(tokens), dtype=bool)
        if tail and ends_in_word_character(answer_text):
            boundary_mask[word_end] = True
        return {"tokens": tokens, "answer_mask": answer_mask, "word_mask": word_mask,
                "boundary_mask": boundary_mask, "source": 0}

    def encode_pairs(self, pairs: list[tuple[str, str]]) -> list[dict]:
        """Samples for ``(prompt, answer)`` pairs (tokenized in one batch)."""
        if not pairs:
            return []
        ids = self.encode_texts([p for p, _ in pairs] + [a for _, a in pairs])
        half = len(pairs)
        return [self.sample(ids[k], ids[half + k], pairs[k][1]) for k in range(half)]


def is_word_character(char: str) -> bool:
    """Letters, digits and ``_`` continue a word."""
    return char.isalnum() or char == "_"


def ends_in_word_character(text: str) -> bool:
    """True when a following word character would make ``text`` a longer word."""
    return bool(text) and is_word_character(text[-1])


def collate_task(samples: list[dict], pad_id: int, pad_to: int | None = None) -> dict:
    """:func:`megaproc.data.batch.collate` (which carries ``word_mask``) plus ``boundary_mask``
    [B, T] aligned with the labels, and ``example_id``/``primary`` [B] (which example a row
    answers).

    Without ``pad_to`` the batch is as wide as its longest sample (padding never changes the
    loss or the predictions of real positions: attention is causal and pads are ignored).
    """
    batch = collate(samples, pad_id, pad_to=pad_to)
    # Rows of one example (its valid answers): ``example_id`` [B] and ``primary`` [B] (the row of
    # output_texts[0]); a sample without them is its own example.
    batch["example_id"] = torch.tensor([int(s.get("example_id", row)) for row, s in enumerate(samples)])
    batch["primary"] = torch.tensor([bool(s.get("primary", True)) for s in samples])
    boundary = torch.zeros_like(batch["answer_mask"])
    for row, sample in enumerate(samples):
        mask = np.asarray(sample["boundary_mask"], dtype=bool)[1:]
        boundary[row, :len(mask)] = torch.from_numpy(mask)
    batch["boundary_mask"] = boundary
    return batch
