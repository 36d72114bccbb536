"""Worker side of the input formats: the records of one :class:`~data_tools._inputs.Piece`.

Every reader yields one item per *unit* of the piece, in order, and nothing is held beyond the
current batch, so memory never depends on the size of a file:

- ``LINES``: the raw bytes of each line (JSON is decoded by the caller; blank lines are units
  too, so unit numbers are line numbers);
- ``ROWS`` and ``STREAM``: a dict of the row's requested columns;
- ``TXT``: ``(path, bytes)`` of each ``.txt`` file.
"""

from __future__ import annotations

import gzip
import io
from typing import Iterator

from data_tools._errors import DataToolError
from data_tools._hf_dataset import load_hf_dataset
from data_tools._inputs import LINES, ROWS, STREAM, TXT, Piece, open_arrow

ROW_BATCH = 1024


def _open_binary(path: str, fmt: str):
    if fmt == "jsonl.gz":
        return gzip.open(path, "rb")
    if fmt == "jsonl.zst":
        import zstandard

        raw = open(path, "rb")
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.BufferedReader(reader, buffer_size=1 << 20)
    return open(path, "rb", buffering=1 << 20)


def _lines(piece: Piece) -> Iterator[bytes]:
    path = piece.paths[0]
    count = 0
    try:
        with _open_binary(path, piece.format) as handle:
            if piece.stop < 0:
                for count, line in enumerate(handle, start=1):
                    yield line
                return
            # A byte range owns the lines that *start* inside it: skip the tail of a line begun
            # in the previous range, then read until the next line would start at or after stop.
            position = piece.start
            if position > 0:
                handle.seek(position - 1)
                if handle.read(1) != b"\n":
                    position += len(handle.readline())
            while position < piece.stop:
                line = handle.readline()
                if not line:
                    break
                position += len(line)
                count += 1
                yield line
    except (EOFError, gzip.BadGzipFile) as exc:
        raise DataToolError(f"{path}: corrupt or truncated {piece.format} stream after line {count} ({exc})") from None
    except Exception as exc:  # zstandard.ZstdError has no stable import path across versions
        if type(exc).__name__ == "ZstdError":
            raise DataToolError(f"{path}: corrupt zstd stream after line {count} ({exc})") from None
        raise


def _row_batches(piece: Piece):
    path = piece.paths[0]
    if piece.format == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        groups = range(piece.start, parquet.metadata.num_row_groups if piece.stop < 0 else piece.stop)
        if len(groups):
            yield from parquet.iter_batches(batch_size=ROW_BATCH, row_groups=list(groups), columns=list(piece.columns))
        return
    for batch in open_arrow(path):
        yield batch.select(list(piece.columns))


def _rows(piece: Piece) -> Iterator[dict]:
    for batch in _row_batches(piece):
        yield from batch.to_pylist()


def _stream_rows(piece: Piece) -> Iterator[dict]:
    name, config, split, shard, shards = piece.stream
    dataset = load_hf_dataset(name, config, split, streaming=True)
    yield from dataset.shard(num_shards=shards, index=shard)


def _txt_files(piece: Piece) -> Iterator[tuple[str, bytes]]:
    for path in piece.paths:
        with open(path, "rb") as handle:
            yield path, handle.read()


def iter_units(piece: Piece) -> Iterator:
    """The units of ``piece`` in order (see the module docstring)."""
    if piece.kind == LINES:
        return _lines(piece)
    if piece.kind == ROWS:
        return _rows(piece)
    if piece.kind == STREAM:
        return _stream_rows(piece)
    if piece.kind == TXT:
        return _txt_files(piece)
    raise ValueError(f"unknown piece kind {piece.kind!r}")


def unit_location(piece: Piece, unit: int, base: int) -> str:
    """Where unit ``unit`` of ``piece`` is, for messages; ``base`` = units of the same file before it."""
    if piece.kind == LINES:
        return f"{piece.paths[0]}:{base + unit + 1}"
    if piece.kind == TXT:
        return piece.paths[unit]
    return f"{piece.paths[0]}: row {base + unit}"
