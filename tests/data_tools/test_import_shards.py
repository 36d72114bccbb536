"""data_tools.import_shards: documents recovered from the seeds' c4_packed and fineweb shards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import dataset_documents, error_line, output_files, run_tool

EOS, BOS = 0, 1


def random_documents(rng, count, vocab=500, reserved=2):
    return [rng.integers(reserved, vocab, size=int(rng.integers(1, 40))).tolist() for _ in range(count)]


def write_c4_packed(directory, documents, seq_len, blocks_per_shard, meta_extra=None):
    """Mimic build_pretrain.py: doc EOS doc EOS ... cut into seq_len+1 blocks, whole blocks only."""
    directory.mkdir()
    stream = np.array([t for doc in documents for t in doc + [EOS]], dtype=np.uint16)
    block = seq_len + 1
    stream = stream[: len(stream) // block * block]
    shard_tokens = blocks_per_shard * block
    for index, start in enumerate(range(0, len(stream), shard_tokens)):
        stream[start : start + shard_tokens].tofile(directory / f"shard_{index:05d}.bin")
    meta = {"seq_len": seq_len, "eos_token_id": EOS, "vocab_size": 500, "dtype": "uint16", **(meta_extra or {})}
    (directory / "meta.json").write_text(json.dumps(meta))
    return stream


def test_c4_packed_documents_span_blocks_and_shards(tmp_path):
    docs = random_documents(np.random.default_rng(0), 60)
    stream = write_c4_packed(tmp_path / "c4", docs, seq_len=31, blocks_per_shard=3)
    assert len(list((tmp_path / "c4").glob("shard_*.bin"))) > 2
    proc = run_tool("import_shards", "--format", "c4_packed", "--input", tmp_path / "c4", "--output-prefix", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    got = dataset_documents(tmp_path / "out")
    complete = [doc + [EOS] for doc in docs]
    # every document but the cut-off last one comes back whole, EOS at its end
    assert got[:-1] == complete[: len(got) - 1]
    assert complete[len(got) - 1][: len(got[-1])] == got[-1] and got[-1][-1] != EOS
    assert sum(map(len, got)) == len(stream)
    meta = json.loads((tmp_path / "out.meta.json").read_text())
    assert meta["trailing_partial_document"] is True and meta["eos_token_id"] == EOS
    assert "last document has no final EOS" in proc.stderr
    assert run_tool("verify", tmp_path / "out").returncode == 0


def test_c4_packed_eos_flag_overrides_meta(tmp_path):
    docs = [[5, 6], [7, 8, 9], [10, 11]]  # 10 tokens with EOS = 5 blocks of seq_len + 1 = 2
    write_c4_packed(tmp_path / "c4", docs, seq_len=1, blocks_per_shard=2)
    (tmp_path / "c4" / "meta.json").write_text(json.dumps({"seq_len": 1}))  # no eos at all
    proc = run_tool("import_shards", "--format", "c4_packed", "--input", tmp_path / "c4", "--output-prefix", tmp_path / "x")
    assert proc.returncode != 0 and "--eos-id" in error_line(proc)
    assert output_files(tmp_path, "x") == []
    run_tool("import_shards", "--format", "c4_packed", "--input", tmp_path / "c4", "--output-prefix", tmp_path / "out",
             "--eos-id", EOS, check=True)
    assert dataset_documents(tmp_path / "out") == [[5, 6, EOS], [7, 8, 9, EOS], [10, 11, EOS]]


def test_c4_packed_partial_block_refused(tmp_path):
    write_c4_packed(tmp_path / "c4", [[5, 6, 7]] * 4, seq_len=3, blocks_per_shard=2)
    with open(tmp_path / "c4" / "shard_00000.bin", "ab") as handle:
        handle.write(b"\x05\x00")
    proc = run_tool("import_shards", "--format", "c4_packed", "--input", tmp_path / "c4", "--output-prefix", tmp_path / "out")
    assert proc.returncode != 0 and "shard_00000.bin" in error_line(proc)
    assert output_files(tmp_path, "out") == []


def write_fineweb(directory, split, documents, tokens_per_shard, llmc_header=False):
    """Mimic fineweb.py: BOS + doc for each document, flat uint16, shards filled to capacity."""
    directory.mkdir(exist_ok=True)
    stream = np.array([t for doc in documents for t in [BOS] + doc], dtype=np.uint16)
    for index, start in enumerate(range(0, len(stream), tokens_per_shard)):
        part = stream[start : start + tokens_per_shard]
        with open(directory / f"{split}_{index:06d}.bin", "wb") as handle:
            if llmc_header:
                header = np.zeros(256, dtype=np.int32)
                header[:3] = [20240520, 1, len(part)]
                header.tofile(handle)
            part.tofile(handle)
    (directory / "meta.json").write_text(json.dumps({"bos_token_id": BOS, "vocab_size": 500, "dtype": "uint16"}))


@pytest.mark.parametrize("llmc_header", [False, True])
def test_fineweb_documents_keep_bos(tmp_path, llmc_header):
    rng = np.random.default_rng(1)
    train, val = random_documents(rng, 50), random_documents(rng, 7)
    write_fineweb(tmp_path / "fw", "train", train, tokens_per_shard=97, llmc_header=llmc_header)
    write_fineweb(tmp_path / "fw", "val", val, tokens_per_shard=1000, llmc_header=llmc_header)
    for split, docs in (("train", train), ("val", val)):
        out = tmp_path / split
        run_tool("import_shards", "--format", "fineweb", "--input", tmp_path / "fw", "--output-prefix", out,
                 "--split", split, check=True)
        assert dataset_documents(out) == [[BOS] + doc for doc in docs]


def test_fineweb_bos_flag_and_missing_split(tmp_path):
    write_fineweb(tmp_path / "fw", "train", [[5, 6], [7]], tokens_per_shard=100)
    (tmp_path / "fw" / "meta.json").write_text("{}")
    proc = run_tool("import_shards", "--format", "fineweb", "--input", tmp_path / "fw", "--output-prefix", tmp_path / "o")
    assert proc.returncode != 0 and "--bos-id" in error_line(proc)
    run_tool("import_shards", "--format", "fineweb", "--input", tmp_path / "fw", "--output-prefix", tmp_path / "o",
             "--bos-id", BOS, check=True)
    assert dataset_documents(tmp_path / "o") == [[BOS, 5, 6], [BOS, 7]]
    proc = run_tool("import_shards", "--format", "fineweb", "--input", tmp_path / "fw", "--output-prefix", tmp_path / "v",
                    "--split", "val", "--bos-id", BOS)
    assert proc.returncode != 0 and "val_*.bin" in error_line(proc)


def test_token_beyond_vocab_refused(tmp_path):
    write_fineweb(tmp_path / "fw", "train", [[5, 6], [700]], tokens_per_shard=100)
    proc = run_tool("import_shards", "--format", "fineweb", "--input", tmp_path / "fw", "--output-prefix", tmp_path / "o")
    assert proc.returncode != 0 and "vocab_size 500" in error_line(proc)
    assert output_files(tmp_path, "o") == []


def test_document_splitter_streams_across_feeds():
    from data_tools.import_shards import DocumentSplitter

    class Collect:
        def __init__(self):
            self.docs = []

        def add_document(self, tokens):
            self.docs.append(list(tokens))

    sink = Collect()
    splitter = DocumentSplitter(sink, delimiter=0, mode="end")
    for piece in ([1, 2], [3, 0, 4], [0], [5, 6], [7]):
        splitter.feed(np.array(piece))
    assert splitter.close() is True
    assert sink.docs == [[1, 2, 3, 0], [4, 0], [5, 6, 7]]
