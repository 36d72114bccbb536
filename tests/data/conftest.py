"""Fixtures for the data tests: a tiny tokenizer trained here and small indexed files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megaproc.data.indexed import IndexedDataset, IndexedDatasetBuilder

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "graph search: find the next vertex on the path from start to goal",
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
] * 20


def make_tokenizer():
    """Byte-level BPE with bos/eos/pad, trained in a fraction of a second (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<bos>", eos_token="<eos>")


@pytest.fixture(scope="session")
def tokenizer():
    """A session-wide tiny tokenizer."""
    return make_tokenizer()


def random_documents(seed: int, count: int, max_len: int = 40, vocab: int = 1000,
                     min_len: int = 0) -> list[np.ndarray]:
    """``count`` random token documents of lengths in ``[min_len, max_len)``."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, int(rng.integers(min_len, max_len))).astype(np.int64)
            for _ in range(count)]


def write_indexed(prefix, documents, dtype=np.uint16) -> IndexedDataset:
    """Write ``documents`` (each a token array, or a list of arrays = a multi-sequence
    document) as ``prefix.bin/.idx`` and open it."""
    with IndexedDatasetBuilder(str(prefix), dtype=dtype) as builder:
        for doc in documents:
            if isinstance(doc, list):
                for item in doc:
                    builder.add_item(np.asarray(item))
                builder.end_document()
            else:
                builder.add_document(np.asarray(doc))
    return IndexedDataset(str(prefix))


def write_jsonl(path, records) -> Path:
    """Write ``records`` one JSON object per line."""
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def make_indexed(tmp_path):
    """Factory: ``make_indexed(name, documents)`` -> opened IndexedDataset under tmp_path."""

    def factory(name: str, documents, dtype=np.uint16) -> IndexedDataset:
        return write_indexed(tmp_path / name, documents, dtype)

    return factory
