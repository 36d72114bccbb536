"""Worker side of ``data_tools.preprocess``: read one piece, decode, filter, tokenize, split.

A worker process is initialised once with :func:`init_worker` (it caps the tokenizer's threads
and loads it) and then turns each :class:`~data_tools._inputs.Piece` into part files plus a
:class:`PieceResult`:

- ``PART_DIR/<piece>.<split>.bin``: the tokens of the piece's kept documents of that split, in
  order (so the main process appends them with a plain file copy);
- ``PieceResult.status``: one byte per unit (line, row or file) saying what became of it
  (:data:`STATUS_NAMES`), which is what lets the main process cut a piece exactly at a
  ``--max-docs``/``--max-tokens`` limit and count what was read up to there;
- ``PieceResult.lengths[split]``: the token count of every kept document.

A bad record without ``--skip-bad`` ends the piece at that record and is returned as
``PieceResult.error``: the main process raises it only if the output gets that far, with the
record's absolute line or row number.
"""

from __future__ import annotations

import json
import os
from array import array
from dataclasses import dataclass, field

import numpy as np

from data_tools._errors import DataToolError
from data_tools._inputs import LINES, TXT, Piece
from data_tools._records import iter_units
from data_tools._selection import RecordFilter, is_valid, matches_all
from data_tools._tokenizer import Tokenizer, load_tokenizer

TRAIN, VALID, FILTERED, EMPTY, INVALID_JSON, MISSING_KEY, NON_UTF8, BLANK = range(8)
STATUS_NAMES = ("train", "valid", "filtered", "empty", "invalid_json", "missing_key", "non_utf8", "blank_lines")
BAD_RECORD_KINDS = ("invalid_json", "missing_key", "non_utf8")
BAD_STATUSES = (INVALID_JSON, MISSING_KEY, NON_UTF8)
SPLITS = ("train", "valid")
MAX_EXAMPLES = 5
BATCH_BYTES = 1 << 20


@dataclass
class WorkerSettings:
    """What every worker needs to turn pieces into tokens."""

    tokenizer: str
    json_key: str
    filters: list[RecordFilter]
    skip_bad: bool
    dtype: str
    bos_id: int | None  # prepended to every document when set
    eod_id: int | None  # appended to every document when set
    threads: int
    valid_threshold: int | None  # hash threshold of --valid-fraction (None: no split)
    part_dir: str
    batch_docs: int = 512


@dataclass
class PieceResult:
    """What a worker made of one piece (see the module docstring)."""

    index: int
    status: np.ndarray  # uint8, one per unit
    lengths: dict  # split -> int32 lengths of its kept documents
    examples: dict = field(default_factory=dict)  # status name -> first unit numbers, for warnings
    error: tuple | None = None  # (unit, message) of the first bad record without --skip-bad


def part_path(part_dir: str, index: int, split: str) -> str:
    """The part file of ``split`` tokens of piece ``index``."""
    return os.path.join(part_dir, f"{index:08d}.{split}.bin")


class _PieceWriter:
    """Collects one piece's statuses and lengths and streams its tokens to part files."""

    def __init__(self, settings: WorkerSettings, index: int):
        self.settings = settings
        self.index = index
        self.status = bytearray()
        self.lengths = {split: array("i") for split in SPLITS}
        self.examples: dict[str, list[int]] = {}
        self.error: tuple | None = None
        self._files: dict = {}

    def mark(self, code: int) -> int:
        self.status.append(code)
        unit = len(self.status) - 1
        if code not in (TRAIN, VALID, FILTERED, BLANK):
            kept = self.examples.setdefault(STATUS_NAMES[code], [])
            if len(kept) < MAX_EXAMPLES:
                kept.append(unit)
        return unit

    def write(self, split: str, tokens: np.ndarray, lengths) -> None:
        handle = self._files.get(split)
        if handle is None:
            handle = self._files[split] = open(part_path(self.settings.part_dir, self.index, split), "wb")
        handle.write(tokens.data)
        self.lengths[split].extend(lengths)

    def result(self) -> PieceResult:
        for handle in self._files.values():
            handle.close()
        return PieceResult(self.index, np.frombuffer(bytes(self.status), dtype=np.uint8),
                           {s: np.frombuffer(self.lengths[s].tobytes(), dtype=np.int32) for s in SPLITS},
                           self.examples, self.error)


class PieceTokenizer:
    """Reads, validates, filters and tokenizes pieces with one loaded tokenizer."""

    def __init__(self, settings: WorkerSettings, tokenizer: Tokenizer | None = None):
        self.settings = settings
        self.tokenizer = tokenizer or load_tokenizer(settings.tokenizer)
        self.tokenizer.set_threads(settings.threads)
        self.dtype = np.dtype(settings.dtype)

    # ---- one unit -> (status, text, message)

    def _from_line(self, raw: bytes, first_line: bool):
        if not raw.strip():
            return BLANK, None, None
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return NON_UTF8, None, f"line is not valid UTF-8 (byte {exc.start + 1})"
        if first_line:
            line = line.lstrip("\ufeff")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            return INVALID_JSON, None, f"line is not valid JSON: {exc.msg} (column {exc.colno})"
        if not isinstance(record, dict):
            return INVALID_JSON, None, "line is JSON but not an object"
        return self._from_record(record, "JSON key")

    def _from_record(self, record: dict, what: str):
        if not matches_all(self.settings.filters, record):
            return FILTERED, None, None
        key = self.settings.json_key
        if key not in record:
            return MISSING_KEY, None, f"no {what} '{key}'"
        text = record[key]
        if not isinstance(text, str):
            kind = "null" if text is None else type(text).__name__
            return MISSING_KEY, None, f"{what} '{key}' is {kind}, not a string"
        return (TRAIN, text, None) if text.strip() else (EMPTY, None, None)

    def _from_file(self, item):
        _, data = item
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return NON_UTF8, None, f"file is not valid UTF-8 (byte offset {exc.start})"
        if self.settings.filters:
            return FILTERED, None, None  # a .txt document has no fields to match
        return (TRAIN, text, None) if text.strip() else (EMPTY, None, None)

    # ---- batches

    def _encode(self, texts: list[str]) -> list:
        try:
            return self.tokenizer.encode_batch(texts)
        except Exception:  # find the document the tokenizer refused (e.g. a lone surrogate)
            encoded = []
            for text in texts:
                try:
                    encoded.append(self.tokenizer.encode_batch([text])[0])
                except Exception as exc:
                    encoded.append(f"text cannot be tokenized ({type(exc).__name__}: {exc})")
            return encoded

    def _flush(self, writer: _PieceWriter, texts: list[str], units: list[int]) -> bool:
        """Tokenize and write a batch; False when a document could not be tokenized (and no --skip-bad)."""
        if not texts:
            return True
        settings = self.settings
        encoded = self._encode(texts)
        per_split: dict[str, list] = {split: [] for split in SPLITS}
        ok = True
        for text, ids, unit in zip(texts, encoded, units):
            if isinstance(ids, str):
                writer.status[unit] = NON_UTF8
                examples = writer.examples.setdefault("non_utf8", [])
                if len(examples) < MAX_EXAMPLES:
                    examples.append(unit)
                if not settings.skip_bad:
                    writer.error = (unit, ids)
                    del writer.status[unit + 1:]
                    ok = False
                    break
                continue
            valid = settings.valid_threshold is not None and is_valid(text, settings.valid_threshold)
            writer.status[unit] = VALID if valid else TRAIN
            per_split["valid" if valid else "train"].append(ids)
        for split, docs in per_split.items():
            if docs:
                tokens, lengths = self._pack(docs)
                writer.write(split, tokens, lengths)
        return ok

    def _pack(self, docs: list[list[int]]):
        bos, eod = self.settings.bos_id, self.settings.eod_id
        extra = (bos is not None) + (eod is not None)
        lengths = np.fromiter((len(ids) + extra for ids in docs), dtype=np.int64, count=len(docs))
        tokens = np.empty(int(lengths.sum()), dtype=np.int64)
        position = 0
        for ids in docs:
            if bos is not None:
                tokens[position] = bos
                position += 1
            tokens[position : position + len(ids)] = ids
            position += len(ids)
            if eod is not None:
                tokens[position] = eod
                position += 1
        if len(tokens) and (tokens.min() < 0 or tokens.max() > np.iinfo(self.dtype).max):
            raise DataToolError(f"token id {int(tokens.max())} does not fit the output dtype {self.dtype}")
        return tokens.astype(self.dtype), lengths.astype(np.int32)

    def __call__(self, piece: Piece) -> PieceResult:
        """Process ``piece`` into part files; returns its statuses, lengths and first error."""
        settings = self.settings
        writer = _PieceWriter(settings, piece.index)
        texts: list[str] = []
        units: list[int] = []
        batch_bytes = 0
        first_line = piece.kind == LINES and piece.start == 0
        for item in iter_units(piece):
            if piece.kind == LINES:
                code, text, message = self._from_line(item, first_line and not writer.status)
            elif piece.kind == TXT:
                code, text, message = self._from_file(item)
            else:
                code, text, message = self._from_record(item, "column")
            if code in BAD_STATUSES and not settings.skip_bad:
                # Everything before the bad record is written first, so the output is exactly
                # that of a sequential run stopping here.
                if self._flush(writer, texts, units):
                    writer.error = (writer.mark(code), message)
                return writer.result()
            unit = writer.mark(code)
            if code != TRAIN:
                continue
            texts.append(text)
            units.append(unit)
            batch_bytes += len(text)
            if len(texts) >= settings.batch_docs or batch_bytes >= BATCH_BYTES:
                if not self._flush(writer, texts, units):
                    return writer.result()
                texts, units, batch_bytes = [], [], 0
        self._flush(writer, texts, units)
        return writer.result()


_WORKER: PieceTokenizer | None = None


def init_worker(settings: WorkerSettings) -> None:
    """Process-pool initializer: cap tokenizer threads, then load the tokenizer once."""
    global _WORKER
    os.environ["RAYON_NUM_THREADS"] = str(settings.threads)
    os.environ["RAYON_RS_NUM_CPUS"] = str(settings.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if settings.threads > 1 else "false"
    _WORKER = PieceTokenizer(settings)


def tokenize_piece(piece: Piece) -> PieceResult:
    """Process-pool task: process one piece with the worker's tokenizer."""
    assert _WORKER is not None, "init_worker was not called"
    return _WORKER(piece)
