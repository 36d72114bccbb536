"""One-command preprocess of a shard directory == Megatron-LM's route, byte for byte.

Megatron-LM's documented route is ``tools/preprocess_data.py`` per (decompressed) file, then
``tools/merge_datasets.py`` over the outputs in sorted name order.  Those tools are not in the
megatron-core wheel, so the cross-check that always runs rebuilds exactly what they do with
megatron-core's own ``IndexedDatasetBuilder``: per file, every JSON line's text tokenized by
the HF tokenizer (``tokenizer(text).input_ids``, Megatron's ``HuggingFaceTokenizer``), the EOD
appended, ``add_item`` + ``end_document``; then one builder ``add_index``-ing the per-file
outputs in sorted order.  With ``MEGATRON_LM=/path/to/Megatron-LM`` (a checkout whose tools
run on this machine, e.g. tag ``core_v0.13.0``) the real scripts run as well.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.data.test_megatron_compat import _megatron_indexed

from .conftest import preprocess_main
from .corpora import write_c4


def decompress(shards: list[Path], directory: Path) -> list[Path]:
    """What Megatron's preprocess_data.py reads: plain JSON lines, one file per shard."""
    directory.mkdir()
    out = []
    for shard in shards:
        target = directory / shard.name.removesuffix(".gz")
        target.write_bytes(gzip.decompress(shard.read_bytes()))
        out.append(target)
    return out


def megatron_core_route(files: list[Path], tokenizer_dir: Path, directory: Path) -> str:
    """preprocess_data.py per file + merge_datasets.py, with megatron-core's builder."""
    import json

    from transformers import PreTrainedTokenizerFast

    megatron = _megatron_indexed()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    dtype = megatron.DType.optimal_dtype(tokenizer.vocab_size)
    directory.mkdir()
    prefixes = []
    for path in files:
        prefix = str(directory / f"{path.stem}_text_document")
        builder = megatron.IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                ids = tokenizer(json.loads(line)["text"]).input_ids + [tokenizer.eos_token_id]
                builder.add_item(torch.tensor(ids, dtype=torch.int64))
                builder.end_document()
        builder.finalize(prefix + ".idx")
        prefixes.append(prefix)
    merged = str(directory / "merged")
    builder = megatron.IndexedDatasetBuilder(merged + ".bin", dtype=dtype)
    for prefix in sorted(prefixes):
        builder.add_index(prefix)
    builder.finalize(merged + ".idx")
    return merged


def read(prefix: str) -> dict[str, bytes]:
    return {suffix: Path(f"{prefix}{suffix}").read_bytes() for suffix in (".bin", ".idx")}


@pytest.fixture()
def shards(tmp_path):
    write_c4(tmp_path / "c4", shards=4, per_shard=25, validation_shards=0)
    return sorted((tmp_path / "c4" / "en").glob("*.json.gz"))


def test_shard_directory_equals_megatron_core_per_file_then_merge(tmp_path, shards, tokenizer_dir):
    reference = read(megatron_core_route(decompress(shards, tmp_path / "plain"), tokenizer_dir, tmp_path / "mc"))
    for workers in (1, 2):
        out = tmp_path / f"ours_w{workers}"
        preprocess_main("--input", tmp_path / "c4" / "en", "--tokenizer", tokenizer_dir, "--output-prefix", out,
                        "--append-eod", "--workers", workers)
        assert read(str(out)) == reference, f"--workers {workers}"
    theirs = _megatron_indexed().IndexedDataset(str(tmp_path / "ours_w2"))
    assert len(theirs) == 100 and np.array_equal(theirs.document_indices, np.arange(101))


@pytest.mark.skipif(not os.environ.get("MEGATRON_LM"), reason="MEGATRON_LM (a Megatron-LM checkout) not set; "
                    "the megatron-core cross-check above always runs")
def test_shard_directory_equals_megatron_lm_tools(tmp_path, shards, tokenizer_dir):
    checkout = Path(os.environ["MEGATRON_LM"])
    env = dict(os.environ, PYTHONPATH=str(checkout))
    out_dir = tmp_path / "mlm"
    out_dir.mkdir()
    for path in decompress(shards, tmp_path / "plain"):
        subprocess.run([sys.executable, str(checkout / "tools" / "preprocess_data.py"), "--input", str(path),
                        "--output-prefix", str(out_dir / path.stem), "--tokenizer-type", "HuggingFaceTokenizer",
                        "--tokenizer-model", str(tokenizer_dir), "--workers", "2", "--append-eod"],
                       env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, str(checkout / "tools" / "merge_datasets.py"), "--input", str(out_dir),
                    "--output-prefix", str(tmp_path / "merged")], env=env, check=True, capture_output=True)
    preprocess_main("--input", tmp_path / "c4" / "en", "--tokenizer", tokenizer_dir, "--output-prefix",
                    tmp_path / "ours", "--append-eod", "--workers", 2)
    assert read(str(tmp_path / "ours")) == read(str(tmp_path / "merged"))
