"""Shared fixtures for the data_tools tests: a tiny tokenizer, a real code corpus, CLI runner.

Nothing is downloaded: the tokenizer is a byte-level BPE trained in about a second on Python
standard-library sources, which also serve as the corpus.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BOS_TOKEN, EOS_TOKEN = "<s>", "<|endoftext|>"


def stdlib_sources(limit: int, max_chars: int = 3000) -> list[str]:
    """The first ``limit`` stdlib ``.py`` files (sorted by name), each cut to ``max_chars``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(stdlib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            texts.append(text[:max_chars])
        if len(texts) == limit:
            break
    return texts


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    """Forty real documents of Python source, plus one with non-ASCII text."""
    return stdlib_sources(40) + ["naïve café — ünïcödé ✓ 日本語"]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus) -> Path:
    """A HF tokenizer directory (tokenizer.json + tokenizer_config.json) with BOS and EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS_TOKEN, BOS_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    directory = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN}))
    return directory


@pytest.fixture(scope="session")
def reference_tokenizer(tokenizer_dir):
    """The same tokenizer loaded directly, to compute expected token ids."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))


def expected_ids(reference_tokenizer, texts, bos=False, eod=False) -> list[list[int]]:
    """Token ids each document should have in the indexed output."""
    bos_id, eos_id = reference_tokenizer.token_to_id(BOS_TOKEN), reference_tokenizer.token_to_id(EOS_TOKEN)
    result = []
    for text in texts:
        ids = reference_tokenizer.encode(text, add_special_tokens=False).ids
        result.append(([bos_id] if bos else []) + ids + ([eos_id] if eod else []))
    return result


def write_jsonl(path: Path, records, compression: str | None = None) -> Path:
    """Write records (dicts, or raw ``bytes`` lines) as JSON lines, optionally gz/zst compressed."""
    payload = b"".join(r if isinstance(r, bytes) else json.dumps(r).encode() + b"\n" for r in records)
    if compression == "gz":
        payload = gzip.compress(payload)
    elif compression == "zst":
        import zstandard

        payload = zstandard.ZstdCompressor().compress(payload)
    path.write_bytes(payload)
    return path


def run_tool(module: str, *args, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m data_tools.<module> args`` from the repository root."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", f"data_tools.{module}", *map(str, args)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"data_tools.{module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a failed tool run (asserts there is exactly one)."""
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def dataset_documents(prefix) -> list[list[int]]:
    """All documents of an indexed dataset as lists of token ids (one sequence per document)."""
    from megaproc.data.indexed import IndexedDataset

    dataset = IndexedDataset(str(prefix))
    assert np.array_equal(dataset.document_indices, np.arange(len(dataset) + 1))
    return [dataset[i].tolist() for i in range(len(dataset))]


def output_files(directory: Path, stem: str) -> list[str]:
    """Every file in ``directory`` whose name starts with ``stem`` (complete or temporary)."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(stem))


def preprocess_main(*args) -> None:
    """Run data_tools.preprocess in this process (quicker than a subprocess; bad input raises
    DataToolError instead of exiting 2 -- the exit codes are tested through :func:`run_tool`)."""
    from data_tools.preprocess import main

    assert main([str(a) for a in args]) == 0


def merge_main(prefixes, output_prefix) -> None:
    """The by-hand route's second half: ``data_tools.merge`` of ``prefixes`` in this order."""
    from data_tools.merge import merge

    merge([str(p) for p in prefixes], str(output_prefix))


@pytest.fixture()
def hf_home(tmp_path, monkeypatch):
    """An empty HF home (datasets cache) for this test and the processes it starts."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    import datasets.config

    # datasets reads the variable once, at import
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    return home
