"""Prompt/answer examples: the one token layout, and a ``.jsonl`` file of them as a dataset.

Layout (:class:`PromptAnswerEncoder`)
    A sample is ``tokens = [bos] + ids(prompt) + ids(answer) + [eos]`` (bos/eos only when the
    tokenizer defines them; prompt and answer are tokenized separately, so the live
    pre-pretraining stream, the synthetic mixin and a DeepMind-Mathematics training file agree
    token for token).  Besides the batch contract's ``answer_mask`` (the answer tokens and the
    eos: what ``answer_only`` trains) every sample carries the two masks that decide
    correctness (see :mod:`megaproc.eval.answer_correctness`):

    * ``word_mask``: the answer's tokens (the greedy prediction must equal each of them);
    * ``boundary_mask``: the position after the answer (the eos) when the answer text ends in a
      word character (letter, digit or ``_``): the greedy prediction there must not continue
      the word, so ``" 12"`` followed by ``"3"`` is wrong while ``" 12"`` followed by eos or
      ``" 5"`` is right.  Natural-language answers end with ``"."``, which already closes the
      word.

Files (:class:`PromptAnswerDataset`)
    Each line is a JSON object with a prompt and an answer: the graph-search splits written by
    ``data_tools.build_splits`` have ``{"prompt": str, "output_texts": [str, ...], ...}`` and we
    train on the first non-empty output text (as the original pre-pretraining scripts did);
    ``{"prompt": str, "answer": str}`` works too (DeepMind Mathematics).  The same class serves
    the synthetic mixin and ordinary ``.jsonl`` training or validation files.

    Loading scans the file once: it records each example's byte offset and token length in
    numpy arrays (no per-example Python objects are kept) and drops examples longer than
    ``seq_len + 1`` tokens with a warning (:attr:`PromptAnswerDataset.num_dropped`).  Items are
    re-read and re-tokenized when requested.  Index ``i`` is example ``perm(i // n)[i % n]``
    where ``perm(e)`` is a seeded permutation of the ``n`` kept examples for pass ``e``, so the
    dataset cycles deterministically with a fresh order every pass, and item ``i`` depends only
    on the file, the tokenizer and the seed - never on ``num_samples`` (which only sets
    ``len()``).
"""

from __future__ import annotations

import copy
import json
import os
import warnings

import numpy as np
import torch

from megaproc.data.batch import collate
from megaproc.tokenizer import private_backend


class PromptAnswerEncoder:
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


def collate_prompt_answer(samples: list[dict], pad_id: int, pad_to: int | None = None) -> dict:
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


# ----------------------------------------------------------------------------- files
_BATCH = 1024  # examples tokenized together while scanning


def _answer_text(record: dict, answer_key: str | None):
    """The answer of ``record``: its ``answer_key`` value, or ``output_texts``/``answer``;
    lists give their first non-empty string.  None when there is no usable answer."""
    keys = (answer_key,) if answer_key else ("output_texts", "answer")
    for key in keys:
        value = record.get(key)
        if isinstance(value, str):
            return value if value else None
        if isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, str) and item:
                    return item
            return None
    return None


class PromptAnswerDataset:
    """Tokenized prompt/answer examples; items are ``{"tokens", "answer_mask", "word_mask",
    "length"}``.

    ``tokens`` is ``[bos] + prompt ids + answer ids + [eos]`` (bos/eos only when the tokenizer
    defines them) as int64; ``answer_mask`` is True on the answer tokens and the eos,
    ``word_mask`` on the answer tokens only.
    ``num_samples`` sets ``len()`` (default: one pass over the kept examples); any
    non-negative index is valid, later passes use new permutations.
    """

    def __init__(self, path: str, tokenizer, seq_len: int, prompt_key: str = "prompt",
                 answer_key: str | None = None, seed: int = 0, num_samples: int | None = None,
                 name: str = "mixin"):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"mixin file not found: {self.path}")
        self.tokenizer = tokenizer
        self.seq_len = int(seq_len)
        self.prompt_key = prompt_key
        self.answer_key = answer_key
        self.seed = int(seed)
        self.name = name
        self._encoder = None
        self._specials = self.encoder.num_special_tokens
        self.num_dropped = 0
        self.num_invalid = 0
        self.offsets, self.line_bytes, self.lengths = self._scan()
        if len(self.offsets) == 0:
            raise ValueError(f"{self.path}: no usable examples (dropped {self.num_dropped} longer "
                             f"than {self.seq_len + 1} tokens, {self.num_invalid} without prompt/answer)")
        self.num_samples = len(self.offsets) if num_samples is None else int(num_samples)
        self._fd = None
        self._fd_pid = None
        self._perm = (None, None)  # (epoch, permutation), replaced atomically

    # ------------------------------------------------------------------ loading
    def _texts(self, raw: bytes, line_no: int):
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path}:{line_no}: invalid JSON ({exc.msg})") from None
        prompt = record.get(self.prompt_key) if isinstance(record, dict) else None
        answer = _answer_text(record, self.answer_key) if isinstance(record, dict) else None
        if not isinstance(prompt, str) or answer is None:
            return None
        return prompt, answer

    @property
    def encoder(self) -> PromptAnswerEncoder:
        """This dataset's encoder (its own tokenizer backend; rebuilt after unpickling)."""
        if self._encoder is None:
            self._encoder = PromptAnswerEncoder(self.tokenizer)
        return self._encoder

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""
        return self.encoder.encode_texts(texts)

    def _scan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        limit = self.seq_len + 1
        offsets, line_bytes, lengths = [], [], []
        pending: list[tuple[int, int, str, str]] = []

        def flush():
            if not pending:
                return
            ids = self._encode([p for _, _, p, _ in pending] + [a for _, _, _, a in pending])
            half = len(pending)
            sizes = np.array([len(ids[k]) + len(ids[half + k]) for k in range(half)]) + self._specials
            keep = sizes <= limit
            self.num_dropped += int((~keep).sum())
            offsets.append(np.array([o for o, _, _, _ in pending], dtype=np.int64)[keep])
            line_bytes.append(np.array([n for _, n, _, _ in pending], dtype=np.int64)[keep])
            lengths.append(sizes[keep].astype(np.int32))
            pending.clear()

        with open(self.path, "rb") as handle:
            offset = 0
            for line_no, raw in enumerate(handle, start=1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                texts = self._texts(raw, line_no)
                if texts is None:
                    self.num_invalid += 1
                    continue
                pending.append((start, len(raw), *texts))
                if len(pending) >= _BATCH:
                    flush()
            flush()
        if self.num_dropped:
            warnings.warn(f"{self.path}: dropped {self.num_dropped} examples longer than "
                          f"seq_len + 1 = {limit} tokens", stacklevel=3)
        if self.num_invalid:
            warnings.warn(f"{self.path}: skipped {self.num_invalid} lines without a "
                          f"{self.prompt_key!r} string or an answer", stacklevel=3)
        if not offsets:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=np.int32)
        return np.concatenate(offsets), np.concatenate(line_bytes), np.concatenate(lengths)

    # ------------------------------------------------------------------ reading
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = None
        state["_fd_pid"] = None
        state["_encoder"] = None
        return state

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._fd_pid == os.getpid():
            os.close(self._fd)

    def __len__(self) -> int:
        return self.num_samples

    def resized(self, num_samples: int) -> "PromptAnswerDataset":
        """The same examples and order with ``len() == num_samples``, without rescanning the file.

        Item ``i`` does not depend on the length (it is ``perm(i // n)[i % n]``), so a resized
        copy agrees with this dataset on every index both hold.
        """
        if num_samples < 0:
            raise ValueError(f"num_samples must be non-negative, got {num_samples}")
        clone = copy.copy(self)  # shares the read-only offset/length arrays
        # Per-instance state: own file descriptor (closed by __del__), tokenizer backend and
        # permutation cache, so neither copy closes or mutates what the other uses.
        clone._fd, clone._fd_pid, clone._encoder, clone._perm = None, None, None, (None, None)
        clone.num_samples = int(num_samples)
        return clone

    @property
    def num_examples(self) -> int:
        """Examples kept after dropping too-long and invalid ones."""
        return len(self.offsets)

    def mean_tokens_per_sample(self) -> float:
        """Mean token length of the kept examples."""
        return float(self.lengths.mean())

    def permutation(self, epoch: int) -> np.ndarray:
        """Order of the kept examples in pass ``epoch`` (seeded by ``(seed, epoch)``)."""
        cached_epoch, perm = self._perm
        if cached_epoch != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.offsets))
            self._perm = (epoch, perm)
        return perm

    def example_index(self, i: int) -> int:
        """Which kept example global index ``i`` is."""
        n = len(self.offsets)
        return int(self.permutation(i // n)[i % n])

    def _read_line(self, example: int) -> bytes:
        # pread has no shared file position, so prefetch threads may read concurrently.
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._fd_pid = os.getpid()
        return os.pread(self._fd, int(self.line_bytes[example]), int(self.offsets[example]))

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if i < 0:
            raise IndexError(f"negative index {i}")
        example = self.example_index(i)
        texts = self._texts(self._read_line(example), -1)
        if texts is None:
            raise RuntimeError(f"{self.path} changed since it was loaded (example {example})")
        prompt_ids, answer_ids = self._encode(list(texts))
        sample = self.encoder.sample(prompt_ids, answer_ids, texts[1])
        if len(sample["tokens"]) != int(self.lengths[example]):
            raise RuntimeError(f"{self.path} changed since it was loaded (example {example})")
        sample["length"] = len(sample["tokens"])
        return sample

    def __repr__(self) -> str:
        return (f"PromptAnswerDataset({self.path!r}, examples={self.num_examples}, "
                f"dropped={self.num_dropped}, len={len(self)})")
