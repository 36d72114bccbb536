"""Check every invariant of an MMIDIDX ``PREFIX.idx`` + ``PREFIX.bin`` pair.

    python -m data_tools.verify PREFIX [--vocab-size V] [--no-token-check]

Prints one line per check (``ok`` / ``FAIL`` with details) and exits 0 iff all of them hold:
magic, version, dtype code, exact .idx size, non-negative lengths, document_indices[0] == 0,
document_indices[-1] == N, non-decreasing document indices, pointers == exclusive cumsum of
lengths * itemsize, .bin size == sum(lengths) * itemsize, and (when PREFIX.meta.json or
``--vocab-size`` gives a vocabulary size) every token id in [0, vocab_size).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from data_tools._errors import DataToolError, run_cli
from data_tools._meta import read_meta
from megaproc.data.indexed import (
    AMBIGUOUS_FLOAT_CODES,
    DTYPE_CODES,
    HEADER_SIZE,
    HEADER_STRUCT,
    MAGIC,
    VERSION,
    bin_path,
    expected_idx_size,
    idx_path,
)

PROG = "data_tools.verify"
_SCAN_TOKENS = 16 * 1024 * 1024  # tokens per chunk when scanning .bin for the vocab check
_SCAN_SEQUENCES = 1 << 22


class CheckReport:
    """Collects named checks and prints each as it is recorded."""

    def __init__(self, stream=sys.stdout):
        self.failures = 0
        self.stream = stream

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        """Record and print one check; returns ``passed``."""
        status = "ok  " if passed else "FAIL"
        self.failures += not passed
        print(f"[{status}] {name}" + (f": {detail}" if detail else ""), file=self.stream)
        return passed


def _check_header(report: CheckReport, index_file: str, raw: bytes):
    if not report.check("magic", raw[: len(MAGIC)] == MAGIC, f"{raw[:len(MAGIC)]!r}"):
        return None
    if not report.check("header size", len(raw) >= HEADER_SIZE, f"{len(raw)} bytes, need {HEADER_SIZE}"):
        return None
    _, version, code, count, doc_count = HEADER_STRUCT.unpack(raw[:HEADER_SIZE])
    if not report.check("version", version == VERSION, f"{version}"):
        return None
    if code in AMBIGUOUS_FLOAT_CODES:
        report.check("dtype code", False, f"{code} is ambiguous across Megatron forks (float64 vs float32)")
        return None
    if not report.check("dtype code", code in DTYPE_CODES, f"{code} ({np.dtype(DTYPE_CODES[code]) if code in DTYPE_CODES else 'unknown'})"):
        return None
    expected = expected_idx_size(count, doc_count)
    size = os.path.getsize(index_file)
    if not report.check("idx size", size == expected, f"{size} bytes, expected {expected} for N={count}, D={doc_count}"):
        return None
    return np.dtype(DTYPE_CODES[code]), count, doc_count


def _check_pointers(report: CheckReport, lengths: np.ndarray, pointers: np.ndarray, itemsize: int) -> int:
    """Compare pointers with the exclusive cumsum of lengths chunk by chunk; return total tokens."""
    running_bytes = 0
    total_tokens = 0
    first_bad = None
    for start in range(0, len(lengths), _SCAN_SEQUENCES):
        chunk = lengths[start : start + _SCAN_SEQUENCES].astype(np.int64)
        expected = np.cumsum(chunk * itemsize) - chunk * itemsize + running_bytes
        mismatch = np.flatnonzero(pointers[start : start + len(chunk)] != expected)
        if first_bad is None and len(mismatch):
            first_bad = start + int(mismatch[0])
        running_bytes += int(chunk.sum()) * itemsize
        total_tokens += int(chunk.sum())
    detail = "" if first_bad is None else f"first mismatch at sequence {first_bad}"
    report.check("pointers == exclusive cumsum(lengths * itemsize)", first_bad is None, detail)
    return total_tokens


def _check_token_ids(report: CheckReport, data_file: str, dtype: np.dtype, vocab_size: int) -> None:
    tokens = np.memmap(data_file, dtype=dtype, mode="r") if os.path.getsize(data_file) else np.empty(0, dtype)
    low, high = 0, -1
    for start in range(0, len(tokens), _SCAN_TOKENS):
        chunk = tokens[start : start + _SCAN_TOKENS]
        low, high = min(low, int(chunk.min())), max(high, int(chunk.max()))
    report.check(f"token ids in [0, {vocab_size})", low >= 0 and high < vocab_size, f"min {low}, max {high}" if len(tokens) else "no tokens")


def verify(path_prefix: str, vocab_size: int | None = None, check_tokens: bool = True, stream=sys.stdout) -> bool:
    """Run every check on ``path_prefix``, printing each; True iff all pass."""
    report = CheckReport(stream)
    index_file, data_file = idx_path(path_prefix), bin_path(path_prefix)
    for path in (index_file, data_file):
        if not report.check(f"{path} exists", os.path.isfile(path)):
            return False
    with open(index_file, "rb") as handle:
        raw = handle.read(HEADER_SIZE)
    header = _check_header(report, index_file, raw)
    if header is None:
        return False
    dtype, count, doc_count = header
    index = np.memmap(index_file, dtype=np.uint8, mode="r") if count or doc_count else None
    offset = HEADER_SIZE
    lengths = np.frombuffer(index, np.int32, count, offset) if count else np.empty(0, np.int32)
    offset += 4 * count
    pointers = np.frombuffer(index, np.int64, count, offset) if count else np.empty(0, np.int64)
    offset += 8 * count
    documents = np.frombuffer(index, np.int64, doc_count, offset) if doc_count else np.empty(0, np.int64)

    report.check("sequence lengths >= 0", bool(count == 0 or lengths.min() >= 0))
    report.check("document_indices not empty", doc_count >= 1, f"D={doc_count}")
    if doc_count:
        report.check("document_indices[0] == 0", int(documents[0]) == 0, f"{int(documents[0])}")
        report.check("document_indices[-1] == N", int(documents[-1]) == count, f"{int(documents[-1])} vs N={count}")
        report.check("document_indices non-decreasing", bool(np.all(np.diff(documents) >= 0)))
    total_tokens = _check_pointers(report, lengths, pointers, dtype.itemsize)
    bin_size = os.path.getsize(data_file)
    expected_bin = total_tokens * dtype.itemsize
    bin_ok = report.check(".bin size == sum(lengths) * itemsize", bin_size == expected_bin,
                          f"{bin_size} bytes, expected {expected_bin}")
    if vocab_size is None:
        meta = read_meta(path_prefix)
        vocab_size = meta.get("vocab_size") if meta else None
    if vocab_size is None or not check_tokens:
        print("[skip] token ids < vocab size (no meta.json vocab_size; pass --vocab-size)", file=stream)
    elif bin_ok:
        _check_token_ids(report, data_file, dtype, int(vocab_size))
    print(f"{'OK' if report.failures == 0 else 'FAILED'}: {path_prefix} ({count} sequences, "
          f"{max(doc_count - 1, 0)} documents, {total_tokens} tokens, {dtype}, {report.failures} failed checks)",
          file=stream)
    return report.failures == 0


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of data_tools.verify."""
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix", metavar="PREFIX", help="dataset prefix (PREFIX.idx and PREFIX.bin)")
    parser.add_argument("--vocab-size", type=int, default=None, help="check token ids < this (default: from meta.json)")
    parser.add_argument("--no-token-check", action="store_true", help="skip scanning .bin for token ids")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit code 0 iff every check passes."""
    args = build_parser().parse_args(argv)
    if args.prefix.endswith((".idx", ".bin")):
        raise DataToolError(f"{args.prefix}: pass the prefix without .idx/.bin")
    if verify(args.prefix, args.vocab_size, not args.no_token_check):
        return 0
    print(f"{PROG}: error: {args.prefix} failed verification (see FAIL lines above)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
