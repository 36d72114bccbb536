"""Tests for megaproc.data.indexed: Megatron MMIDIDX byte layout, reading, writing, errors."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest

from megaproc.data.indexed import (DTYPE_CODES, IndexedDataset, IndexedDatasetBuilder,
                                   IndexedDatasetError, best_dtype)

# Three documents: doc 0 = sequences [0, 1], doc 1 = [2], doc 2 = [3].
SEQUENCES = [[5, 6, 7], [8], [9, 10, 11, 12], [13, 14]]
DOCUMENT_INDICES = [0, 2, 3, 4]


def megatron_bytes(sequences, document_indices, code=8, np_dtype=np.uint16):
    """Build .idx/.bin bytes by hand with struct, following Megatron's MMIDIDX writer."""
    itemsize = np.dtype(np_dtype).itemsize
    lengths = [len(s) for s in sequences]
    pointers, running = [], 0
    for length in lengths:
        pointers.append(running)
        running += length * itemsize
    idx = b"MMIDIDX\x00\x00"
    idx += struct.pack("<Q", 1)
    idx += struct.pack("<B", code)
    idx += struct.pack("<Q", len(sequences))
    idx += struct.pack("<Q", len(document_indices))
    idx += struct.pack(f"<{len(lengths)}i", *lengths)
    idx += struct.pack(f"<{len(pointers)}q", *pointers)
    idx += struct.pack(f"<{len(document_indices)}q", *document_indices)
    fmt = {np.dtype(np.uint16): "H", np.dtype(np.int32): "i"}[np.dtype(np_dtype)]
    flat = [t for s in sequences for t in s]
    data = struct.pack(f"<{len(flat)}{fmt}", *flat)
    return idx, data


def write_pair(prefix, idx, data):
    with open(f"{prefix}.idx", "wb") as handle:
        handle.write(idx)
    with open(f"{prefix}.bin", "wb") as handle:
        handle.write(data)


def build(prefix, dtype=np.uint16):
    with IndexedDatasetBuilder(str(prefix), dtype=dtype) as builder:
        builder.add_item(SEQUENCES[0])
        builder.add_item(SEQUENCES[1])
        builder.end_document()
        builder.add_document(SEQUENCES[2])
        builder.add_document(SEQUENCES[3])
    return str(prefix)


@pytest.mark.parametrize("code,np_dtype", [(8, np.uint16), (4, np.int32)])
def test_reads_hand_built_megatron_bytes(tmp_path, code, np_dtype):
    prefix = str(tmp_path / "hand")
    write_pair(prefix, *megatron_bytes(SEQUENCES, DOCUMENT_INDICES, code, np_dtype))
    ds = IndexedDataset(prefix)
    assert ds.dtype == np.dtype(np_dtype)
    assert len(ds) == 4
    assert ds.sequence_lengths.dtype == np.int32 and ds.sequence_pointers.dtype == np.int64
    assert ds.document_indices.tolist() == DOCUMENT_INDICES
    assert [ds[i].tolist() for i in range(4)] == SEQUENCES
    assert ds.num_tokens == sum(map(len, SEQUENCES))
    assert ds.get(2, offset=1, length=2).tolist() == [10, 11]
    assert ds.get(2, offset=3).tolist() == [12]
    assert ds[-1].tolist() == SEQUENCES[-1]


@pytest.mark.parametrize("code,np_dtype", [(8, np.uint16), (4, np.int32)])
def test_written_bytes_are_exactly_megatron_layout(tmp_path, code, np_dtype):
    prefix = build(tmp_path / "built", dtype=np_dtype)
    expected_idx, expected_bin = megatron_bytes(SEQUENCES, DOCUMENT_INDICES, code, np_dtype)
    assert open(f"{prefix}.idx", "rb").read() == expected_idx
    assert open(f"{prefix}.bin", "rb").read() == expected_bin


def test_views_are_zero_copy(tmp_path):
    ds = IndexedDataset(build(tmp_path / "z"))
    item = ds[2]
    assert not item.flags.owndata and not item.flags.writeable
    assert not ds.sequence_lengths.flags.owndata
    assert not ds.document_indices.flags.owndata


def test_empty_dataset_round_trip(tmp_path):
    prefix = str(tmp_path / "empty")
    with IndexedDatasetBuilder(prefix):
        pass
    ds = IndexedDataset(prefix)
    assert len(ds) == 0 and ds.num_tokens == 0 and ds.document_indices.tolist() == [0]


def test_large_stream_grows_arrays(tmp_path):
    prefix = str(tmp_path / "many")
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 60000, size=int(rng.integers(0, 9)), dtype=np.int64) for _ in range(5000)]
    with IndexedDatasetBuilder(prefix) as builder:
        for doc in docs:
            builder.add_document(doc)
    ds = IndexedDataset(prefix)
    assert len(ds) == 5000
    assert all(np.array_equal(ds[i], docs[i]) for i in (0, 1, 2499, 4999))
    lengths = np.array([len(d) for d in docs])
    assert np.array_equal(ds.sequence_pointers, (np.cumsum(lengths) - lengths) * 2)


def test_add_index_extends_document_indices(tmp_path):
    first = build(tmp_path / "a")
    second = build(tmp_path / "b")
    merged = str(tmp_path / "merged")
    with IndexedDatasetBuilder(merged) as builder:
        builder.add_document([1, 2])
        builder.add_index(first)
        builder.add_index(second)
    ds = IndexedDataset(merged)
    assert ds.document_indices.tolist() == [0, 1, 3, 4, 5, 7, 8, 9]
    assert [ds[i].tolist() for i in range(len(ds))] == [[1, 2]] + SEQUENCES + SEQUENCES


def test_add_index_refuses_other_dtype(tmp_path):
    wide = build(tmp_path / "wide", dtype=np.int32)
    with pytest.raises(IndexedDatasetError, match="dtype"):
        with IndexedDatasetBuilder(str(tmp_path / "out")) as builder:
            builder.add_index(wide)
    assert not IndexedDataset.exists(str(tmp_path / "out"))
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]


def test_exception_in_context_leaves_no_files(tmp_path):
    prefix = str(tmp_path / "fail")
    with pytest.raises(RuntimeError):
        with IndexedDatasetBuilder(prefix) as builder:
            builder.add_document([1, 2, 3])
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_partial_output_has_temporary_names_only(tmp_path):
    prefix = str(tmp_path / "partial")
    builder = IndexedDatasetBuilder(prefix)
    builder.add_document([1, 2, 3])
    assert not IndexedDataset.exists(prefix)
    assert not os.path.exists(f"{prefix}.bin") and not os.path.exists(f"{prefix}.idx")
    builder.finalize()
    assert IndexedDataset.exists(prefix)
    assert sorted(os.listdir(tmp_path)) == ["partial.bin", "partial.idx"]


def test_builder_rejects_unwritable_dtype_and_overflow(tmp_path):
    with pytest.raises(ValueError, match="int32 and uint16"):
        IndexedDatasetBuilder(str(tmp_path / "x"), dtype=np.int64)
    with IndexedDatasetBuilder(str(tmp_path / "y")) as builder:
        with pytest.raises(ValueError, match="do not fit"):
            builder.add_document(np.array([70000]))
        builder.add_document([1])


def test_finalize_refuses_open_document(tmp_path):
    builder = IndexedDatasetBuilder(str(tmp_path / "open"))
    builder.add_item([1, 2])
    with pytest.raises(ValueError, match="end_document"):
        builder.finalize()
    assert os.listdir(tmp_path) == []


def test_best_dtype():
    assert best_dtype(50257) == np.uint16
    assert best_dtype(65499) == np.uint16
    assert best_dtype(65500) == np.int32
    assert best_dtype(128256) == np.int32
    assert DTYPE_CODES[8] is np.uint16 and DTYPE_CODES[4] is np.int32


def test_fingerprint_detects_regenerated_index(tmp_path):
    prefix = build(tmp_path / "fp")
    before = IndexedDataset(prefix).fingerprint()
    assert before == IndexedDataset(prefix).fingerprint()
    with IndexedDatasetBuilder(prefix) as builder:
        for seq in SEQUENCES:
            builder.add_document(seq)
    assert IndexedDataset(prefix).fingerprint() != before


def test_pickle_reopens(tmp_path):
    ds = IndexedDataset(build(tmp_path / "p"))
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[2].tolist() == SEQUENCES[2] and clone.fingerprint() == ds.fingerprint()


def test_out_of_range_access(tmp_path):
    ds = IndexedDataset(build(tmp_path / "r"))
    with pytest.raises(IndexError):
        ds[4]
    with pytest.raises(IndexError):
        ds.get(0, offset=2, length=5)


# ---- bad files: each raises IndexedDatasetError with a one-line message naming the file ----


def check_error(prefix, match, suffix=".idx"):
    with pytest.raises(IndexedDatasetError, match=match) as info:
        IndexedDataset(prefix)
    message = str(info.value)
    assert "\n" not in message
    assert f"{prefix}{suffix}" in message
    return message


def test_bad_magic(tmp_path):
    prefix = str(tmp_path / "m")
    idx, data = megatron_bytes(SEQUENCES, DOCUMENT_INDICES)
    write_pair(prefix, b"NOTMMIDX\x00" + idx[9:], data)
    check_error(prefix, "bad magic")


def test_truncated_index(tmp_path):
    prefix = str(tmp_path / "t")
    idx, data = megatron_bytes(SEQUENCES, DOCUMENT_INDICES)
    write_pair(prefix, idx[:-5], data)
    check_error(prefix, "truncated")
    write_pair(prefix, idx[:20], data)
    check_error(prefix, "truncated")


def test_bin_size_mismatch(tmp_path):
    prefix = str(tmp_path / "b")
    idx, data = megatron_bytes(SEQUENCES, DOCUMENT_INDICES)
    write_pair(prefix, idx, data[:-2])
    check_error(prefix, "does not match", suffix=".bin")
    write_pair(prefix, idx, data + b"\x00\x00")
    check_error(prefix, "does not match", suffix=".bin")


@pytest.mark.parametrize("code", [6, 7])
def test_ambiguous_float_dtype_codes_refused(tmp_path, code):
    prefix = str(tmp_path / f"f{code}")
    idx, data = megatron_bytes(SEQUENCES, DOCUMENT_INDICES)
    write_pair(prefix, idx[:17] + bytes([code]) + idx[18:], data)
    message = check_error(prefix, f"dtype code {code}")
    assert "forks" in message and "float" in message


def test_unknown_dtype_code_and_version(tmp_path):
    prefix = str(tmp_path / "u")
    idx, data = megatron_bytes(SEQUENCES, DOCUMENT_INDICES)
    write_pair(prefix, idx[:17] + bytes([9]) + idx[18:], data)
    check_error(prefix, "unknown dtype code 9")
    write_pair(prefix, idx[:9] + struct.pack("<Q", 2) + idx[17:], data)
    check_error(prefix, "version 2")


def test_bad_document_indices(tmp_path):
    prefix = str(tmp_path / "d")
    write_pair(prefix, *megatron_bytes(SEQUENCES, [0, 2, 3]))
    check_error(prefix, "document_indices")


def test_missing_files(tmp_path):
    prefix = str(tmp_path / "missing")
    assert not IndexedDataset.exists(prefix)
    check_error(prefix, "not found")
