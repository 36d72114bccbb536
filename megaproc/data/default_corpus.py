"""The built-in default data: a code corpus from the Python standard library's own sources.

Every machine with Python has these files, so the quickstart needs no download.  On first use
we train a byte-level BPE tokenizer on them, tokenize every file as one document (eos appended)
into the indexed format, and cache both under ``$MEGAPROC_CACHE`` (default
``~/.cache/megaproc``).  Concurrent processes wait on a file lock; the cache is written to a
temporary directory and renamed, so an interrupted build is never mistaken for a finished one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sysconfig
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from megaproc.data.indexed import IndexedDatasetBuilder, best_dtype
from megaproc.files import atomic_write_json, cache_root

FORMAT_VERSION = 1
SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__"}
EOS = "<|endoftext|>"
PAD = "<|pad|>"


def stdlib_source_files() -> list[Path]:
    """The standard library's .py files (tests and bundled packages left out), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        if not SKIP_PARTS.intersection(path.relative_to(root).parts):
            files.append(path)
    return files


def read_documents(files: list[Path]) -> list[str]:
    """File contents as text (undecodable bytes replaced), empty files dropped."""
    docs = []
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        if text.strip():
            docs.append(text)
    return docs


def train_tokenizer(docs: list[str], vocab_size: int, out_dir: Path):
    """Train a byte-level BPE tokenizer and save it as a HF fast-tokenizer directory."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(docs, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   pad_token=PAD, unk_token=None)
    fast.save_pretrained(str(out_dir))
    return fast


def write_corpus(docs: list[str], tokenizer, prefix: Path) -> dict:
    """Tokenize documents (eos appended) into PREFIX.bin/.idx; return counts."""
    backend = tokenizer.backend_tokenizer
    eos = tokenizer.eos_token_id
    dtype = best_dtype(len(tokenizer))
    tokens = 0
    with IndexedDatasetBuilder(str(prefix), dtype=dtype) as builder:
        for start in range(0, len(docs), 256):
            for enc in backend.encode_batch(docs[start:start + 256], add_special_tokens=False):
                ids = np.asarray(enc.ids + [eos], dtype=dtype)
                builder.add_document(ids)
                tokens += len(ids)
        builder.finalize()
    return {"documents": len(docs), "tokens": tokens, "dtype": np.dtype(dtype).name}


def default_corpus_paths(vocab_size: int = 2048, root: Path | None = None) -> tuple[Path, Path]:
    """``(tokenizer_dir, indexed_prefix)`` of the built-in corpus (whether built yet or not)."""
    final = (Path(root) if root else cache_root()) / f"stdlib_code_v{FORMAT_VERSION}_bpe{vocab_size}"
    return final / "tokenizer", final / "corpus"


def ensure_default_corpus(vocab_size: int = 2048, root: Path | None = None,
                          log=print) -> tuple[Path, Path]:
    """Build (once) and return ``(tokenizer_dir, indexed_prefix)`` of the built-in corpus."""
    root = Path(root) if root else cache_root()
    tokenizer_dir, prefix = default_corpus_paths(vocab_size, root)
    final = tokenizer_dir.parent
    if (final / "meta.json").is_file():
        return tokenizer_dir, prefix
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other processes wait here while one builds
        if (final / "meta.json").is_file():
            return tokenizer_dir, prefix
        started = time.time()
        log(f"building the default corpus (Python stdlib sources) in {final} ...")
        tmp = root / f".tmp_{final.name}_{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        files = stdlib_source_files()
        docs = read_documents(files)
        tokenizer = train_tokenizer(docs, vocab_size, tmp / "tokenizer")
        counts = write_corpus(docs, tokenizer, tmp / "corpus")
        meta = {"format_version": FORMAT_VERSION, "source": sysconfig.get_paths()["stdlib"],
                "files": len(files), "vocab_size": len(tokenizer), **counts}
        atomic_write_json(tmp / "meta.json", meta)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        log(f"default corpus ready: {counts['documents']} documents, "
            f"{counts['tokens']:,} tokens, vocab {len(tokenizer)} ({time.time() - started:.1f}s)")
    return tokenizer_dir, prefix
