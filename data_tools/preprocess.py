"""Tokenize raw text into a Megatron-compatible ``OUT.bin`` + ``OUT.idx`` (+ ``OUT.meta.json``).

    python -m data_tools.preprocess --input PATH [--json-key text] --tokenizer TOK \\
           --output-prefix OUT [--workers N] [--append-eod] [--prepend-bos] [--skip-bad] \\
           [--chunk-size DOCS]

The main process streams the input in chunks of ``--chunk-size`` documents, keeps at most
``4 * workers`` chunks in flight, and writes results in input order; workers decode, validate
and tokenize.  Memory is bounded by the chunk size, never by the input size.  Output goes to
temporary names that are renamed only after everything succeeded.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Iterable, Iterator

from data_tools._errors import DataToolError, run_cli
from data_tools._meta import finalize_with_meta
from data_tools._readers import detect_format, input_fingerprint, read_chunks
from data_tools._tokenize_worker import (
    BAD_RECORD_KINDS,
    ChunkTokenizer,
    TokenizedChunk,
    WorkerSettings,
    init_worker,
    tokenize_chunk,
)
from data_tools._tokenizer import load_tokenizer
from megaproc.data.indexed import IndexedDatasetBuilder, best_dtype

PROG = "data_tools.preprocess"


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of data_tools.preprocess."""
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help=".jsonl/.jsonl.gz/.jsonl.zst/.parquet file, a directory of "
                        ".txt files (one document each) or a datasets save_to_disk directory")
    parser.add_argument("--json-key", default="text", help="JSON key / column holding the text (default: text)")
    parser.add_argument("--tokenizer", required=True, help="local HF tokenizer dir (tokenizer.json), tokenizer.json, "
                        "sentencepiece .model, or a hub name already in the local cache")
    parser.add_argument("--output-prefix", required=True, help="writes OUT.bin, OUT.idx and OUT.meta.json")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                        help="tokenizer processes (0 = tokenize in the main process; default: CPU count, max 8)")
    parser.add_argument("--append-eod", action="store_true", help="append the tokenizer's EOS id to every document")
    parser.add_argument("--prepend-bos", action="store_true", help="prepend the tokenizer's BOS id to every document")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip and count invalid JSON / missing key / non-UTF-8 records instead of stopping")
    parser.add_argument("--chunk-size", type=int, default=512, help="documents per work unit (default: 512)")
    parser.add_argument("--threads-per-worker", type=int, default=0,
                        help="tokenizer threads inside each worker (default 0: CPU count // workers, at least 1)")
    parser.add_argument("--dtype", choices=["auto", "uint16", "int32"], default="auto",
                        help="token dtype (default: uint16 if vocab < 65500 else int32)")
    return parser


def _submit_in_order(executor, chunks: Iterable, max_in_flight: int) -> Iterator[TokenizedChunk]:
    """Yield results in input order with at most ``max_in_flight`` chunks submitted at once."""
    pending: collections.deque = collections.deque()
    for chunk in chunks:
        pending.append(executor.submit(tokenize_chunk, chunk))
        if len(pending) >= max_in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _progress_bar():
    from tqdm import tqdm

    return tqdm(unit=" docs", desc="tokenizing", disable=None, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)


class _Totals:
    """Running counts written to the meta file and the final report."""

    def __init__(self):
        self.input_docs = 0
        self.documents = 0
        self.tokens = 0
        self.nbytes = 0
        self.counts: collections.Counter = collections.Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, result: TokenizedChunk) -> None:
        self.input_docs += result.input_docs
        self.documents += len(result.lengths)
        self.tokens += int(result.tokens.size)
        self.nbytes += result.nbytes
        self.counts.update(result.counts)
        for kind, locations in result.examples.items():
            kept = self.examples.setdefault(kind, [])
            kept.extend(locations[: max(0, 5 - len(kept))])


def _write_chunk(builder: IndexedDatasetBuilder, result: TokenizedChunk) -> None:
    position = 0
    for length in result.lengths.tolist():
        builder.add_document(result.tokens[position : position + length])
        position += length


def _resolve_special_ids(args, tokenizer) -> tuple[int | None, int | None]:
    bos_id = eod_id = None
    if args.prepend_bos:
        if tokenizer.bos_id is None:
            raise DataToolError(f"{args.tokenizer}: --prepend-bos given but the tokenizer has no BOS token")
        bos_id = tokenizer.bos_id
    if args.append_eod:
        if tokenizer.eos_id is None:
            raise DataToolError(f"{args.tokenizer}: --append-eod given but the tokenizer has no EOS token")
        eod_id = tokenizer.eos_id
    return bos_id, eod_id


def _report(totals: _Totals, args, elapsed: float) -> None:
    if totals.counts["empty"]:
        where = ", ".join(totals.examples.get("empty", []))
        print(f"warning: skipped {totals.counts['empty']} empty documents (e.g. {where})", file=sys.stderr)
    for kind in BAD_RECORD_KINDS:
        if totals.counts[kind]:
            where = ", ".join(totals.examples.get(kind, []))
            print(f"warning: --skip-bad skipped {totals.counts[kind]} {kind} records (e.g. {where})", file=sys.stderr)
    rate = totals.tokens / elapsed if elapsed > 0 else float("inf")
    print(
        f"wrote {args.output_prefix}.bin/.idx: {totals.documents} documents, {totals.tokens} tokens "
        f"in {elapsed:.1f}s ({rate:,.0f} tokens/s, {totals.nbytes / max(elapsed, 1e-9) / 1e6:.1f} MB/s)"
    )


def run(args) -> _Totals:
    """Tokenize ``args.input`` into ``args.output_prefix``; returns the totals."""
    if args.workers < 0 or args.chunk_size < 1:
        raise DataToolError("--workers must be >= 0 and --chunk-size >= 1")
    fmt = detect_format(args.input)
    tokenizer = load_tokenizer(args.tokenizer)
    dtype = best_dtype(tokenizer.vocab_size) if args.dtype == "auto" else args.dtype
    if args.dtype == "uint16" and tokenizer.vocab_size > 65536:
        raise DataToolError(f"{args.tokenizer}: vocab size {tokenizer.vocab_size} does not fit --dtype uint16")
    bos_id, eod_id = _resolve_special_ids(args, tokenizer)
    cpus = os.cpu_count() or 1
    settings = WorkerSettings(
        tokenizer=args.tokenizer, json_key=args.json_key, skip_bad=args.skip_bad, dtype=str(dtype),
        bos_id=bos_id, eod_id=eod_id, threads=args.threads_per_worker or max(1, cpus // max(1, args.workers)),
    )
    totals = _Totals()
    start = time.perf_counter()
    chunks = read_chunks(args.input, args.json_key, args.chunk_size)
    progress = _progress_bar()
    try:
        with IndexedDatasetBuilder(args.output_prefix, dtype=dtype) as builder:
            if args.workers == 0:
                worker = ChunkTokenizer(settings, tokenizer)
                results = map(worker, chunks)
                executor = None
            else:
                context = multiprocessing.get_context("spawn")
                executor = ProcessPoolExecutor(args.workers, mp_context=context, initializer=init_worker,
                                               initargs=(settings,))
                results = _submit_in_order(executor, chunks, 4 * args.workers)
            try:
                for result in results:
                    _write_chunk(builder, result)
                    totals.add(result)
                    progress.update(result.input_docs)
                    elapsed = max(time.perf_counter() - start, 1e-9)
                    progress.set_postfix_str(f"{totals.nbytes / elapsed / 1e6:.1f} MB/s", refresh=False)
            except BrokenProcessPool:
                raise DataToolError(f"{args.input}: a tokenizer worker process died (out of memory or killed)") from None
            finally:
                if executor is not None:
                    executor.shutdown(wait=True, cancel_futures=True)
            if totals.documents == 0:
                skipped = ", ".join(f"{k}={v}" for k, v in sorted(totals.counts.items()) if v) or "input is empty"
                raise DataToolError(f"{args.input}: no documents to write ({skipped})")
            meta = {
                "format": "megaproc-indexed-v1",
                "tokenizer": os.path.abspath(args.tokenizer) if os.path.exists(args.tokenizer) else args.tokenizer,
                "tokenizer_type": tokenizer.kind,
                "vocab_size": tokenizer.vocab_size,
                "dtype": str(dtype),
                "bos_token_id": tokenizer.bos_id,
                "eos_token_id": tokenizer.eos_id,
                "prepend_bos": bool(args.prepend_bos),
                "append_eod": bool(args.append_eod),
                "documents": totals.documents,
                "sequences": totals.documents,
                "tokens": totals.tokens,
                "input_records": totals.input_docs,
                "skipped": {kind: totals.counts[kind] for kind in ("empty", *BAD_RECORD_KINDS)},
                "blank_lines": totals.counts["blank_lines"],
                "input": {"path": os.path.abspath(args.input), "format": fmt, "json_key": args.json_key,
                          "fingerprint": input_fingerprint(args.input)},
                "arguments": vars(args),
            }
            finalize_with_meta(builder, args.output_prefix, meta)
    finally:
        progress.close()
    _report(totals, args, time.perf_counter() - start)
    return totals


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run; returns the process exit code."""
    args = build_parser().parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
