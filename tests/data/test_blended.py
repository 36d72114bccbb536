"""BlendedDataset: the exact fast interleave, shares, per-source counts, token weighting."""

from __future__ import annotations

import numpy as np
import pytest

from megaproc.data import blended as blended_module
from megaproc.data.blended import BlendedDataset, interleave, interleave_reference


class ListDataset:
    """Samples of fixed ``length`` whose first token encodes (dataset tag, index)."""

    def __init__(self, tag: int, size: int, length: int = 5):
        self.tag, self.size, self.length = tag, size, length

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        if not 0 <= i < self.size:
            raise IndexError(i)
        return {"tokens": np.full(self.length, self.tag * 100000 + i, dtype=np.int64)}


WEIGHTS = [
    [1.0], [0.95, 0.05], [0.5, 0.5], [1, 1, 1], [0.5, 0.3, 0.2], [0.4, 0.33, 0.27],
    [0.9, 0.05, 0.03, 0.02], [3, 1, 1, 1, 2, 0.5], [1, 0, 2], [0.7, 0.2, 0.1],
]


@pytest.mark.parametrize("weights", WEIGHTS)
def test_fast_interleave_equals_plain_loop(weights, monkeypatch):
    # Tiny warm-up, blocks and chunks force many chunk boundaries and newly found states.
    monkeypatch.setattr(blended_module, "_WARMUP_STEPS", 3)
    monkeypatch.setattr(blended_module, "_BLOCK", 16)
    monkeypatch.setattr(blended_module, "_CHUNK", 1000)
    for size in (0, 1, 17, 5000):
        np.testing.assert_array_equal(interleave(weights, size), interleave_reference(weights, size))


def test_fast_interleave_equals_plain_loop_at_default_sizes():
    rng = np.random.default_rng(0)
    for _ in range(3):
        weights = rng.random(int(rng.integers(2, 6))) ** 2 + 1e-3
        np.testing.assert_array_equal(interleave(weights, 60000), interleave_reference(weights, 60000))


def test_fast_interleave_with_many_lanes(monkeypatch):
    # More than 2**15 simulated lanes (blocks x candidate states) in one chunk.
    monkeypatch.setattr(blended_module, "_BLOCK", 4)
    weights = [0.45, 0.35, 0.2]
    np.testing.assert_array_equal(interleave(weights, 200000), interleave_reference(weights, 200000))


def test_five_percent_source_is_every_twentieth_sample():
    ds = BlendedDataset([ListDataset(0, 5000), ListDataset(1, 500)], [0.95, 0.05], 2000)
    index = np.asarray(ds.dataset_index)
    hits = np.nonzero(index == 1)[0]
    assert len(hits) == 100 and set(np.diff(hits).tolist()) == {20}
    for consumed in range(0, 2001):  # every prefix within one sample of its share
        counts = ds.source_counts(consumed)
        assert sum(counts) == consumed
        assert abs(counts[0] - 0.95 * consumed) <= 1 and abs(counts[1] - 0.05 * consumed) <= 1


@pytest.mark.parametrize("weights", [[0.5, 0.3, 0.2], [0.6, 0.25, 0.1, 0.05]])
def test_counts_track_shares(weights):
    ds = BlendedDataset([ListDataset(j, 10) for j in range(len(weights))], weights, 3000)
    shares = np.asarray(weights) / sum(weights)
    for consumed in (1, 10, 99, 1000, 2999, 3000):
        assert np.all(np.abs(np.asarray(ds.source_counts(consumed)) - shares * consumed) < 1.5)


def test_items_carry_source_and_walk_each_source_in_order():
    sources = [ListDataset(0, 7), ListDataset(1, 3)]
    ds = BlendedDataset(sources, [2, 1], 30, names=["a", "b"])
    assert ds.source_names == ["a", "b"] and len(ds) == 30
    seen = [0, 0]
    for i in range(30):
        sample = ds[i]
        j = sample["source"]
        assert j == int(ds.dataset_index[i])
        assert sample["tokens"][0] == j * 100000 + seen[j] % len(sources[j])  # wraps around
        seen[j] += 1
    assert seen == ds.source_counts(30) == [20, 10]
    with pytest.raises(IndexError):
        ds[30]


def test_source_counts_beyond_or_before_range_rejected():
    ds = BlendedDataset([ListDataset(0, 5), ListDataset(1, 5)], [1, 1], 10)
    with pytest.raises(ValueError):
        ds.source_counts(11)


def test_token_weighted_blend_balances_tokens():
    short, long = ListDataset(0, 100, length=10), ListDataset(1, 100, length=40)
    by_samples = BlendedDataset([short, long], [0.5, 0.5], 1000)
    by_tokens = BlendedDataset([short, long], [0.5, 0.5], 1000, by="tokens")
    assert by_samples.source_counts(1000) == [500, 500]
    counts = by_tokens.source_counts(1000)
    assert counts == [800, 200]  # 800 * 10 tokens == 200 * 40 tokens
    np.testing.assert_allclose(by_tokens.weights, [0.8, 0.2])


@pytest.mark.parametrize("by", ["samples", "tokens"])
def test_blend_of_n_and_2n_samples_agree_on_the_first_n(tmp_path, by):
    weights = [0.6, 0.3, 0.1]
    lengths = [10, 40, 3]

    def sources(scale):  # sources built longer for the longer blend, same prefixes
        return [ListDataset(j, 1000 * scale, length=lengths[j]) for j in range(3)]

    short = BlendedDataset(sources(1), weights, 1000, by=by, cache_dir=str(tmp_path))
    long = BlendedDataset(sources(2), weights, 2000, by=by, cache_dir=str(tmp_path))
    np.testing.assert_allclose(short.weights, long.weights)
    for i in range(1000):
        a, b = short[i], long[i]
        assert a["source"] == b["source"]
        np.testing.assert_array_equal(a["tokens"], b["tokens"])


class NoMeanDataset(ListDataset):
    """A source without ``mean_tokens_per_sample``: the blend probes its samples."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return {"tokens": item["tokens"][: 5 + i % 7]}


def test_probed_token_weights_do_not_depend_on_the_source_length():
    weights = [0.5, 0.5]
    short = BlendedDataset([ListDataset(0, 300), NoMeanDataset(1, 300)], weights, 500, by="tokens")
    long = BlendedDataset([ListDataset(0, 600), NoMeanDataset(1, 900)], weights, 1000, by="tokens")
    np.testing.assert_array_equal(short.weights, long.weights)
    np.testing.assert_array_equal(short.dataset_index, long.dataset_index[:500])


def test_index_arrays_cached(tmp_path):
    sources = [ListDataset(0, 50), ListDataset(1, 50)]
    first = BlendedDataset(sources, [0.7, 0.3], 500, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("blend-*_dataset_index.npy"))) == 1
    second = BlendedDataset(sources, [0.7, 0.3], 500, cache_dir=str(tmp_path))
    assert not second.dataset_index.flags.writeable  # memory-mapped from the cache
    np.testing.assert_array_equal(first.dataset_sample_index, second.dataset_sample_index)
    assert second.dataset_sample_index.dtype == np.int64


def test_bad_weights_rejected():
    with pytest.raises(ValueError):
        BlendedDataset([ListDataset(0, 5)], [-1.0], 5)
    with pytest.raises(ValueError):
        BlendedDataset([ListDataset(0, 5), ListDataset(1, 5)], [0, 0], 5)
    with pytest.raises(ValueError):
        BlendedDataset([ListDataset(0, 5)], [1, 2], 5)
