"""data_tools.merge: concatenation, shifted document indices, dtype mismatch."""

from __future__ import annotations

import json

import numpy as np

from megaproc.data.indexed import IndexedDataset, IndexedDatasetBuilder

from .conftest import error_line, output_files, run_tool


def build(prefix, documents, dtype=np.uint16, meta=None):
    """documents: list of documents, each a list of sequences."""
    with IndexedDatasetBuilder(str(prefix), dtype=dtype) as builder:
        for sequences in documents:
            for sequence in sequences:
                builder.add_item(sequence)
            builder.end_document()
    if meta is not None:
        prefix.with_name(prefix.name + ".meta.json").write_text(json.dumps(meta))
    return prefix


def test_merge_extends_document_indices(tmp_path):
    a = build(tmp_path / "a", [[[1, 2], [3]], [[4]]], meta={"tokenizer": "tok", "vocab_size": 50})
    b = build(tmp_path / "b", [[[5]], [[6, 7], [8], [9]]], meta={"tokenizer": "tok", "vocab_size": 50})
    proc = run_tool("merge", "--inputs", a, b, "--output-prefix", tmp_path / "m")
    assert proc.returncode == 0, proc.stderr
    merged = IndexedDataset(str(tmp_path / "m"))
    # a: sequences 0..2, doc indices [0, 2, 3]; b shifted by 3: [3, 4, 7]
    assert merged.document_indices.tolist() == [0, 2, 3, 4, 7]
    assert [merged[i].tolist() for i in range(len(merged))] == [[1, 2], [3], [4], [5], [6, 7], [8], [9]]
    meta = json.loads((tmp_path / "m.meta.json").read_text())
    assert meta["tokenizer"] == "tok" and meta["vocab_size"] == 50 and meta["documents"] == 4
    assert [entry["prefix"] for entry in meta["merged_from"]] == [str(a), str(b)]
    assert run_tool("verify", tmp_path / "m").returncode == 0


def test_merge_refuses_dtype_mismatch(tmp_path):
    a = build(tmp_path / "a", [[[1, 2]]])
    b = build(tmp_path / "b", [[[3]]], dtype=np.int32)
    proc = run_tool("merge", "--inputs", a, b, "--output-prefix", tmp_path / "m")
    assert proc.returncode != 0
    line = error_line(proc)
    assert "dtype int32 differs" in line and "uint16" in line and f"{b}.idx" in line
    assert output_files(tmp_path, "m") == []


def test_merge_bad_input_one_line(tmp_path):
    a = build(tmp_path / "a", [[[1, 2]]])
    b = build(tmp_path / "b", [[[3]]])
    (tmp_path / "b.bin").write_bytes(b"\x00")
    proc = run_tool("merge", "--inputs", a, b, "--output-prefix", tmp_path / "m")
    assert proc.returncode != 0 and f"{b}.bin" in error_line(proc)
    assert output_files(tmp_path, "m") == []
