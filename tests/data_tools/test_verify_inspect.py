"""data_tools.verify exit codes for each broken invariant, and data_tools.inspect output."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from megaproc.data.indexed import IndexedDatasetBuilder

from .conftest import error_line, run_tool

DOCS = [[5, 6, 7], [8], [9, 10, 11, 12], [13, 14]]


@pytest.fixture()
def good_prefix(tmp_path):
    prefix = tmp_path / "good"
    with IndexedDatasetBuilder(str(prefix)) as builder:
        for doc in DOCS:
            builder.add_document(doc)
    (tmp_path / "good.meta.json").write_text(json.dumps({"vocab_size": 100}))
    return prefix


def patch(path, offset, data):
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


def test_verify_good_dataset_exit_zero_and_lists_checks(good_prefix):
    proc = run_tool("verify", good_prefix)
    assert proc.returncode == 0, proc.stdout
    for name in ("magic", "version", "dtype code", "document_indices[0] == 0", "document_indices[-1] == N",
                 "non-decreasing", "pointers", ".bin size", "token ids in [0, 100)"):
        assert any(name in line and line.startswith("[ok") for line in proc.stdout.splitlines()), name
    assert "FAIL" not in proc.stdout


# Offsets: header 34 bytes, lengths 4*4, pointers 4*8, doc indices 5*8 (N = 4, D = 5).
LENGTHS, POINTERS, DOC_INDICES = 34, 34 + 16, 34 + 16 + 32


@pytest.mark.parametrize(
    "corruption,failed_check",
    [
        ("bad_magic", "magic"),
        ("truncated_idx", "idx size"),
        ("bin_size", ".bin size"),
        ("dtype_6", "dtype code"),
        ("dtype_7", "dtype code"),
        ("version", "version"),
        ("first_doc_index", "document_indices[0] == 0"),
        ("last_doc_index", "document_indices[-1] == N"),
        ("decreasing_doc_index", "non-decreasing"),
        ("pointer", "pointers"),
        ("token_out_of_vocab", "token ids"),
    ],
)
def test_verify_detects_each_broken_invariant(good_prefix, corruption, failed_check):
    idx, bin_ = good_prefix.with_suffix(".idx"), good_prefix.with_suffix(".bin")
    if corruption == "bad_magic":
        patch(idx, 0, b"XXIDIDX")
    elif corruption == "truncated_idx":
        idx.write_bytes(idx.read_bytes()[:-8])
    elif corruption == "bin_size":
        bin_.write_bytes(bin_.read_bytes() + b"\x00\x00")
    elif corruption.startswith("dtype_"):
        patch(idx, 17, bytes([int(corruption[-1])]))
    elif corruption == "version":
        patch(idx, 9, struct.pack("<Q", 3))
    elif corruption == "first_doc_index":
        patch(idx, DOC_INDICES, struct.pack("<q", 1))
    elif corruption == "last_doc_index":
        patch(idx, DOC_INDICES + 32, struct.pack("<q", 3))
    elif corruption == "decreasing_doc_index":
        patch(idx, DOC_INDICES + 8, struct.pack("<qq", 3, 2))
    elif corruption == "pointer":
        patch(idx, POINTERS + 8, struct.pack("<q", 4))
    elif corruption == "token_out_of_vocab":
        patch(bin_, 2, struct.pack("<H", 100))
    proc = run_tool("verify", good_prefix)
    assert proc.returncode == 1
    failed = [line for line in proc.stdout.splitlines() if line.startswith("[FAIL]")]
    assert failed and failed_check in failed[0], proc.stdout
    assert str(good_prefix) in error_line(proc)


def test_verify_missing_files(tmp_path):
    proc = run_tool("verify", tmp_path / "nothing")
    assert proc.returncode == 1 and "[FAIL]" in proc.stdout


def test_inspect_reports_counts_histogram_and_decoded_text(tmp_path, corpus, tokenizer_dir, reference_tokenizer):
    source = tmp_path / "d.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus[:5]))
    out = tmp_path / "out"
    run_tool("preprocess", "--input", source, "--tokenizer", tokenizer_dir, "--output-prefix", out,
             "--workers", 0, check=True)
    proc = run_tool("inspect", out, "--num-tokens", 8)
    assert proc.returncode == 0, proc.stderr
    first = reference_tokenizer.encode(corpus[0], add_special_tokens=False).ids[:8]
    assert f"first tokens of document 0: {first}" in proc.stdout
    assert repr(reference_tokenizer.decode(first)) in proc.stdout  # tokenizer found via meta.json
    assert "documents: 5" in proc.stdout and "dtype: uint16" in proc.stdout
    assert "length histogram" in proc.stdout
    summary = json.loads(run_tool("inspect", out, "--json", "--tokenizer", tokenizer_dir, check=True).stdout)
    total = sum(len(reference_tokenizer.encode(t, add_special_tokens=False).ids) for t in corpus[:5])
    assert summary["documents"] == 5 and summary["tokens"] == total
    assert sum(row["count"] for row in summary["length_histogram"]) == 5


def test_inspect_bad_file_one_line(good_prefix):
    patch(good_prefix.with_suffix(".idx"), 17, bytes([6]))
    proc = run_tool("inspect", good_prefix)
    assert proc.returncode != 0
    line = error_line(proc)
    assert "dtype code 6" in line and str(good_prefix) in line


@pytest.mark.parametrize("tool", ["preprocess", "verify", "inspect", "merge", "import_shards"])
def test_help(tool):
    proc = run_tool(tool, "--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout


def test_length_histogram_buckets():
    from data_tools.inspect import length_histogram

    rows = length_histogram(np.array([0, 1, 2, 3, 4, 1000], dtype=np.int32))
    assert rows == [(0, 1, 1), (1, 2, 1), (2, 4, 2), (4, 8, 1), (512, 1024, 1)]
