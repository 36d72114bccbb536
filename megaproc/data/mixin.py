"""Prompt/answer task examples from a ``.jsonl`` file, tokenized on the fly (the synthetic mixin).

Each line is a JSON object with a prompt and an answer: the graph-search splits written by
``data_tools.build_splits`` have ``{"prompt": str, "output_texts": [str, ...], ...}`` and we
train on the first non-empty output text (as the original pre-pretraining scripts did: other
valid answers are ignored); ``{"prompt": str, "answer": str}`` works too.

Loading scans the file once: it records each example's byte offset and token length in numpy
arrays (no per-example Python objects are kept) and drops examples longer than
``seq_len + 1`` tokens with a warning (:attr:`JsonlTaskDataset.num_dropped`).  Items are
re-read and re-tokenized when requested.  Index ``i`` is example ``perm(i // n)[i % n]`` where
``perm(e)`` is a seeded permutation of the ``n`` kept examples for pass ``e``, so the dataset
cycles deterministically with a fresh order every pass, and item ``i`` depends only on the
file, the tokenizer and the seed - never on ``num_samples`` (which only sets ``len()``).
"""

from __future__ import annotations

import copy
import json
import os
import warnings

import numpy as np

from megaproc.tokenizer import private_backend

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


class JsonlTaskDataset:
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
        self.bos_id = getattr(tokenizer, "bos_token_id", None)
        self.eos_id = getattr(tokenizer, "eos_token_id", None)
        self._specials = int(self.bos_id is not None) + int(self.eos_id is not None)
        self._backend = None
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

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens.

        Uses a private copy of the fast tokenizer's Rust backend: calling the shared HF
        tokenizer re-configures its backend on every call, which fails ("Already borrowed")
        when a prefetch thread and the main thread tokenize at the same time.
        """
        if self._backend is None:
            self._backend = private_backend(self.tokenizer) or False
        if self._backend is False:
            return self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]

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
        state["_backend"] = None
        return state

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._fd_pid == os.getpid():
            os.close(self._fd)

    def __len__(self) -> int:
        return self.num_samples

    def resized(self, num_samples: int) -> "JsonlTaskDataset":
        """The same examples and order with ``len() == num_samples``, without rescanning the file.

        Item ``i`` does not depend on the length (it is ``perm(i // n)[i % n]``), so a resized
        copy agrees with this dataset on every index both hold.
        """
        if num_samples < 0:
            raise ValueError(f"num_samples must be non-negative, got {num_samples}")
        clone = copy.copy(self)  # shares the read-only offset/length arrays
        # Per-instance state: own file descriptor (closed by __del__), tokenizer backend and
        # permutation cache, so neither copy closes or mutates what the other uses.
        clone._fd, clone._fd_pid, clone._backend, clone._perm = None, None, None, (None, None)
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
        head = [self.bos_id] if self.bos_id is not None else []
        tail = [self.eos_id] if self.eos_id is not None else []
        tokens = np.asarray(head + prompt_ids + answer_ids + tail, dtype=np.int64)
        if len(tokens) != int(self.lengths[example]):
            raise RuntimeError(f"{self.path} changed since it was loaded (example {example})")
        answer_start = len(head) + len(prompt_ids)
        mask = np.zeros(len(tokens), dtype=bool)
        mask[answer_start:] = True
        word = np.zeros(len(tokens), dtype=bool)
        word[answer_start:answer_start + len(answer_ids)] = True
        return {"tokens": tokens, "answer_mask": mask, "word_mask": word, "length": len(tokens)}

    def __repr__(self) -> str:
        return (f"JsonlTaskDataset({self.path!r}, examples={self.num_examples}, "
                f"dropped={self.num_dropped}, len={len(self)})")
