"""GPTDataset: samples equal a naive reference, int64 indices, per-epoch shuffles over whole
epochs, caching."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from megaproc.data.gpt_dataset import GPTDataset, split_documents
from tests.data.conftest import random_documents, write_indexed


def naive_samples(indexed, document_index, seq_len: int, sample_length: int, count: int):
    """Concatenate the documents in document-index order and slice every ``seq_len`` tokens."""
    stream = np.concatenate([np.asarray(indexed.get(s), dtype=np.int64)
                             for doc in document_index
                             for s in range(int(indexed.document_indices[doc]),
                                            int(indexed.document_indices[doc + 1]))])
    return [stream[s * seq_len:s * seq_len + sample_length] for s in range(count)]


def assert_per_epoch_permutation(document_index, first: int, last: int):
    docs = last - first
    assert len(document_index) % docs == 0
    for epoch in np.asarray(document_index).reshape(-1, docs):
        assert sorted(epoch.tolist()) == list(range(first, last))


@pytest.mark.parametrize("add_extra_token", [True, False])
@pytest.mark.parametrize("num_samples", [None, 7, 150, 700])
def test_samples_equal_naive_reference(tmp_path, add_extra_token, num_samples):
    docs = random_documents(0, 40, max_len=30)  # includes empty and short documents
    indexed = write_indexed(tmp_path / "d", docs)
    seq_len = 16
    ds = GPTDataset(indexed, seq_len, num_samples, seed=5, cache_dir=str(tmp_path / "c"),
                    add_extra_token=add_extra_token)
    tokens_per_epoch = sum(len(d) for d in docs)
    extra = int(add_extra_token)
    expected_len = (tokens_per_epoch - extra) // seq_len if num_samples is None else num_samples
    assert len(ds) == expected_len
    assert_per_epoch_permutation(ds.document_index, 0, 40)
    # The indices cover whole epochs: every sample of the tiled epochs, once.
    whole = (ds.num_epochs * tokens_per_epoch - extra) // seq_len
    assert len(ds.shuffle_index) == whole >= len(ds)
    assert sorted(np.asarray(ds.shuffle_index).tolist()) == list(range(whole))
    reference = naive_samples(indexed, ds.document_index, seq_len, seq_len + extra, whole)
    for i in range(len(ds)):
        tokens = ds[i]["tokens"]
        assert tokens.dtype == np.int64 and len(tokens) == seq_len + extra
        np.testing.assert_array_equal(tokens, reference[int(ds.shuffle_index[i])])
    if add_extra_token and len(ds) > 1:  # consecutive samples overlap by one token
        assert reference[0][-1] == reference[1][0]


def test_multi_sequence_documents_are_concatenated(tmp_path):
    rng = np.random.default_rng(1)
    docs = [[rng.integers(0, 500, int(rng.integers(0, 9))) for _ in range(int(rng.integers(1, 4)))]
            for _ in range(25)]
    indexed = write_indexed(tmp_path / "m", docs)
    ds = GPTDataset(indexed, 8, 60, seed=2, cache_dir=str(tmp_path / "c"))
    reference = naive_samples(indexed, ds.document_index, 8, 9, len(ds.shuffle_index))
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i]["tokens"], reference[int(ds.shuffle_index[i])])


def test_indices_are_int64_and_shuffled_per_epoch(tmp_path):
    indexed = write_indexed(tmp_path / "d", random_documents(3, 30, min_len=5))
    ds = GPTDataset(indexed, 10, 200, seed=1, cache_dir=str(tmp_path / "c"))
    tokens_per_epoch = int(indexed.sequence_lengths.sum())
    whole = (ds.num_epochs * tokens_per_epoch - 1) // 10  # every sample of the whole epochs
    assert ds.sample_index.dtype == np.int64 and ds.sample_index.shape == (whole + 1, 2)
    assert ds.shuffle_index.dtype == np.int64 and len(ds.shuffle_index) == whole
    assert ds.num_epochs > 2
    # The shuffle never mixes epochs (a sample belongs to the epoch of its last token), so
    # epoch 0 is exhausted before epoch 1 begins.
    epoch_of = (np.arange(whole) * 10 + 10) // tokens_per_epoch
    order = epoch_of[np.asarray(ds.shuffle_index)]
    assert np.all(np.diff(order) >= 0)
    assert not np.array_equal(ds.shuffle_index, np.arange(len(ds)))


def test_seed_changes_order_and_same_seed_reproduces(tmp_path):
    indexed = write_indexed(tmp_path / "d", random_documents(4, 50, min_len=3))
    a = GPTDataset(indexed, 12, 80, seed=7, cache_dir=str(tmp_path / "a"))
    b = GPTDataset(indexed, 12, 80, seed=7, cache_dir=str(tmp_path / "b"))
    c = GPTDataset(indexed, 12, 80, seed=8, cache_dir=str(tmp_path / "a"))
    assert b.built_index and c.built_index
    np.testing.assert_array_equal(a.shuffle_index, b.shuffle_index)
    np.testing.assert_array_equal(a.document_index, b.document_index)
    assert not np.array_equal(a.document_index, c.document_index)


def test_longer_run_extends_the_order(tmp_path):
    indexed = write_indexed(tmp_path / "d", random_documents(5, 40, min_len=4))
    short = GPTDataset(indexed, 10, 30, seed=3, cache_dir=str(tmp_path / "c"))
    long = GPTDataset(indexed, 10, 400, seed=3, cache_dir=str(tmp_path / "c"))
    full_epoch = GPTDataset(indexed, 10, None, seed=3, cache_dir=str(tmp_path / "c"))
    np.testing.assert_array_equal(long.document_index[:40], full_epoch.document_index)
    for i in range(len(full_epoch)):  # the whole first epoch is identical
        np.testing.assert_array_equal(long[i]["tokens"], full_epoch[i]["tokens"])
    for i in range(len(short)):  # a partial epoch is the start of the full one
        np.testing.assert_array_equal(short[i]["tokens"], full_epoch[i]["tokens"])


def test_cache_hit_loads_memory_mapped_arrays(tmp_path):
    indexed = write_indexed(tmp_path / "d", random_documents(6, 30, min_len=2))
    first = GPTDataset(indexed, 8, 100, seed=0, cache_dir=str(tmp_path / "c"))
    second = GPTDataset(indexed, 8, 100, seed=0, cache_dir=str(tmp_path / "c"))
    assert first.built_index and not second.built_index
    assert not second.shuffle_index.flags.writeable  # memory-mapped read-only from the cache
    np.testing.assert_array_equal(first.sample_index, second.sample_index)
    for other in (dict(seq_len=9), dict(num_samples=10 * len(first.shuffle_index)), dict(name="valid"),
                  dict(add_extra_token=False), dict(document_range=(0, 29))):
        kwargs = dict(seq_len=8, num_samples=100, seed=0, cache_dir=str(tmp_path / "c"))
        kwargs.update(other)
        assert GPTDataset(indexed, **kwargs).built_index, other
    # Another sample count within the same whole epochs reuses the arrays.
    within = GPTDataset(indexed, 8, len(first.shuffle_index), seed=0, cache_dir=str(tmp_path / "c"))
    assert not within.built_index and len(within) == len(first.shuffle_index)
    assert not [p for p in os.listdir(tmp_path / "c") if ".tmp" in p]


def test_default_cache_dir_is_next_to_the_prefix(tmp_path):
    indexed = write_indexed(tmp_path / "corpus", random_documents(7, 10, min_len=5))
    ds = GPTDataset(indexed, 8, None, seed=0)
    assert ds.cache_dir == tmp_path / "corpus_cache"
    assert any(p.endswith("_shuffle_index.npy") for p in os.listdir(tmp_path / "corpus_cache"))


def test_regenerated_idx_under_same_prefix_rebuilds_cache(tmp_path):
    prefix = tmp_path / "d"
    cache = str(tmp_path / "c")
    old = write_indexed(prefix, [np.arange(30) + 100 * k for k in range(10)])
    stale = GPTDataset(old, 8, 40, seed=0, cache_dir=cache)
    # Same prefix, same number of documents, different lengths and tokens.
    new_docs = [np.arange(5 + 7 * k) + 1000 * k for k in range(10)]
    new = write_indexed(prefix, new_docs)
    assert new.fingerprint() != old.fingerprint()
    fresh = GPTDataset(new, 8, 40, seed=0, cache_dir=cache)
    assert fresh.built_index
    assert not np.array_equal(fresh.sample_index, stale.sample_index)
    reference = naive_samples(new, fresh.document_index, 8, 9, len(fresh.shuffle_index))
    for i in range(len(fresh)):
        np.testing.assert_array_equal(fresh[i]["tokens"], reference[int(fresh.shuffle_index[i])])


def test_split_documents_and_ranges(tmp_path):
    assert split_documents(100, 0.1) == ((0, 90), (90, 100))
    assert split_documents(10, 0.01) == ((0, 9), (9, 10))
    assert split_documents(10, 0.0) == ((0, 10), (10, 10))
    with pytest.raises(ValueError):
        split_documents(1, 0.5)
    indexed = write_indexed(tmp_path / "d", random_documents(8, 50, min_len=10))
    train_range, valid_range = split_documents(50, 0.2)
    train = GPTDataset(indexed, 8, 50, seed=0, document_range=train_range, cache_dir=str(tmp_path / "c"))
    valid = GPTDataset(indexed, 8, None, seed=0, document_range=valid_range, name="valid",
                       cache_dir=str(tmp_path / "c"))
    assert set(np.asarray(train.document_index).tolist()) == set(range(0, 40))
    assert set(np.asarray(valid.document_index).tolist()) == set(range(40, 50))
    with pytest.raises(ValueError, match="document_range"):
        GPTDataset(indexed, 8, None, seed=0, document_range=(10, 60), cache_dir=str(tmp_path / "c"))


def test_too_little_data_for_one_sample_is_a_clear_error(tmp_path):
    indexed = write_indexed(tmp_path / "tiny", [np.arange(5)])
    with pytest.raises(ValueError, match="fewer than one sample"):
        GPTDataset(indexed, 8, None, seed=0, cache_dir=str(tmp_path / "c"))
    ds = GPTDataset(indexed, 8, 3, seed=0, cache_dir=str(tmp_path / "c"))  # tiles epochs
    assert len(ds) == 3 and ds.num_epochs == 5


def test_pickle_roundtrip_reopens_arrays(tmp_path):
    indexed = write_indexed(tmp_path / "d", random_documents(9, 20, min_len=5))
    ds = GPTDataset(indexed, 8, 30, seed=0, cache_dir=str(tmp_path / "c"))
    clone = pickle.loads(pickle.dumps(ds))
    for i in (0, 7, 29):
        np.testing.assert_array_equal(clone[i]["tokens"], ds[i]["tokens"])
    with pytest.raises(IndexError):
        ds[30]
