"""Fixed-length GPT training samples cut from an :class:`~megaproc.data.indexed.IndexedDataset`.

Three index arrays define the samples (the Megatron scheme), always built for **whole epochs**
of ``document_range`` - as few as hold the requested samples - so that every array is a
function of (seed, epoch, data, seq_len, document range) and never of the number of samples
asked for.  A dataset built for ``N`` samples and one built for ``2N`` therefore serve the
same first ``N`` samples: a resume with a longer plan (larger ``train.max_steps``) continues
the data order instead of reshuffling it.

- **document index**: the document ids of ``document_range`` tiled over the epochs, each
  epoch shuffled independently with a numpy Generator seeded by ``(seed, 0, epoch)``, so every
  document appears once per epoch;
- **sample index** (int64 ``[S + 1, 2]``): row ``s`` is the (document-index position, token
  offset) where sample ``s`` starts.  Documents are concatenated in document-index order and
  sample ``s`` is the ``seq_len + 1`` tokens starting at global token ``s * seq_len``, so
  consecutive samples share one token (the label of the last input) and samples cross document
  (and epoch) boundaries.  With ``add_extra_token=False`` samples are ``seq_len`` tokens, no
  overlap.  ``S`` is every sample the epochs hold; row ``S`` is where the next would start;
- **shuffle index** (int64 ``[S]``): a permutation of the samples **per epoch**, seeded by
  ``(seed, 1, epoch)`` (a sample belongs to the epoch holding its last token, so how many
  samples an epoch has depends only on the data).  The dataset serves epoch 0's samples in
  shuffled order, then epoch 1's, ...; ``len(dataset)`` is the requested count, a prefix of
  the ``S`` samples, and when it ends inside an epoch that epoch contributes a random subset.

The arrays are built with vectorised numpy in bounded-memory chunks and cached as ``.npy``
under a key covering every input - including the number of epochs and the ``.idx``
fingerprint - so a regenerated index under the same prefix, or a plan needing more epochs,
gets fresh arrays, while a plan change within the same epochs reuses them; see
:mod:`megaproc.data.index_cache` for the distributed build protocol.  Cache hits memory-map
the arrays and take milliseconds.
"""

from __future__ import annotations

import numpy as np

from megaproc.data.index_cache import IndexCache, cache_dir_for_prefix

FORMAT_VERSION = 2  # 2: whole epochs, keyed by the epoch count instead of the sample count
ARRAY_NAMES = ("document_index", "sample_index", "shuffle_index", "flags")
_CHUNK = 1 << 22  # document-index positions handled per vectorised chunk


def split_documents(num_docs: int, valid_fraction: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """Split ``num_docs`` documents into a train range and a trailing validation range.

    The validation range holds ``round(num_docs * valid_fraction)`` documents (at least one
    when the fraction is positive); with a zero fraction it is the empty range
    ``(num_docs, num_docs)``.  Raises ``ValueError`` if the training range would be empty.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    n_valid = 0 if valid_fraction == 0 else max(1, int(round(num_docs * valid_fraction)))
    if num_docs - n_valid < 1:
        raise ValueError(f"cannot hold out {n_valid} of {num_docs} documents for validation "
                         "and keep any for training")
    return (0, num_docs - n_valid), (num_docs - n_valid, num_docs)


def _epoch_rng(seed: int, stream: int, epoch: int) -> np.random.Generator:
    """Generator for one epoch's shuffle; ``stream`` 0 = documents, 1 = samples.

    Seeding each epoch separately keeps an epoch's order independent of how many epochs are
    built, so asking for more samples later (a longer run) appends epochs to the order instead
    of reshuffling it.
    """
    return np.random.default_rng([seed, stream, epoch])


def _epoch_permutations(seed: int, count: int, epochs: int, dtype) -> np.ndarray:
    """``epochs`` independently seeded permutations of ``range(count)``, concatenated.

    Each epoch is shuffled in place in the output array (no int64 temporaries).
    """
    out = np.empty(count * epochs, dtype=dtype)
    for e in range(epochs):
        block = out[e * count:(e + 1) * count]
        block[:] = np.arange(count, dtype=dtype)
        _epoch_rng(seed, 0, e).shuffle(block)
    return out


def _blockwise_permutation(seed: int, bounds: np.ndarray) -> np.ndarray:
    """A permutation of ``range(bounds[-1])`` shuffling within each ``[bounds[e], bounds[e+1])``."""
    out = np.arange(int(bounds[-1]), dtype=np.int64)
    for e, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        lo, hi = int(lo), int(hi)
        if hi - lo > 1:
            out[lo:hi] = lo + _epoch_rng(seed, 1, e).permutation(hi - lo)
    return out


class GPTDataset:
    """Samples of ``seq_len + 1`` tokens (``seq_len`` without the extra token) from ``indexed``.

    ``num_samples=None`` means exactly one epoch of ``document_range`` (default: all
    documents); otherwise the index arrays cover as many whole epochs as hold ``num_samples``
    samples and the dataset has exactly ``num_samples`` samples, the first of those.
    ``__getitem__(i)`` returns ``{"tokens": int64 array}``.  ``seed`` drives the document and
    sample shuffles; ``name`` (e.g. ``"train"``/``"valid"``) separates caches of different
    roles.  ``document_index``, ``sample_index`` and ``shuffle_index`` are the whole-epoch
    arrays (``shuffle_index`` may be longer than ``len(self)``).
    """

    def __init__(self, indexed, seq_len: int, num_samples: int | None, seed: int,
                 document_range: tuple[int, int] | None = None, cache_dir: str | None = None,
                 name: str = "train", add_extra_token: bool = True):
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if num_samples is not None and num_samples < 0:
            raise ValueError(f"num_samples must be non-negative, got {num_samples}")
        self.indexed = indexed
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.name = name
        self.add_extra_token = bool(add_extra_token)
        self.sample_length = self.seq_len + int(self.add_extra_token)
        num_docs = len(indexed.document_indices) - 1
        first, last = document_range if document_range is not None else (0, num_docs)
        if not 0 <= first < last <= num_docs:
            raise ValueError(f"document_range ({first}, {last}) is empty or outside the "
                             f"{num_docs} documents of {indexed.path_prefix}")
        self.document_range = (int(first), int(last))
        self.requested_samples = num_samples
        self._tokens_per_epoch: int | None = None
        epochs = self._epochs_for(num_samples)
        description = {
            "kind": "GPTDataset", "version": FORMAT_VERSION, "fingerprint": indexed.fingerprint(),
            "seq_len": self.seq_len, "seed": self.seed, "epochs": epochs,
            "document_range": list(self.document_range), "name": name,
            "add_extra_token": self.add_extra_token,
        }
        self.cache_dir = cache_dir_for_prefix(indexed.path_prefix, cache_dir)
        self.cache = IndexCache(self.cache_dir, name, description, ARRAY_NAMES)
        arrays, self.built_index = self.cache.get_or_build(lambda: self._build_arrays(epochs))
        self._attach(arrays)
        if num_samples is None and self._whole_samples == 0:
            raise ValueError(
                f"{self.indexed.path_prefix}: documents {self.document_range} hold "
                f"{self.tokens_per_epoch} tokens, fewer than one sample of {self.sample_length}")
        self._num_samples = self._whole_samples if num_samples is None else int(num_samples)

    @property
    def tokens_per_epoch(self) -> int:
        """Tokens in the document range (computed on first use: a sum over its lengths)."""
        if self._tokens_per_epoch is None:
            doc_idx = self.indexed.document_indices
            first, last = self.document_range
            lengths = self.indexed.sequence_lengths[int(doc_idx[first]):int(doc_idx[last])]
            self._tokens_per_epoch = int(lengths.sum(dtype=np.int64))
        return self._tokens_per_epoch

    def samples_in_epochs(self, epochs: int) -> int:
        """Samples whose last token lies in the first ``epochs`` epochs of the document range."""
        return max(0, (epochs * self.tokens_per_epoch - int(self.add_extra_token)) // self.seq_len)

    def _epochs_for(self, num_samples: int | None) -> int:
        """Fewest whole epochs holding ``num_samples`` samples (None: one epoch).

        One epoch needs no token count, so a cache hit of a one-epoch dataset reads nothing
        but the cached arrays (the lengths sum costs ~10 ms per 20M documents).
        """
        if num_samples is None:
            return 1
        if self.tokens_per_epoch == 0:
            raise ValueError(f"{self.indexed.path_prefix}: documents {self.document_range} are empty")
        # samples_in_epochs(E) >= n  <=>  E * tokens - extra >= n * seq_len
        need = int(num_samples) * self.seq_len + int(self.add_extra_token)
        return max(1, -(-need // self.tokens_per_epoch))

    # ------------------------------------------------------------------ building
    def _document_lengths(self) -> tuple[np.ndarray, bool]:
        """Token count of each document in the range (the int32 lengths view when every
        document is one sequence), and whether every document is one sequence."""
        first, last = self.document_range
        doc_idx = self.indexed.document_indices
        lengths = self.indexed.sequence_lengths
        seq_first, seq_last = int(doc_idx[first]), int(doc_idx[last])
        single = seq_last - seq_first == last - first
        for lo in range(first, last, _CHUNK):  # strictly one sequence per document?
            hi = min(last, lo + _CHUNK)
            if not single:
                break
            single = bool(np.array_equal(doc_idx[lo:hi + 1] - doc_idx[lo],
                                         np.arange(hi + 1 - lo)))
        if single:
            return lengths[seq_first:seq_last], True
        bounds = np.asarray(doc_idx[first:last + 1], dtype=np.int64)
        seq_cum = np.zeros(seq_last - seq_first + 1, dtype=np.int64)
        np.cumsum(lengths[seq_first:seq_last], out=seq_cum[1:])
        local = bounds - seq_first
        return seq_cum[local[1:]] - seq_cum[local[:-1]], False

    def _build_arrays(self, epochs: int) -> dict[str, np.ndarray]:
        doc_lengths, single = self._document_lengths()
        first, last = self.document_range
        docs = last - first
        samples = self.samples_in_epochs(epochs)
        doc_dtype = np.int32 if last < 2**31 else np.int64
        document_index = _epoch_permutations(self.seed, docs, epochs, doc_dtype)
        document_index += doc_dtype(first)
        sample_index = self._sample_index(document_index, doc_lengths, first, samples)
        # Epoch e's samples are those with their last token in epoch e: samples_in_epochs(e)
        # up to samples_in_epochs(e + 1), a count that depends on the data only.
        epoch_bounds = np.array([self.samples_in_epochs(e) for e in range(epochs + 1)], dtype=np.int64)
        shuffle_index = _blockwise_permutation(self.seed, epoch_bounds)
        flags = np.array([int(single)], dtype=np.int64)
        return {"document_index": document_index, "sample_index": sample_index,
                "shuffle_index": shuffle_index, "flags": flags}

    def _sample_index(self, document_index: np.ndarray, doc_lengths: np.ndarray, first: int,
                      samples: int) -> np.ndarray:
        """Start (position, offset) of samples ``0..samples`` (row ``samples`` = next start)."""
        sample_index = np.empty((samples + 1, 2), dtype=np.int64)
        positions = len(document_index)
        sample_index[:, 0] = positions  # sentinel for starts at the very end (no extra token)
        sample_index[:, 1] = 0
        seq_len = self.seq_len
        tokens_before = 0
        for lo in range(0, positions, _CHUNK):
            hi = min(positions, lo + _CHUNK)
            docs = document_index[lo:hi]
            lengths = doc_lengths[docs - first if first else docs]
            ends = np.cumsum(lengths, dtype=np.int64)
            ends += tokens_before
            chunk_tokens_end = int(ends[-1])
            s_lo = -(-tokens_before // seq_len)
            s_hi = min(samples + 1, -(-chunk_tokens_end // seq_len))
            if s_hi > s_lo:
                starts = np.arange(s_lo, s_hi, dtype=np.int64) * seq_len
                where = np.searchsorted(ends, starts, side="right")
                sample_index[s_lo:s_hi, 0] = where + lo
                sample_index[s_lo:s_hi, 1] = starts - (ends[where] - lengths[where])
            tokens_before = chunk_tokens_end
            if s_hi >= samples + 1:
                break
        return sample_index

    # ------------------------------------------------------------------ reading
    def _attach(self, arrays: dict[str, np.ndarray]) -> None:
        # Plain ndarray views of the memory maps: element access on np.memmap is slower.
        self.document_index = np.asarray(arrays["document_index"])
        self.sample_index = np.asarray(arrays["sample_index"])
        self.shuffle_index = np.asarray(arrays["shuffle_index"])
        self._single_sequence_docs = bool(arrays["flags"][0])
        self._lengths = self.indexed.sequence_lengths
        self._doc_bounds = self.indexed.document_indices
        self._whole_samples = len(self.shuffle_index)
        self._last_position = len(self.document_index) - 1

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("document_index", "sample_index", "shuffle_index", "_lengths", "_doc_bounds"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._attach(self.cache.load())

    def __len__(self) -> int:
        return self._num_samples

    @property
    def num_epochs(self) -> int:
        """Epochs of the document range tiled into the document index."""
        return len(self.document_index) // (self.document_range[1] - self.document_range[0])

    def mean_tokens_per_sample(self) -> float:
        """Every sample has exactly ``sample_length`` tokens."""
        return float(self.sample_length)

    def _document_length(self, doc: int) -> int:
        if self._single_sequence_docs:
            return int(self._lengths[doc])
        lo, hi = int(self._doc_bounds[doc]), int(self._doc_bounds[doc + 1])
        return int(self._lengths[lo:hi].sum())

    def _read(self, doc: int, offset: int, length: int, out: np.ndarray) -> None:
        """Copy ``length`` tokens of document ``doc`` from ``offset`` into ``out``."""
        if self._single_sequence_docs:
            out[:] = self.indexed.get(doc, offset, length)
            return
        filled = 0
        for seq in range(int(self._doc_bounds[doc]), int(self._doc_bounds[doc + 1])):
            seq_length = int(self._lengths[seq])
            if offset >= seq_length:
                offset -= seq_length
                continue
            take = min(length - filled, seq_length - offset)
            out[filled:filled + take] = self.indexed.get(seq, offset, take)
            filled += take
            offset = 0
            if filled == length:
                return

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < self._num_samples:
            raise IndexError(f"sample {i} out of range for {self._num_samples} samples")
        sample = int(self.shuffle_index[i])
        (position, offset), (next_position, _) = self.sample_index[sample:sample + 2].tolist()
        last = min(next_position, self._last_position)  # no later document holds its tokens
        need = self.sample_length
        if position == last:  # inside one document: a single zero-copy slice
            doc = int(self.document_index[position])
            if self._single_sequence_docs:
                return {"tokens": self.indexed.get(doc, offset, need).astype(np.int64)}
            tokens = np.empty(need, dtype=np.int64)
            self._read(doc, offset, need, tokens)
            return {"tokens": tokens}
        docs = self.document_index[position:last + 1].tolist()
        if self._single_sequence_docs:
            lengths = self._lengths[docs].tolist()
        else:
            lengths = [self._document_length(doc) for doc in docs]
        tokens = np.empty(need, dtype=np.int64)
        filled = 0
        for doc, length in zip(docs, lengths):
            take = min(need - filled, length - offset)
            if take > 0:
                self._read(doc, offset, take, tokens[filled:filled + take])
                filled += take
                if filled == need:
                    break
            offset = 0
        return {"tokens": tokens}

    def __repr__(self) -> str:
        return (f"GPTDataset({self.indexed.path_prefix!r}, name={self.name}, samples={len(self)}, "
                f"seq_len={self.seq_len}, docs={self.document_range}, epochs={self.num_epochs})")
