"""Megatron-compatible indexed token datasets (``MMIDIDX`` ``.idx`` + ``.bin`` pairs).

Byte layout (little-endian, no padding), identical to megatron-core's ``IndexedDataset``::

    .bin   token arrays of all sequences, concatenated, no header
    .idx   0   9 bytes  b"MMIDIDX\\x00\\x00"
           9   u64      version = 1
           17  u8       dtype code (see DTYPE_CODES)
           18  u64      N  number of sequences
           26  u64      D  length of document_indices (documents + 1)
           34  int32[N] sequence lengths (tokens)
               int64[N] byte offsets into .bin (exclusive cumsum of length * itemsize)
               int64[D] document_indices: [0, ..., N]

:class:`IndexedDataset` memory-maps an existing pair and hands out zero-copy views;
:class:`IndexedDatasetBuilder` streams a new pair to temporary files and renames them into
place only when :meth:`IndexedDatasetBuilder.finalize` succeeds.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
import struct
import uuid
from typing import Callable, Iterable

import numpy as np

from megaproc.errors import UserError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_STRUCT = struct.Struct("<9sQBQQ")  # magic, version, dtype code, N, D
HEADER_SIZE = HEADER_STRUCT.size  # 34 bytes

DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
WRITABLE_DTYPE_CODES = {4: np.int32, 8: np.uint16}
AMBIGUOUS_FLOAT_CODES = (6, 7)

_FINGERPRINT_CHUNK = 64 * 1024
_COPY_CHUNK = 16 * 1024 * 1024
_POINTER_CHUNK = 1 << 20  # sequences per chunk when writing pointers


class IndexedDatasetError(UserError, ValueError):
    """A malformed or inconsistent ``.idx``/``.bin`` pair; the one-line message names the file."""


def idx_path(path_prefix: str) -> str:
    """Return the ``.idx`` file name of ``path_prefix``."""
    return f"{path_prefix}.idx"


def bin_path(path_prefix: str) -> str:
    """Return the ``.bin`` file name of ``path_prefix``."""
    return f"{path_prefix}.bin"


def dtype_code(dtype) -> int:
    """Return the MMIDIDX code of ``dtype`` (any of :data:`DTYPE_CODES`)."""
    dtype = np.dtype(dtype)
    for code, candidate in DTYPE_CODES.items():
        if np.dtype(candidate) == dtype:
            return code
    raise ValueError(f"dtype {dtype} has no MMIDIDX code")


def best_dtype(vocab_size: int) -> np.dtype:
    """Smallest writable token dtype for ``vocab_size``: uint16 below 65500, else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def _dtype_from_code(code: int, where: str) -> np.dtype:
    if code in AMBIGUOUS_FLOAT_CODES:
        raise IndexedDatasetError(
            f"{where}: dtype code {code} is ambiguous (Megatron forks disagree whether codes 6/7 "
            "mean float64/float32 or float32/float64, and token ids are never floats); refusing to read it"
        )
    if code not in DTYPE_CODES:
        raise IndexedDatasetError(f"{where}: unknown dtype code {code} (expected one of {sorted(DTYPE_CODES)})")
    return np.dtype(DTYPE_CODES[code])


def read_header(path: str) -> tuple[int, int, int, int]:
    """Parse and check the 34-byte header of ``path``; return ``(version, dtype_code, N, D)``."""
    with open(path, "rb") as handle:
        raw = handle.read(HEADER_SIZE)
    if len(raw) < len(MAGIC) or raw[: len(MAGIC)] != MAGIC:
        raise IndexedDatasetError(f"{path}: bad magic {raw[:len(MAGIC)]!r}, not an MMIDIDX index file")
    if len(raw) < HEADER_SIZE:
        raise IndexedDatasetError(f"{path}: truncated header ({len(raw)} of {HEADER_SIZE} bytes)")
    _, version, code, count, doc_count = HEADER_STRUCT.unpack(raw)
    if version != VERSION:
        raise IndexedDatasetError(f"{path}: unsupported MMIDIDX version {version} (expected {VERSION})")
    return version, code, count, doc_count


def expected_idx_size(sequence_count: int, document_index_count: int) -> int:
    """Exact size in bytes of a ``.idx`` holding N sequences and D document indices."""
    return HEADER_SIZE + sequence_count * (4 + 8) + document_index_count * 8


class IndexedDataset:
    """Read-only, memory-mapped view of ``PREFIX.idx`` + ``PREFIX.bin``.

    Opening checks the header (magic, version, dtype code), the exact ``.idx`` size, the
    document index end points and the ``.bin`` size; every failure raises
    :class:`IndexedDatasetError` naming the file.  Arrays and items are zero-copy views of the
    mapped files.  Instances pickle by path and re-open in the receiving process.
    """

    def __init__(self, path_prefix: str):
        self.path_prefix = str(path_prefix)
        self._open()

    def _open(self) -> None:
        index_file, data_file = idx_path(self.path_prefix), bin_path(self.path_prefix)
        for path in (index_file, data_file):
            if not os.path.isfile(path):
                raise IndexedDatasetError(f"{path}: file not found")
        _, code, count, doc_count = read_header(index_file)
        self.dtype = _dtype_from_code(code, index_file)
        self._code = code

        with open(index_file, "rb") as handle:
            stat = os.fstat(handle.fileno())
            expected = expected_idx_size(count, doc_count)
            if stat.st_size < expected:
                raise IndexedDatasetError(
                    f"{index_file}: truncated index ({stat.st_size} bytes, header announces "
                    f"{count} sequences and {doc_count} document indices = {expected} bytes)"
                )
            if stat.st_size > expected:
                raise IndexedDatasetError(
                    f"{index_file}: {stat.st_size - expected} unexpected trailing bytes after "
                    f"{count} sequences and {doc_count} document indices"
                )
            self._idx_mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        self._fingerprint = self._compute_fingerprint(stat)

        offset = HEADER_SIZE
        self.sequence_lengths = np.frombuffer(self._idx_mmap, dtype=np.int32, count=count, offset=offset)
        offset += self.sequence_lengths.nbytes
        self.sequence_pointers = np.frombuffer(self._idx_mmap, dtype=np.int64, count=count, offset=offset)
        offset += self.sequence_pointers.nbytes
        self.document_indices = np.frombuffer(self._idx_mmap, dtype=np.int64, count=doc_count, offset=offset)

        if doc_count < 1 or self.document_indices[0] != 0 or self.document_indices[-1] != count:
            first = self.document_indices[0] if doc_count else None
            last = self.document_indices[-1] if doc_count else None
            raise IndexedDatasetError(
                f"{index_file}: document_indices must run from 0 to {count} (found first={first}, last={last})"
            )

        bin_size = os.path.getsize(data_file)
        if count:
            expected_bin = int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize
        else:
            expected_bin = 0
        if bin_size != expected_bin:
            raise IndexedDatasetError(
                f"{data_file}: size {bin_size} bytes does not match the index ({expected_bin} bytes expected)"
            )
        if bin_size:
            with open(data_file, "rb") as handle:
                self._bin_mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        else:
            self._bin_mmap = b""
        self._num_tokens: int | None = None

    def _compute_fingerprint(self, stat: os.stat_result) -> str:
        digest = hashlib.sha256()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}".encode())
        digest.update(self._idx_mmap[:HEADER_SIZE])
        digest.update(self._idx_mmap[:_FINGERPRINT_CHUNK])
        digest.update(self._idx_mmap[max(0, stat.st_size - _FINGERPRINT_CHUNK) :])
        data_file = bin_path(self.path_prefix)
        digest.update(str(os.path.getsize(data_file)).encode())
        return digest.hexdigest()[:32]

    def __getstate__(self) -> dict:
        return {"path_prefix": self.path_prefix}

    def __setstate__(self, state: dict) -> None:
        self.path_prefix = state["path_prefix"]
        self._open()

    def __len__(self) -> int:
        """Number of sequences N."""
        return len(self.sequence_lengths)

    def __repr__(self) -> str:
        return f"IndexedDataset({self.path_prefix!r}, sequences={len(self)}, dtype={self.dtype})"

    def _sequence_index(self, i) -> int:
        i = int(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence {i} out of range for {n} sequences in {self.path_prefix}")
        return i

    def __getitem__(self, i):
        """Zero-copy view of sequence ``i`` (negative indices count from the end)."""
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.get(i)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Zero-copy view of ``length`` tokens of sequence ``i`` starting at token ``offset``."""
        i = self._sequence_index(i)
        seq_len = int(self.sequence_lengths[i])
        if not 0 <= offset <= seq_len:
            raise IndexError(f"offset {offset} out of range for sequence {i} of length {seq_len}")
        if length is None:
            length = seq_len - offset
        if length < 0 or offset + length > seq_len:
            raise IndexError(f"slice [{offset}, {offset}+{length}) exceeds sequence {i} of length {seq_len}")
        start = int(self.sequence_pointers[i]) + offset * self.dtype.itemsize
        return np.frombuffer(self._bin_mmap, dtype=self.dtype, count=length, offset=start)

    @property
    def num_tokens(self) -> int:
        """Total number of tokens over all sequences."""
        if self._num_tokens is None:
            self._num_tokens = int(self.sequence_lengths.sum(dtype=np.int64))
        return self._num_tokens

    @property
    def num_documents(self) -> int:
        """Number of documents (``len(document_indices) - 1``)."""
        return len(self.document_indices) - 1

    def fingerprint(self) -> str:
        """Cheap hash identifying the exact ``.idx`` that was opened.

        Covers the index size, mtime_ns and inode, the header, the first and last 64 KiB of
        the index and the ``.bin`` size, so a regenerated index under the same prefix changes it.
        """
        return self._fingerprint

    def content_fingerprint(self) -> str:
        """Hash of what the data *is*: counts, dtype and the first and last 64 KiB of both files.

        Unlike :meth:`fingerprint` it ignores mtime and inode, so a copy of the same dataset
        elsewhere matches; checkpoints use it to refuse a resume on different data.
        """
        return content_fingerprint(idx_path(self.path_prefix), bin_path(self.path_prefix))

    @staticmethod
    def exists(path_prefix: str) -> bool:
        """True when both ``PREFIX.idx`` and ``PREFIX.bin`` exist."""
        return os.path.isfile(idx_path(path_prefix)) and os.path.isfile(bin_path(path_prefix))


def content_fingerprint(*paths: str, edge: int = 65536) -> str:
    """Hash of the sizes and the first and last ``edge`` bytes of each file."""
    digest = hashlib.sha256()
    for path in paths:
        size = os.path.getsize(path)
        digest.update(str(size).encode())
        with open(path, "rb") as fh:
            digest.update(fh.read(edge))
            fh.seek(max(0, size - edge))
            digest.update(fh.read(edge))
    return digest.hexdigest()[:16]


def write_index(handle, dtype, sequence_count: int, length_chunks: Callable[[], Iterable[np.ndarray]],
                document_index_count: int, document_index_chunks: Iterable[np.ndarray]) -> None:
    """Write a complete ``.idx`` to the binary ``handle`` from chunks, never the whole arrays.

    ``length_chunks()`` is called twice (the lengths, then the pointers derived from them) and
    must yield the same int32 sequence lengths each time; ``document_index_chunks`` yields the
    int64 document indices.  The counts go into the header, so they must match the chunks.
    """
    itemsize = np.dtype(dtype).itemsize
    handle.write(HEADER_STRUCT.pack(MAGIC, VERSION, dtype_code(dtype), sequence_count, document_index_count))
    for chunk in length_chunks():
        handle.write(np.ascontiguousarray(chunk, dtype=np.int32).data)
    running = 0
    for chunk in length_chunks():
        sizes = np.asarray(chunk, dtype=np.int64) * itemsize
        pointers = np.cumsum(sizes) - sizes + running
        running += int(sizes.sum())
        handle.write(pointers.data)
    for chunk in document_index_chunks:
        handle.write(np.ascontiguousarray(chunk, dtype=np.int64).data)


class _GrowingArray:
    """Append-only numpy array with amortised doubling (no per-element Python objects)."""

    def __init__(self, dtype, capacity: int = 1024):
        self._data = np.empty(capacity, dtype=dtype)
        self._size = 0

    def _reserve(self, extra: int) -> None:
        needed = self._size + extra
        if needed > len(self._data):
            grown = np.empty(max(needed, 2 * len(self._data)), dtype=self._data.dtype)
            grown[: self._size] = self._data[: self._size]
            self._data = grown

    def append(self, value: int) -> None:
        self._reserve(1)
        self._data[self._size] = value
        self._size += 1

    def extend(self, values: np.ndarray) -> None:
        self._reserve(len(values))
        self._data[self._size : self._size + len(values)] = values
        self._size += len(values)

    def __len__(self) -> int:
        return self._size

    def view(self) -> np.ndarray:
        return self._data[: self._size]


class IndexedDatasetBuilder:
    """Streaming writer of an MMIDIDX pair.

    Tokens go straight to a temporary ``.bin``; lengths and document boundaries are kept in
    growing numpy arrays (4 + 8 bytes per sequence, no Python lists).  :meth:`finalize` writes
    the index to a temporary name and renames both files into place, so an interrupted build
    never leaves output that looks complete.  As a context manager it finalizes on success and
    removes its temporary files on exception.
    """

    def __init__(self, path_prefix: str, dtype=np.uint16):
        dtype = np.dtype(dtype)
        if dtype not in [np.dtype(d) for d in WRITABLE_DTYPE_CODES.values()]:
            raise ValueError(f"only int32 and uint16 token files may be written, not {dtype}")
        self.path_prefix = str(path_prefix)
        self.dtype = dtype
        self._info = np.iinfo(dtype)
        parent = os.path.dirname(os.path.abspath(self.path_prefix))
        os.makedirs(parent, exist_ok=True)
        tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._tmp_bin = bin_path(self.path_prefix) + tag
        self._tmp_idx = idx_path(self.path_prefix) + tag
        self._bin_file = open(self._tmp_bin, "wb")
        self._lengths = _GrowingArray(np.int32)
        self._document_indices = _GrowingArray(np.int64)
        self._document_indices.append(0)
        self._closed = False

    def __enter__(self) -> "IndexedDatasetBuilder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.finalize()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"builder for {self.path_prefix} is already finalized or aborted")

    def _as_tokens(self, tokens) -> np.ndarray:
        array = np.asarray(tokens)
        if array.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {array.shape}")
        if array.dtype == self.dtype:
            return array
        if array.size == 0:
            return array.astype(self.dtype)
        if array.dtype.kind not in "iu":
            raise ValueError(f"token ids must be integers, got dtype {array.dtype}")
        low, high = int(array.min()), int(array.max())
        if low < self._info.min or high > self._info.max:
            raise ValueError(f"token ids [{low}, {high}] do not fit {self.dtype}")
        return array.astype(self.dtype)

    @property
    def num_sequences(self) -> int:
        """Sequences added so far."""
        return len(self._lengths)

    @property
    def num_documents(self) -> int:
        """Documents completed so far."""
        return len(self._document_indices) - 1

    def add_item(self, tokens) -> None:
        """Append one sequence to the current (open) document."""
        self._check_open()
        array = self._as_tokens(tokens)
        if len(array) > np.iinfo(np.int32).max:
            raise ValueError(f"sequence of {len(array)} tokens exceeds int32 lengths")
        self._bin_file.write(np.ascontiguousarray(array).data)
        self._lengths.append(len(array))

    def end_document(self) -> None:
        """Close the current document after the sequences added with :meth:`add_item`."""
        self._check_open()
        self._document_indices.append(len(self._lengths))

    def add_document(self, tokens) -> None:
        """Append a document made of exactly one sequence."""
        self.add_item(tokens)
        self.end_document()

    def _has_open_document(self) -> bool:
        return int(self._document_indices.view()[-1]) != len(self._lengths)

    def add_index(self, other_prefix: str) -> None:
        """Append every sequence and document of the dataset at ``other_prefix``.

        Its document indices are shifted by the current sequence count; the dtypes must match.
        """
        self._check_open()
        if self._has_open_document():
            raise ValueError("call end_document() before add_index()")
        other = IndexedDataset(other_prefix)
        if other.dtype != self.dtype:
            raise IndexedDatasetError(
                f"{idx_path(other_prefix)}: dtype {other.dtype} does not match the output dtype {self.dtype}"
            )
        offset = len(self._lengths)
        self._lengths.extend(other.sequence_lengths)
        self._document_indices.extend(other.document_indices[1:] + offset)
        with open(bin_path(other_prefix), "rb") as source:
            shutil.copyfileobj(source, self._bin_file, _COPY_CHUNK)

    def _write_index(self, handle) -> None:
        lengths = self._lengths.view()
        doc_indices = self._document_indices.view()

        def length_chunks():
            return (lengths[start : start + _POINTER_CHUNK] for start in range(0, len(lengths), _POINTER_CHUNK))

        write_index(handle, self.dtype, len(lengths), length_chunks, len(doc_indices), [doc_indices])

    def finalize(self) -> None:
        """Write the index and atomically move ``PREFIX.bin`` and ``PREFIX.idx`` into place."""
        self._check_open()
        if self._has_open_document():
            self.abort()
            raise ValueError("finalize() with an open document: call end_document() after add_item()")
        try:
            self._bin_file.flush()
            os.fsync(self._bin_file.fileno())
            self._bin_file.close()
            with open(self._tmp_idx, "wb") as handle:
                self._write_index(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(self._tmp_bin, bin_path(self.path_prefix))
            os.replace(self._tmp_idx, idx_path(self.path_prefix))
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def abort(self) -> None:
        """Discard everything written so far (removes the temporary files)."""
        if not self._bin_file.closed:
            self._bin_file.close()
        for path in (self._tmp_bin, self._tmp_idx):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        self._closed = True
