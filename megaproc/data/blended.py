"""Deterministic, low-discrepancy blending of several map-style datasets.

Global sample ``i`` goes to the source ``j`` that maximises ``w_j * (i + 1) - count_j(i)``
(``count_j(i)``: samples source ``j`` received among the first ``i``; ties go to the lowest
``j``), and is that source's ``count_j(i)``-th sample (modulo its length).  A 5% source thus
lands on every 20th sample, and every source's count stays within about one sample of its
share at every prefix.  The rule is the one Megatron's blended dataset uses; here it is
computed without a per-sample Python loop (see :func:`interleave`).

Because the assignment is a pure function of the weights and the sample position, the loader
state is just the global consumed-sample count: :meth:`BlendedDataset.source_counts` recovers
how many samples each source contributed, for logs and checkpoints, at any world size.
"""

from __future__ import annotations

import math

import numpy as np

from megaproc.data.index_cache import IndexCache

FORMAT_VERSION = 1
_WARMUP_STEPS = 16384  # plain-loop steps that discover the usual count states
_CHUNK = 1 << 22  # samples simulated per vectorised chunk
_BLOCK = 1024  # steps per block inside a chunk


def normalize_weights(weights) -> np.ndarray:
    """Weights as float64 summing to one; negative, non-finite or all-zero weights are errors."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size == 0:
        raise ValueError("blend needs at least one source")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"blend weights must be finite and non-negative, got {list(weights)}")
    total = w.sum()
    if total <= 0:
        raise ValueError(f"blend weights must not all be zero, got {list(weights)}")
    return w / total


def interleave_reference(weights, size: int) -> np.ndarray:
    """The blend rule as a plain Python loop (slow; the definition the fast path must match)."""
    w = [float(x) for x in normalize_weights(weights)]
    counts = [0] * len(w)
    out = np.empty(size, dtype=np.int64)
    for i in range(size):
        best, best_score = 0, w[0] * (i + 1) - counts[0]
        for j in range(1, len(w)):
            score = w[j] * (i + 1) - counts[j]
            if score > best_score:
                best, best_score = j, score
        out[i] = best
        counts[best] += 1
    return out


def _base(w: np.ndarray, i) -> np.ndarray:
    """Reference frame of the counts: ``floor(w_j * i)`` (int64, shape ``i.shape + (k,)``)."""
    i = np.asarray(i, dtype=np.float64)
    return np.floor(i[..., None] * w).astype(np.int64)


class _StateTable:
    """Known offsets ``count - floor(w * i)``, grouped by their sum (which ``i`` determines)."""

    def __init__(self):
        self.by_sum: dict[int, list[tuple[int, ...]]] = {}
        self.position: dict[int, dict[tuple[int, ...], int]] = {}

    def add(self, delta) -> None:
        delta = tuple(int(x) for x in delta)
        total = sum(delta)
        positions = self.position.setdefault(total, {})
        if delta not in positions:
            positions[delta] = len(positions)
            self.by_sum.setdefault(total, []).append(delta)

    def lookup(self, delta) -> int | None:
        delta = tuple(int(x) for x in delta)
        return self.position.get(sum(delta), {}).get(delta)


def _warmup(w: np.ndarray, steps: int, out: np.ndarray, states: _StateTable) -> np.ndarray:
    """Run the plain loop for ``steps`` samples, recording every count state seen."""
    wl = [float(x) for x in w]
    k = len(wl)
    counts = [0] * k
    for i in range(steps):
        states.add(counts[j] - math.floor(wl[j] * i) for j in range(k))
        best, best_score = 0, wl[0] * (i + 1) - counts[0]
        for j in range(1, k):
            score = wl[j] * (i + 1) - counts[j]
            if score > best_score:
                best, best_score = j, score
        out[i] = best
        counts[best] += 1
    return np.asarray(counts, dtype=np.int64)


def _simulate(w: np.ndarray, start: int, stop: int, counts: np.ndarray, states: _StateTable,
              out: np.ndarray) -> tuple[int, np.ndarray]:
    """Fill ``out[start:stop]``; returns ``(reached, counts_at_reached)``.

    The range is cut into blocks of ``_BLOCK`` steps.  For each block we do not know the count
    state at its start, but it is ``floor(w * s) + delta`` for one of the few known offsets
    ``delta`` whose sum matches ``s``; so every block is simulated from every candidate at
    once, with the exact float comparisons of the plain loop, vectorised across blocks and
    candidates.  Chaining the blocks then picks, for each block, the candidate equal to the
    previous block's end state.  If that state is new, the chain stops there (``reached``)
    after recording it, and the caller continues from that point with the larger table.
    """
    k = len(w)
    n_blocks = -(-(stop - start) // _BLOCK)
    block_starts = start + _BLOCK * np.arange(n_blocks, dtype=np.int64)
    base_start = _base(w, block_starts)
    sums = block_starts - base_start.sum(axis=1)
    width = max(len(states.by_sum.get(int(m), ())) for m in np.unique(sums))
    width = max(width, 1)
    deltas = np.zeros((n_blocks, width, k), dtype=np.int64)
    for m in np.unique(sums):
        rows = np.nonzero(sums == m)[0]
        known = np.asarray(states.by_sum.get(int(m), [(0,) * k]), dtype=np.int64)
        padded = np.concatenate([known, np.repeat(known[:1], width - len(known), axis=0)])
        deltas[rows] = padded
    # Layout (source, block * width + candidate): every per-step operation is a contiguous
    # vector op; the argmax over sources is an explicit scan with strict ">" (lowest j on ties).
    sim = (base_start[:, None, :] + deltas).astype(np.float64).reshape(-1, k).T.copy()
    lanes = sim.shape[1]
    decisions = np.empty((_BLOCK, lanes), dtype=np.int8 if k < 128 else np.int16)
    t = np.repeat((block_starts + 1).astype(np.float64), width)
    best = np.empty(lanes)
    score = np.empty(lanes)
    better = np.empty(lanes, dtype=bool)
    pick = np.empty(lanes, dtype=np.int64)
    flat = sim.reshape(-1)
    lane_ids = np.arange(lanes, dtype=np.int64)
    target = np.empty(lanes, dtype=np.int64)
    for step in range(_BLOCK):
        np.multiply(t, w[0], out=best)
        best -= sim[0]
        pick.fill(0)
        for j in range(1, k):
            np.multiply(t, w[j], out=score)
            score -= sim[j]
            np.greater(score, best, out=better)
            np.maximum(best, score, out=best)
            np.copyto(pick, j, where=better)
        decisions[step] = pick
        np.multiply(pick, lanes, out=target)
        target += lane_ids
        flat[target] += 1.0
        t += 1.0
    decisions = decisions.T.reshape(n_blocks, width, _BLOCK)
    sim = sim.T.reshape(n_blocks, width, k)
    reached, current = start, np.asarray(counts, dtype=np.int64)
    for r in range(n_blocks):
        first = int(block_starts[r])
        candidate = states.lookup(current - _base(w, first))
        if candidate is None:
            states.add(current - _base(w, first))
            return reached, current
        take = min(_BLOCK, stop - first)
        out[first:first + take] = decisions[r, candidate, :take]
        if take < _BLOCK:
            current = current + np.bincount(decisions[r, candidate, :take], minlength=k)
        else:
            current = sim[r, candidate].astype(np.int64)  # exact counts at the block end
        reached = first + take
    return reached, current


def interleave(weights, size: int) -> np.ndarray:
    """Source id of each of the first ``size`` global samples under the blend rule.

    Exactly equal to :func:`interleave_reference` (same float64 comparisons, same ties), but
    vectorised: a short plain-loop warm-up, then :func:`_simulate` over chunks.  Cost is
    about ``size * (#count states) * k`` numpy element operations - about a second for ten
    million samples.
    """
    w = normalize_weights(weights)
    dtype = np.uint8 if len(w) <= 255 else np.int16
    out = np.empty(size, dtype=np.int16)
    if len(w) == 1 or size == 0:
        return np.zeros(size, dtype=dtype)
    states = _StateTable()
    warm = min(size, _WARMUP_STEPS)
    counts = _warmup(w, warm, out, states)
    position = warm
    while position < size:
        stop = min(size, position + _CHUNK)
        position, counts = _simulate(w, position, stop, counts, states, out)
    return out.astype(dtype)


def mean_tokens_per_sample(dataset, probes: int = 256) -> float:
    """Mean sample length of ``dataset``: its ``mean_tokens_per_sample()`` if it has one, else
    the mean ``len(tokens)`` over its first ``probes`` samples."""
    method = getattr(dataset, "mean_tokens_per_sample", None)
    if callable(method):
        return float(method())
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot weight an empty dataset by tokens")
    # The first samples, not samples spread over len(dataset): the token weights (hence the
    # whole assignment) must not change when the same source is built longer for a longer run.
    return float(np.mean([len(dataset[i]["tokens"]) for i in range(min(n, probes))]))


def sample_weights(weights, mean_tokens=None) -> np.ndarray:
    """Normalised per-sample weights; with ``mean_tokens`` the weights count tokens instead
    (each divided by its source's mean tokens per sample, then renormalised)."""
    w = normalize_weights(weights)
    if mean_tokens is None:
        return w
    tokens = np.asarray(mean_tokens, dtype=np.float64)
    if tokens.shape != w.shape or np.any(tokens <= 0):
        raise ValueError(f"mean tokens per sample must be positive, one per source: {mean_tokens}")
    return normalize_weights(w / tokens)


class BlendedDataset:
    """Interleaves ``datasets`` by ``weights`` over ``size`` global samples.

    ``by="samples"`` makes the weights sample fractions; ``by="tokens"`` token fractions
    (see :func:`sample_weights`).  ``__getitem__(i)`` is the chosen source's sample dict with
    ``"source": j`` added; a source shorter than its share wraps around (the trainer's
    builder sizes sources so that never happens).  The assignment of sample ``i`` depends only
    on the weights, not on ``size``, so blends of ``N`` and ``2N`` samples over sources that
    agree on their prefixes agree on their first ``N`` samples.  ``seed`` does not
    change the (deterministic) assignment; it is kept for a uniform dataset signature and is
    part of the cache key.  With ``cache_dir`` the two index arrays are cached as ``.npy``.
    """

    def __init__(self, datasets: list, weights: list[float], size: int, by: str = "samples",
                 seed: int = 0, cache_dir: str | None = None, names: list[str] | None = None):
        if len(datasets) != len(weights):
            raise ValueError(f"{len(datasets)} datasets but {len(weights)} weights")
        if by not in ("samples", "tokens"):
            raise ValueError(f"blend_by must be 'samples' or 'tokens', got {by!r}")
        if size < 0:
            raise ValueError(f"blend size must be non-negative, got {size}")
        for j, dataset in enumerate(datasets):
            if len(dataset) == 0:
                raise ValueError(f"blend source {j} is empty")
        self.datasets = list(datasets)
        self.size = int(size)
        self.by = by
        self.seed = seed
        self.source_names = list(names) if names is not None else [
            str(getattr(d, "name", None) or f"source{j}") for j, d in enumerate(datasets)]
        tokens = [mean_tokens_per_sample(d) for d in datasets] if by == "tokens" else None
        self.weights = sample_weights(weights, tokens)
        arrays = self._build_or_load(cache_dir)
        # Plain ndarray views (element access on np.memmap is slower).
        self.dataset_index = np.asarray(arrays["dataset_index"])
        self.dataset_sample_index = np.asarray(arrays["dataset_sample_index"])

    def _build(self) -> dict[str, np.ndarray]:
        index = interleave(self.weights, self.size)
        sample_index = np.empty(self.size, dtype=np.int64)
        for j in range(len(self.datasets)):
            where = np.nonzero(index == j)[0]
            sample_index[where] = np.arange(len(where), dtype=np.int64)
        return {"dataset_index": index, "dataset_sample_index": sample_index}

    def _build_or_load(self, cache_dir) -> dict[str, np.ndarray]:
        if not cache_dir:
            return self._build()
        description = {
            "kind": "BlendedDataset", "version": FORMAT_VERSION, "size": self.size,
            "weights": [float.hex(float(x)) for x in self.weights], "seed": self.seed,
        }
        cache = IndexCache(cache_dir, "blend", description, ("dataset_index", "dataset_sample_index"))
        arrays, _ = cache.get_or_build(self._build)
        return arrays

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < self.size:
            raise IndexError(f"sample {i} out of range for a blend of {self.size} samples")
        j = int(self.dataset_index[i])
        source = self.datasets[j]
        sample = dict(source[int(self.dataset_sample_index[i]) % len(source)])
        sample["source"] = j
        return sample

    def source_counts(self, consumed: int) -> list[int]:
        """Samples each source contributed among the first ``consumed`` global samples."""
        if not 0 <= consumed <= self.size:
            raise ValueError(f"consumed={consumed} outside a blend of {self.size} samples")
        counts = np.bincount(np.asarray(self.dataset_index[:consumed]), minlength=len(self.datasets))
        return [int(c) for c in counts]

    def __repr__(self) -> str:
        shares = ", ".join(f"{n}={w:.4g}" for n, w in zip(self.source_names, self.weights))
        return f"BlendedDataset(size={self.size}, by={self.by}, {shares})"
