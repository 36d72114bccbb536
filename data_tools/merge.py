"""Concatenate indexed datasets of the same dtype into one.

    python -m data_tools.merge --inputs P1 P2 ... --output-prefix OUT

Documents keep their order (all of P1, then P2, ...); document indices are shifted by the
number of sequences already written.  Writes OUT.meta.json listing the inputs; when every input
has a meta file naming the same tokenizer, the tokenizer and vocab size are carried over.
"""

from __future__ import annotations

import argparse
import os
import sys

from data_tools._errors import DataToolError, run_cli
from data_tools._meta import finalize_with_meta, read_meta
from megaproc.data.indexed import IndexedDataset, IndexedDatasetBuilder, idx_path

PROG = "data_tools.merge"


def _merged_meta(inputs: list[IndexedDataset], metas: list[dict | None]) -> dict:
    meta = {
        "format": "megaproc-indexed-v1",
        "dtype": str(inputs[0].dtype),
        "documents": sum(len(d.document_indices) - 1 for d in inputs),
        "sequences": sum(len(d) for d in inputs),
        "tokens": sum(d.num_tokens for d in inputs),
        "merged_from": [{"prefix": os.path.abspath(d.path_prefix), "fingerprint": d.fingerprint()} for d in inputs],
    }
    tokenizers = {(m or {}).get("tokenizer") for m in metas}
    vocab_sizes = {(m or {}).get("vocab_size") for m in metas}
    if len(tokenizers) == 1 and None not in tokenizers:
        meta["tokenizer"] = tokenizers.pop()
    if len(vocab_sizes) == 1 and None not in vocab_sizes:
        meta["vocab_size"] = vocab_sizes.pop()
    elif vocab_sizes - {None}:
        meta["vocab_size"] = max(v for v in vocab_sizes if v is not None)
    return meta


def merge(prefixes: list[str], output_prefix: str) -> dict:
    """Merge ``prefixes`` into ``output_prefix``; returns the written meta."""
    out_abs = os.path.abspath(output_prefix)
    if any(os.path.abspath(p) == out_abs for p in prefixes):
        raise DataToolError(f"{idx_path(output_prefix)}: output prefix is also an input")
    inputs = [IndexedDataset(p) for p in prefixes]
    for dataset in inputs[1:]:
        if dataset.dtype != inputs[0].dtype:
            raise DataToolError(
                f"{idx_path(dataset.path_prefix)}: dtype {dataset.dtype} differs from "
                f"{idx_path(inputs[0].path_prefix)} ({inputs[0].dtype}); all inputs must share one dtype"
            )
    metas = [read_meta(p) for p in prefixes]
    meta = _merged_meta(inputs, metas)
    with IndexedDatasetBuilder(output_prefix, dtype=inputs[0].dtype) as builder:
        for dataset in inputs:
            builder.add_index(dataset.path_prefix)
        finalize_with_meta(builder, output_prefix, meta)
    return meta


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of data_tools.merge."""
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", nargs="+", required=True, metavar="PREFIX", help="dataset prefixes to concatenate")
    parser.add_argument("--output-prefix", required=True, help="writes OUT.bin, OUT.idx and OUT.meta.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: merge the inputs and print the totals."""
    args = build_parser().parse_args(argv)
    meta = merge(args.inputs, args.output_prefix)
    print(f"wrote {args.output_prefix}.bin/.idx: {meta['documents']} documents, {meta['sequences']} sequences, "
          f"{meta['tokens']} tokens ({meta['dtype']}) from {len(args.inputs)} inputs")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
