"""Summarise an indexed dataset: counts, dtype, length histogram and a decoded peek.

    python -m data_tools.inspect PREFIX [--tokenizer TOK] [--num-tokens 32] [--json]

The tokenizer for the peek comes from ``--tokenizer`` or else the ``tokenizer`` named in
``PREFIX.meta.json`` (skipped with a note if it cannot be loaded).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from data_tools._errors import DataToolError, run_cli
from data_tools._meta import read_meta
from data_tools._tokenizer import load_tokenizer
from megaproc.data.indexed import IndexedDataset

PROG = "data_tools.inspect"
_BAR_WIDTH = 40


def length_histogram(lengths: np.ndarray) -> list[tuple[int, int, int]]:
    """Counts of sequence lengths in power-of-two buckets: ``(low, high_exclusive, count)``."""
    if len(lengths) == 0:
        return []
    buckets = np.zeros(34, dtype=np.int64)
    positive = lengths[lengths > 0].astype(np.int64)
    np.add.at(buckets, np.floor(np.log2(positive)).astype(np.int64) + 1, 1)
    buckets[0] = int(np.count_nonzero(lengths == 0))
    rows = []
    for bucket, count in enumerate(buckets.tolist()):
        if count:
            low, high = (0, 1) if bucket == 0 else (1 << (bucket - 1), 1 << bucket)
            rows.append((low, high, count))
    return rows


def summarize(dataset: IndexedDataset) -> dict:
    """Counts, dtype and length statistics of ``dataset``."""
    lengths = dataset.sequence_lengths
    summary = {
        "prefix": dataset.path_prefix,
        "documents": len(dataset.document_indices) - 1,
        "sequences": len(dataset),
        "tokens": dataset.num_tokens,
        "dtype": str(dataset.dtype),
        "fingerprint": dataset.fingerprint(),
    }
    if len(lengths):
        summary.update(min_length=int(lengths.min()), mean_length=float(lengths.mean()),
                       median_length=float(np.median(lengths)), max_length=int(lengths.max()))
    summary["length_histogram"] = [
        {"min": low, "max_exclusive": high, "count": count} for low, high, count in length_histogram(lengths)
    ]
    return summary


def _peek(dataset: IndexedDataset, tokenizer_spec: str | None, num_tokens: int) -> dict:
    if len(dataset) == 0:
        return {}
    tokens = dataset.get(0, 0, min(num_tokens, int(dataset.sequence_lengths[0])))
    peek = {"first_tokens": tokens.tolist()}
    if tokenizer_spec:
        try:
            peek["first_tokens_decoded"] = load_tokenizer(tokenizer_spec).decode(tokens)
        except (DataToolError, OSError, ValueError) as exc:
            peek["decode_note"] = f"could not load tokenizer {tokenizer_spec}: {exc}"
    return peek


def _print_text(summary: dict, meta: dict | None) -> None:
    for key in ("prefix", "documents", "sequences", "tokens", "dtype", "fingerprint"):
        print(f"{key:>12}: {summary[key]}")
    if "mean_length" in summary:
        print(f"{'lengths':>12}: min {summary['min_length']}, median {summary['median_length']:.0f}, "
              f"mean {summary['mean_length']:.1f}, max {summary['max_length']}")
    if meta:
        for key in ("tokenizer", "vocab_size", "append_eod", "prepend_bos", "skipped"):
            if key in meta:
                print(f"{key:>12}: {meta[key]}")
    rows = summary["length_histogram"]
    if rows:
        print("length histogram (tokens per sequence):")
        peak = max(row["count"] for row in rows)
        for row in rows:
            bar = "#" * max(1, round(_BAR_WIDTH * row["count"] / peak))
            print(f"  [{row['min']:>8}, {row['max_exclusive']:>8}) {row['count']:>10}  {bar}")
    if "first_tokens" in summary:
        print(f"first tokens of document 0: {summary['first_tokens']}")
    if "first_tokens_decoded" in summary:
        print(f"decoded: {summary['first_tokens_decoded']!r}")
    if "decode_note" in summary:
        print(f"note: {summary['decode_note']}")


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of data_tools.inspect."""
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix", metavar="PREFIX", help="dataset prefix (PREFIX.idx and PREFIX.bin)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer to decode the first tokens (default: from meta.json)")
    parser.add_argument("--num-tokens", type=int, default=32, help="how many tokens of document 0 to show")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: print the summary of PREFIX."""
    args = build_parser().parse_args(argv)
    dataset = IndexedDataset(args.prefix)
    meta = read_meta(args.prefix)
    summary = summarize(dataset)
    tokenizer = args.tokenizer or (meta or {}).get("tokenizer")
    summary.update(_peek(dataset, tokenizer, args.num_tokens))
    if args.json:
        summary["meta"] = meta
        print(json.dumps(summary))
    else:
        _print_text(summary, meta)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
