"""Streaming readers of raw text inputs, in bounded chunks, for ``data_tools.preprocess``.

Supported inputs (detected from the path):

- ``.jsonl`` / ``.json``, ``.jsonl.gz``, ``.jsonl.zst``: one JSON object per line; the main
  process only splits lines, decoding and JSON parsing happen in the workers;
- ``.parquet``: one document per row of the ``--json-key`` column;
- a directory saved with ``datasets.Dataset.save_to_disk`` (has ``dataset_info.json``,
  ``state.json`` or ``dataset_dict.json``);
- any other directory: every ``*.txt`` file below it (sorted) is one document.

Every reader yields :class:`RawChunk` objects holding at most ``chunk_size`` documents and
roughly ``max_chunk_bytes`` bytes, so memory never depends on the input size.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from dataclasses import dataclass
from typing import Iterator

from data_tools._errors import DataToolError

JSON_LINES = "json_lines"  # items: raw bytes lines; first = 1-based line number
TEXTS = "texts"  # items: str or None per row; first = 0-based row number
FILES = "files"  # items: (path, bytes) per document

HF_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
DEFAULT_MAX_CHUNK_BYTES = 1024 * 1024


@dataclass
class RawChunk:
    """A bounded batch of undecoded documents and where they came from."""

    kind: str
    source: str
    first: int
    items: list
    nbytes: int


def detect_format(path: str) -> str:
    """Name the input format of ``path``: jsonl, jsonl.gz, jsonl.zst, parquet, hf_disk or txt_dir."""
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, marker)) for marker in HF_DATASET_MARKERS):
            return "hf_disk"
        return "txt_dir"
    if not os.path.exists(path):
        raise DataToolError(f"{path}: input not found")
    lower = path.lower()
    for suffixes, name in (
        ((".jsonl", ".json", ".ndjson"), "jsonl"),
        ((".jsonl.gz", ".json.gz", ".ndjson.gz"), "jsonl.gz"),
        ((".jsonl.zst", ".json.zst", ".jsonl.zstd", ".ndjson.zst"), "jsonl.zst"),
        ((".parquet",), "parquet"),
    ):
        if lower.endswith(suffixes):
            return name
    raise DataToolError(
        f"{path}: unknown input type (expected .jsonl, .jsonl.gz, .jsonl.zst, .parquet, "
        "a directory of .txt files or a save_to_disk dataset directory)"
    )


def _open_binary_lines(path: str, fmt: str):
    if fmt == "jsonl.gz":
        return gzip.open(path, "rb")
    if fmt == "jsonl.zst":
        import zstandard

        raw = open(path, "rb")
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.BufferedReader(reader, buffer_size=1 << 20)
    return open(path, "rb", buffering=1 << 20)


def _read_json_lines(path: str, fmt: str, chunk_size: int, max_bytes: int) -> Iterator[RawChunk]:
    line_number = 0
    try:
        with _open_binary_lines(path, fmt) as handle:
            items: list[bytes] = []
            nbytes = 0
            for line in handle:
                items.append(line)
                nbytes += len(line)
                if len(items) >= chunk_size or nbytes >= max_bytes:
                    yield RawChunk(JSON_LINES, path, line_number + 1, items, nbytes)
                    line_number += len(items)
                    items, nbytes = [], 0
            if items:
                yield RawChunk(JSON_LINES, path, line_number + 1, items, nbytes)
    except (EOFError, gzip.BadGzipFile) as exc:
        raise DataToolError(f"{path}: corrupt or truncated {fmt} stream after line {line_number} ({exc})") from None
    except Exception as exc:  # zstandard.ZstdError has no stable import path across versions
        if type(exc).__name__ == "ZstdError":
            raise DataToolError(f"{path}: corrupt zstd stream after line {line_number} ({exc})") from None
        raise


def _read_parquet(path: str, key: str, chunk_size: int) -> Iterator[RawChunk]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except pyarrow.ArrowException as exc:
        raise DataToolError(f"{path}: not a readable parquet file ({exc})") from None
    names = parquet.schema_arrow.names
    if key not in names:
        raise DataToolError(f"{path}: missing column '{key}' (columns: {', '.join(names)}); set --json-key")
    row = 0
    for batch in parquet.iter_batches(batch_size=chunk_size, columns=[key]):
        values = batch.column(0).to_pylist()
        yield RawChunk(TEXTS, path, row, values, batch.nbytes)
        row += len(values)


def _load_hf_dataset(path: str):
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        raise DataToolError(f"{path}: cannot load the save_to_disk dataset ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded.keys())
        if len(splits) != 1:
            raise DataToolError(
                f"{path}: dataset has splits {splits}; pass the split directory, e.g. {os.path.join(path, splits[0])}"
            )
        loaded = loaded[splits[0]]
    return loaded


def _read_hf_disk(path: str, key: str, chunk_size: int) -> Iterator[RawChunk]:
    dataset = _load_hf_dataset(path)
    if key not in dataset.column_names:
        raise DataToolError(
            f"{path}: missing column '{key}' (columns: {', '.join(dataset.column_names)}); set --json-key"
        )
    row = 0
    for batch in dataset.select_columns([key]).iter(batch_size=chunk_size):
        values = batch[key]
        yield RawChunk(TEXTS, path, row, values, sum(len(v) for v in values if isinstance(v, str)))
        row += len(values)


def list_text_files(path: str) -> list[str]:
    """Every ``*.txt`` file below ``path``, sorted for a deterministic document order."""
    found = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in sorted(files) if name.endswith(".txt"))
    return found


def _read_txt_dir(path: str, chunk_size: int, max_bytes: int) -> Iterator[RawChunk]:
    files = list_text_files(path)
    if not files:
        raise DataToolError(f"{path}: directory has no .txt files and is not a save_to_disk dataset")
    items: list[tuple[str, bytes]] = []
    nbytes, first = 0, 0
    for index, name in enumerate(files):
        with open(name, "rb") as handle:
            data = handle.read()
        items.append((name, data))
        nbytes += len(data)
        if len(items) >= chunk_size or nbytes >= max_bytes:
            yield RawChunk(FILES, path, first, items, nbytes)
            items, nbytes, first = [], 0, index + 1
    if items:
        yield RawChunk(FILES, path, first, items, nbytes)


def read_chunks(
    path: str, json_key: str, chunk_size: int, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES
) -> Iterator[RawChunk]:
    """Stream ``path`` as :class:`RawChunk` objects of at most ``chunk_size`` documents."""
    fmt = detect_format(path)
    if fmt.startswith("jsonl"):
        return _read_json_lines(path, fmt, chunk_size, max_chunk_bytes)
    if fmt == "parquet":
        return _read_parquet(path, json_key, chunk_size)
    if fmt == "hf_disk":
        return _read_hf_disk(path, json_key, chunk_size)
    return _read_txt_dir(path, chunk_size, max_chunk_bytes)


def input_size_bytes(path: str) -> int:
    """Total size on disk of the input (all files below a directory)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def input_fingerprint(path: str) -> str:
    """Cheap hash of the input: names, sizes and mtimes of its files, plus head and tail bytes."""
    digest = hashlib.sha256()
    if os.path.isfile(path):
        files = [path]
    else:
        files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
    for name in files:
        stat = os.stat(name)
        digest.update(f"{os.path.relpath(name, path)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            digest.update(handle.read(1 << 16))
            handle.seek(max(0, os.path.getsize(path) - (1 << 16)))
            digest.update(handle.read())
    return digest.hexdigest()[:32]
