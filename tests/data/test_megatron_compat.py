"""Byte-for-byte cross-check of our MMIDIDX writer and reader against megatron-core's.

megatron-core is a test dependency (``pip install -e .[test]``), so these tests run rather
than skip: a missing install is a failure that says what to install.  Both writers get the
same documents (single- and multi-sequence, an empty sequence, uint16 and int32) and must
produce identical ``.bin`` *and* ``.idx`` files; then each reader opens the other's files and
must see the same sequences, pointers and document boundaries.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from megaproc.data.indexed import IndexedDataset, IndexedDatasetBuilder


def _megatron_indexed():
    """megatron-core's indexed_dataset module (a failing import is a test failure, not a skip)."""
    try:
        with warnings.catch_warnings():
            # Importing megatron.core pulls in its optimizer and inference packages: on CPU they
            # warn that Transformer Engine and Apex are absent (falling back to local kernels)
            # and about deprecated torch.jit / re-exports.  The indexed dataset code uses none
            # of them, so silencing these warnings is the only CPU workaround needed.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            from megatron.core.datasets import indexed_dataset
    except ImportError as exc:  # pragma: no cover - only without the test extras
        pytest.fail(f"megatron-core is a test dependency (pip install -e .[test]): {exc}")
    return indexed_dataset


def _documents(seed: int, count: int, vocab: int) -> list[list[np.ndarray]]:
    """``count`` documents of one to three sequences each, lengths 0..40 (one empty sequence)."""
    rng = np.random.default_rng(seed)
    docs = [[rng.integers(0, vocab, int(rng.integers(1, 40))) for _ in range(int(rng.integers(1, 4)))]
            for _ in range(count)]
    docs[3] = [docs[3][0], np.zeros(0, dtype=np.int64)]  # an empty sequence inside a document
    return docs


def _write_ours(prefix: str, docs, dtype) -> str:
    with IndexedDatasetBuilder(prefix, dtype=dtype) as builder:
        for doc in docs:
            if len(doc) == 1:
                builder.add_document(doc[0])
            else:
                for seq in doc:
                    builder.add_item(seq)
                builder.end_document()
    return prefix


def _write_theirs(megatron, prefix: str, docs, dtype) -> str:
    builder = megatron.IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in docs:
        if len(doc) == 1:
            # add_document calls numpy.array(tensor, dtype) on a torch tensor; numpy 2 warns
            # (DeprecationWarning) that torch's __array__ lacks a ``copy`` keyword. Harmless.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                builder.add_document(torch.from_numpy(doc[0]), [len(doc[0])])
        else:
            for seq in doc:
                builder.add_item(torch.from_numpy(seq))
            builder.end_document()
    builder.finalize(prefix + ".idx")
    return prefix


def _assert_same_files(a: str, b: str) -> None:
    for ext in (".bin", ".idx"):
        with open(a + ext, "rb") as fa, open(b + ext, "rb") as fb:
            left, right = fa.read(), fb.read()
        assert len(left) == len(right), f"{ext} sizes differ: {len(left)} vs {len(right)}"
        assert left == right, f"{ext} bytes differ"


def _assert_reader_sees(reader, docs, dtype) -> np.ndarray:
    """Check ``reader`` holds ``docs``; returns the byte offsets the index must hold."""
    sequences = [seq for doc in docs for seq in doc]
    bounds = np.cumsum([0] + [len(doc) for doc in docs])
    lengths = np.array([len(s) for s in sequences])
    itemsize = np.dtype(dtype).itemsize
    assert len(reader) == len(sequences)
    np.testing.assert_array_equal(np.asarray(reader.sequence_lengths), lengths)
    np.testing.assert_array_equal(np.asarray(reader.document_indices), bounds)
    for i, seq in enumerate(sequences):
        item = np.asarray(reader[i])
        assert item.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(item, seq)
    k = next(i for i, seq in enumerate(sequences) if len(seq) >= 3)
    np.testing.assert_array_equal(np.asarray(reader.get(k, offset=1, length=2)), sequences[k][1:3])
    return np.concatenate([[0], np.cumsum(lengths[:-1]) * itemsize])


@pytest.mark.parametrize("dtype,vocab", [(np.uint16, 65000), (np.int32, 200000)])
def test_writers_produce_identical_bin_and_idx(tmp_path, dtype, vocab):
    megatron = _megatron_indexed()
    docs = _documents(0, 30, vocab)
    ours = _write_ours(str(tmp_path / "ours"), docs, dtype)
    theirs = _write_theirs(megatron, str(tmp_path / "theirs"), docs, dtype)
    _assert_same_files(ours, theirs)


@pytest.mark.parametrize("dtype,vocab", [(np.uint16, 65000), (np.int32, 200000)])
def test_each_reader_reads_the_other_writers_files(tmp_path, dtype, vocab):
    megatron = _megatron_indexed()
    docs = _documents(1, 25, vocab)
    ours = _write_ours(str(tmp_path / "ours"), docs, dtype)
    theirs = _write_theirs(megatron, str(tmp_path / "theirs"), docs, dtype)
    # megatron-core reading our files
    their_reader = megatron.IndexedDataset(ours)
    pointers = _assert_reader_sees(their_reader, docs, dtype)
    np.testing.assert_array_equal(their_reader.index.sequence_pointers, pointers)
    # our reader on megatron-core's files
    our_reader = IndexedDataset(theirs)
    assert our_reader.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(our_reader.sequence_pointers, _assert_reader_sees(our_reader, docs, dtype))


def test_merged_indices_are_identical(tmp_path):
    megatron = _megatron_indexed()
    parts = [_documents(2, 12, 65000), _documents(3, 9, 65000)]
    prefixes = [_write_ours(str(tmp_path / f"part{k}"), docs, np.uint16) for k, docs in enumerate(parts)]
    with IndexedDatasetBuilder(str(tmp_path / "ours"), dtype=np.uint16) as builder:
        for prefix in prefixes:
            builder.add_index(prefix)
    theirs = megatron.IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.uint16)
    for prefix in prefixes:
        theirs.add_index(prefix)
    theirs.finalize(str(tmp_path / "theirs.idx"))
    _assert_same_files(str(tmp_path / "ours"), str(tmp_path / "theirs"))
    _assert_reader_sees(IndexedDataset(str(tmp_path / "theirs")), parts[0] + parts[1], np.uint16)
