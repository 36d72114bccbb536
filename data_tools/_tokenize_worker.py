"""Worker side of ``data_tools.preprocess``: decode a raw chunk, validate, tokenize.

A worker process is initialised once with :func:`init_worker` (it loads the tokenizer and
caps its threads) and then turns each :class:`~data_tools._readers.RawChunk` into a
:class:`TokenizedChunk`: one flat token array plus per-document lengths, so results cross
the process boundary as two numpy buffers rather than millions of Python ints.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from data_tools._errors import DataToolError
from data_tools._readers import FILES, JSON_LINES, RawChunk
from data_tools._tokenizer import Tokenizer, load_tokenizer

BAD_RECORD_KINDS = ("invalid_json", "missing_key", "non_utf8")
MAX_EXAMPLES = 5


@dataclass
class WorkerSettings:
    """What every worker needs to turn raw chunks into tokens."""

    tokenizer: str
    json_key: str
    skip_bad: bool
    dtype: str
    bos_id: int | None  # prepended to every document when set
    eod_id: int | None  # appended to every document when set
    threads: int


@dataclass
class TokenizedChunk:
    """Tokens of one chunk: ``tokens`` flat, ``lengths[i]`` tokens per kept document."""

    tokens: np.ndarray
    lengths: np.ndarray
    input_docs: int
    nbytes: int
    counts: Counter = field(default_factory=Counter)  # empty, blank_lines, and BAD_RECORD_KINDS
    examples: dict = field(default_factory=dict)  # kind -> a few locations, for warnings


class ChunkTokenizer:
    """Decodes, validates and tokenizes raw chunks with one loaded tokenizer."""

    def __init__(self, settings: WorkerSettings, tokenizer: Tokenizer | None = None):
        self.settings = settings
        self.tokenizer = tokenizer or load_tokenizer(settings.tokenizer)
        self.tokenizer.set_threads(settings.threads)
        self.dtype = np.dtype(settings.dtype)

    def _bad(self, result: TokenizedChunk, kind: str, location: str, message: str) -> None:
        if not self.settings.skip_bad:
            raise DataToolError(f"{location}: {message} (use --skip-bad to skip and count such records)")
        result.counts[kind] += 1
        result.examples.setdefault(kind, [])
        if len(result.examples[kind]) < MAX_EXAMPLES:
            result.examples[kind].append(location)

    def _empty(self, result: TokenizedChunk, location: str) -> None:
        result.counts["empty"] += 1
        result.examples.setdefault("empty", [])
        if len(result.examples["empty"]) < MAX_EXAMPLES:
            result.examples["empty"].append(location)

    def _texts_from_json_lines(self, chunk: RawChunk, result: TokenizedChunk):
        key = self.settings.json_key
        texts, locations = [], []
        for offset, raw in enumerate(chunk.items):
            line_number = chunk.first + offset
            location = f"{chunk.source}:{line_number}"
            if not raw.strip():
                result.counts["blank_lines"] += 1
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self._bad(result, "non_utf8", location, f"line {line_number} is not valid UTF-8 (byte {exc.start + 1})")
                continue
            if line_number == 1:
                line = line.lstrip("\ufeff")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                self._bad(result, "invalid_json", location, f"line {line_number} is not valid JSON: {exc.msg} (column {exc.colno})")
                continue
            if not isinstance(record, dict):
                self._bad(result, "invalid_json", location, f"line {line_number} is JSON but not an object")
                continue
            if key not in record:
                self._bad(result, "missing_key", location, f"line {line_number} has no JSON key '{key}'")
                continue
            text = record[key]
            if not isinstance(text, str):
                self._bad(result, "missing_key", location, f"line {line_number}: JSON key '{key}' is {type(text).__name__}, not a string")
                continue
            texts.append(text)
            locations.append(location)
        return texts, locations

    def _texts_from_rows(self, chunk: RawChunk, result: TokenizedChunk):
        key = self.settings.json_key
        texts, locations = [], []
        for offset, value in enumerate(chunk.items):
            location = f"{chunk.source}: row {chunk.first + offset}"
            if not isinstance(value, str):
                what = "null" if value is None else type(value).__name__
                self._bad(result, "missing_key", location, f"column '{key}' is {what}, not a string")
                continue
            texts.append(value)
            locations.append(location)
        return texts, locations

    def _texts_from_files(self, chunk: RawChunk, result: TokenizedChunk):
        texts, locations = [], []
        for name, data in chunk.items:
            try:
                texts.append(data.decode("utf-8"))
                locations.append(name)
            except UnicodeDecodeError as exc:
                self._bad(result, "non_utf8", name, f"file is not valid UTF-8 (byte offset {exc.start})")
        return texts, locations

    def _encode(self, texts: list[str], locations: list[str], result: TokenizedChunk) -> list[list[int]]:
        try:
            return self.tokenizer.encode_batch(texts)
        except Exception:  # find the document the tokenizer refused (e.g. a lone surrogate)
            encoded = []
            for text, location in zip(texts, locations):
                try:
                    encoded.append(self.tokenizer.encode_batch([text])[0])
                except Exception as exc:
                    self._bad(result, "non_utf8", location, f"text cannot be tokenized ({type(exc).__name__}: {exc})")
                    encoded.append(None)
            return encoded

    def __call__(self, chunk: RawChunk) -> TokenizedChunk:
        """Tokenize ``chunk``; raises DataToolError naming file and line on a bad record."""
        result = TokenizedChunk(np.empty(0, self.dtype), np.empty(0, np.int32), len(chunk.items), chunk.nbytes)
        if chunk.kind == JSON_LINES:
            texts, locations = self._texts_from_json_lines(chunk, result)
        elif chunk.kind == FILES:
            texts, locations = self._texts_from_files(chunk, result)
        else:
            texts, locations = self._texts_from_rows(chunk, result)
        kept_texts, kept_locations = [], []
        for text, location in zip(texts, locations):
            if text.strip():
                kept_texts.append(text)
                kept_locations.append(location)
            else:
                self._empty(result, location)
        if not kept_texts:
            return result
        encoded = [ids for ids in self._encode(kept_texts, kept_locations, result) if ids is not None]
        extra = (self.settings.bos_id is not None) + (self.settings.eod_id is not None)
        lengths = np.fromiter((len(ids) + extra for ids in encoded), dtype=np.int64, count=len(encoded))
        tokens = np.empty(int(lengths.sum()), dtype=np.int64)
        position = 0
        for ids in encoded:
            if self.settings.bos_id is not None:
                tokens[position] = self.settings.bos_id
                position += 1
            tokens[position : position + len(ids)] = ids
            position += len(ids)
            if self.settings.eod_id is not None:
                tokens[position] = self.settings.eod_id
                position += 1
        if len(tokens) and (tokens.min() < 0 or tokens.max() > np.iinfo(self.dtype).max):
            raise DataToolError(f"{chunk.source}: token id {int(tokens.max())} does not fit the output dtype {self.dtype}")
        result.tokens = tokens.astype(self.dtype)
        result.lengths = lengths.astype(np.int32)
        return result


_WORKER: ChunkTokenizer | None = None


def init_worker(settings: WorkerSettings) -> None:
    """Process-pool initializer: cap tokenizer threads, then load the tokenizer once."""
    global _WORKER
    import os

    os.environ["RAYON_NUM_THREADS"] = str(settings.threads)
    os.environ["RAYON_RS_NUM_CPUS"] = str(settings.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if settings.threads > 1 else "false"
    _WORKER = ChunkTokenizer(settings)


def tokenize_chunk(chunk: RawChunk) -> TokenizedChunk:
    """Process-pool task: tokenize one chunk with the worker's tokenizer."""
    assert _WORKER is not None, "init_worker was not called"
    return _WORKER(chunk)
