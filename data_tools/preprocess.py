"""Tokenize raw text into Megatron-compatible ``OUT.bin`` + ``OUT.idx`` (+ ``OUT.meta.json``).

    python -m data_tools.preprocess --input PATH [PATH ...] --tokenizer TOK --output-prefix OUT \\
           [--json-key text] [--workers N] [--append-eod] [--prepend-bos] [--skip-bad] \\
           [--filter KEY=VALUE ...] [--max-docs N] [--max-tokens N] [--valid-fraction F] [--resume]
    python -m data_tools.preprocess --hf-dataset NAME_OR_PATH [--hf-config C] [--hf-split S] \\
           [--streaming] --tokenizer TOK --output-prefix OUT ...

Each PATH is a file, a directory (every supported file below it) or a quoted glob
(:mod:`data_tools._inputs`); all files are read in sorted path order, each in its own order,
so the output is byte-identical for any ``--workers`` and equal to preprocessing the files one
by one and merging them in that order.  Workers read, filter and tokenize pieces of files in
parallel; the main process appends their results in order.  Memory is bounded by the piece
and batch sizes, never by the number or size of the files.

``--filter`` keeps the records whose dotted KEY holds VALUE; ``--max-docs``/``--max-tokens``
keep the first N documents/tokens (of the train output) in input order; ``--valid-fraction F``
writes ``OUT_train`` and ``OUT_valid``, a document going to valid by a hash of its text alone
(:mod:`data_tools._selection`).  Nothing appears under the final names before the end; a killed
run is continued with ``--resume`` after the last input file it fully wrote, with the same bytes
as an uninterrupted run (:mod:`data_tools._output`).  ``OUT.meta.json`` counts the records read,
kept, filtered, skipped as empty and bad.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from data_tools._errors import DataToolError, run_cli
from data_tools._hf_dataset import describe, hf_dataset_files
from data_tools._inputs import DEFAULT_PIECE_BYTES, files_fingerprint, plan_pieces, resolve_inputs
from data_tools._meta import read_meta
from data_tools._output import SplitOutput, Workspace
from data_tools._selection import HASH_RULE, parse_filters, valid_threshold
from data_tools._tokenize_worker import (
    BAD_RECORD_KINDS,
    SPLITS,
    PieceTokenizer,
    WorkerSettings,
    init_worker,
    part_path,
    tokenize_piece,
)
from data_tools._tokenizer import load_tokenizer
from data_tools._totals import Limits, Totals
from megaproc.data.indexed import best_dtype
from megaproc.files import sha256_file

PROG = "data_tools.preprocess"


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of data_tools.preprocess."""
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH",
                        help="files (.jsonl/.json[.gz|.zst], .parquet, .arrow, .txt), directories (every such file "
                        "below them; a save_to_disk directory is its dataset) or quoted globs, read in sorted path order")
    source.add_argument("--hf-dataset", metavar="NAME_OR_PATH",
                        help="a dataset through datasets.load_dataset: a local dataset directory or a hub name already "
                        "in the local HF cache (offline, never downloads)")
    parser.add_argument("--hf-config", default=None, help="--hf-dataset configuration (e.g. sample-10BT)")
    parser.add_argument("--hf-split", default="train", help="--hf-dataset split (default: train)")
    parser.add_argument("--streaming", action="store_true",
                        help="--hf-dataset as an iterable dataset (no arrow copy in the cache; one unit per shard)")
    parser.add_argument("--json-key", default="text", help="JSON key / column holding the text (default: text)")
    parser.add_argument("--tokenizer", required=True, help="local HF tokenizer dir (tokenizer.json), tokenizer.json, "
                        "sentencepiece .model, or a hub name already in the local cache")
    parser.add_argument("--output-prefix", required=True,
                        help="writes OUT.bin, OUT.idx and OUT.meta.json (OUT_train.* and OUT_valid.* with --valid-fraction)")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                        help="tokenizer processes (0 = tokenize in the main process; default: CPU count, max 8)")
    parser.add_argument("--append-eod", action="store_true", help="append the tokenizer's EOS id to every document")
    parser.add_argument("--prepend-bos", action="store_true", help="prepend the tokenizer's BOS id to every document")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip and count invalid JSON / missing key / non-UTF-8 records instead of stopping")
    parser.add_argument("--filter", action="append", metavar="KEY=VALUE",
                        help="keep records whose dotted KEY (JSON key or column, e.g. meta.pile_set_name) is VALUE; "
                        "repeatable, all must match")
    parser.add_argument("--max-docs", type=int, default=None,
                        help="keep the first N documents (of the train output) in input order, then stop")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="keep documents in input order until the train output holds at least N tokens "
                        "(e.g. steps x global batch x (seq_len + 1)), then stop")
    parser.add_argument("--valid-fraction", type=float, default=None,
                        help="write OUT_train and OUT_valid; a document goes to valid by a hash of its text alone")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run after the last input file it fully wrote (same bytes)")
    parser.add_argument("--chunk-size", type=int, default=512, help="documents per tokenizer batch (default: 512)")
    parser.add_argument("--piece-bytes", type=int, default=DEFAULT_PIECE_BYTES,
                        help="split plain .jsonl and parquet files into pieces of about this many bytes for the "
                        "workers (default: 32 MiB; the output does not depend on it)")
    parser.add_argument("--threads-per-worker", type=int, default=0,
                        help="tokenizer threads inside each worker (default 0: CPU count // workers, at least 1)")
    parser.add_argument("--dtype", choices=["auto", "uint16", "int32"], default="auto",
                        help="token dtype (default: uint16 if vocab < 65500 else int32)")
    return parser


def _check_numbers(args) -> None:
    if args.workers < 0 or args.chunk_size < 1 or args.piece_bytes < 1:
        raise DataToolError("--workers must be >= 0, --chunk-size and --piece-bytes >= 1")
    for name in ("max_docs", "max_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise DataToolError(f"--{name.replace('_', '-')} must be >= 1 (got {value})")
    if not args.hf_dataset and (args.hf_config or args.streaming):
        raise DataToolError("--hf-config and --streaming go with --hf-dataset")


def _special_ids(args, tokenizer) -> tuple[int | None, int | None]:
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


class Run:
    """One preprocess invocation: inputs, settings, workspace, outputs."""

    def __init__(self, args):
        _check_numbers(args)
        self.args = args
        self.filters = parse_filters(args.filter)
        self.threshold = valid_threshold(args.valid_fraction)
        self.limits = Limits(args.max_docs, args.max_tokens)
        self.tokenizer = load_tokenizer(args.tokenizer)
        if args.dtype == "uint16" and self.tokenizer.vocab_size > 65536:
            raise DataToolError(f"{args.tokenizer}: vocab size {self.tokenizer.vocab_size} does not fit --dtype uint16")
        self.dtype = best_dtype(self.tokenizer.vocab_size) if args.dtype == "auto" else args.dtype
        self.bos_id, self.eod_id = _special_ids(args, self.tokenizer)
        if args.hf_dataset:
            self.files = hf_dataset_files(args.hf_dataset, args.hf_config, args.hf_split, args.streaming, args.json_key)
        else:
            self.files = resolve_inputs(args.input)
        self.pieces = plan_pieces(self.files, args.json_key, {f.path[0] for f in self.filters}, args.piece_bytes)
        self.splits = SPLITS if self.threshold is not None else SPLITS[:1]
        prefix = args.output_prefix
        self.finals = {"train": f"{prefix}_train", "valid": f"{prefix}_valid"} if self.threshold is not None \
            else {"train": prefix}
        self.settings = {
            "tokenizer": self._tokenizer_name(), "tokenizer_sha256": sha256_file(self.tokenizer.path),
            "json_key": args.json_key, "filters": sorted(f.spec for f in self.filters),
            "max_docs": args.max_docs, "max_tokens": args.max_tokens, "valid_fraction": args.valid_fraction,
            "dtype": str(self.dtype), "bos_id": self.bos_id, "eod_id": self.eod_id, "skip_bad": bool(args.skip_bad),
        }
        self.identities = [f.identity() for f in self.files]
        self.fingerprint = hashlib.sha256(json.dumps([self.settings, self.identities], sort_keys=True).encode()
                                          ).hexdigest()[:32]
        self.workspace = Workspace(prefix)

    def _tokenizer_name(self) -> str:
        spec = self.args.tokenizer
        return os.path.abspath(spec) if os.path.exists(spec) else spec

    # ---- start or resume

    def complete_already(self) -> bool:
        """True when every output exists with a meta file of these very inputs and settings."""
        metas = [read_meta(prefix) for prefix in self.finals.values()]
        return all(m is not None and m.get("settings_fingerprint") == self.fingerprint for m in metas)

    def _check_resumable(self, state: dict) -> None:
        where = self.workspace.directory
        for key, value in self.settings.items():
            before = state["settings"].get(key)
            if before != value:
                raise DataToolError(f"{where}: cannot resume, setting {key} was {before!r} and is now {value!r} "
                                    "(rerun with the same options, or delete that directory to start over)")
        before_paths = [identity[0] for identity in state["files"]]
        if before_paths != [identity[0] for identity in self.identities]:
            raise DataToolError(f"{where}: cannot resume, the input files differ from the interrupted run's "
                                f"({len(before_paths)} then, {len(self.identities)} now)")
        for before, now in zip(state["files"][: state["files_done"]], self.identities):
            if before != now:
                raise DataToolError(f"{now[0]}: changed since the interrupted run wrote it (size/mtime); "
                                    f"cannot resume, delete {where} to start over")

    def start(self) -> dict | None:
        """Take the workspace; return the state to resume from (None: a fresh start).

        Raises when an interrupted run exists without ``--resume`` or cannot be resumed.
        """
        existed = self.workspace.exists()
        self.workspace.lock()
        state = self.workspace.read_state() if existed else None
        if state is not None and not self.args.resume:
            self.workspace.release()
            raise DataToolError(
                f"{self.args.output_prefix}: an interrupted preprocess left {self.workspace.directory} "
                f"({state['files_done']}/{len(state['files'])} input files done); rerun with --resume to continue it, "
                "or delete that directory to start over")
        if state is not None:
            try:
                self._check_resumable(state)
            except DataToolError:
                self.workspace.release()
                raise
            print(f"resuming after {state['files_done']}/{len(self.files)} input files", file=sys.stderr)
        elif self.args.resume:
            print("--resume: no interrupted run of this output, starting from the beginning", file=sys.stderr)
        self.workspace.reset(keep_data=state is not None)
        return state

    # ---- the work

    def _worker_settings(self) -> WorkerSettings:
        args = self.args
        cpus = os.cpu_count() or 1
        return WorkerSettings(
            tokenizer=args.tokenizer, json_key=args.json_key, filters=self.filters, skip_bad=args.skip_bad,
            dtype=str(self.dtype), bos_id=self.bos_id, eod_id=self.eod_id,
            threads=args.threads_per_worker or max(1, cpus // max(1, args.workers)),
            valid_threshold=self.threshold, part_dir=self.workspace.parts, batch_docs=args.chunk_size)

    def _results(self, pieces):
        """``(piece, result)`` in input order, at most ``2 * workers`` pieces in flight."""
        settings = self._worker_settings()
        if self.args.workers == 0:
            worker = PieceTokenizer(settings, self.tokenizer)
            for piece in pieces:
                yield piece, worker(piece)
            return
        context = multiprocessing.get_context("spawn")
        executor = ProcessPoolExecutor(self.args.workers, mp_context=context, initializer=init_worker,
                                       initargs=(settings,))
        pending: collections.deque = collections.deque()
        try:
            for piece in pieces:
                pending.append((piece, executor.submit(tokenize_piece, piece)))
                if len(pending) >= 2 * self.args.workers:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        except BrokenProcessPool:
            raise DataToolError("a tokenizer worker process died (out of memory or killed); "
                                "rerun with --resume to continue") from None
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    def _progress(self, files_done: int):
        total = sum(p.nbytes for p in self.pieces)
        initial = sum(p.nbytes for p in self.pieces if p.first_file < files_done)
        return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc="preprocess", disable=None,
                    dynamic_ncols=True, mininterval=1.0, file=sys.stderr)

    def _append(self, outputs: dict, piece, result, take: dict) -> None:
        itemsize = outputs["train"].dtype.itemsize
        for split, number in take.items():
            part = part_path(self.workspace.parts, piece.index, split)
            if split in outputs:
                lengths = result.lengths[split][:number]
                outputs[split].append(part, int(lengths.sum(dtype="int64")) * itemsize, lengths)
            if os.path.exists(part):
                os.remove(part)

    def process(self, state: dict | None) -> tuple[Totals, dict]:
        """Append every remaining piece (or up to the limit); returns the totals and outputs."""
        files_done = state["files_done"] if state else 0
        totals = Totals(state["totals"] if state else None)
        saved = state["outputs"] if state else {}
        outputs = {split: SplitOutput(self.workspace.directory, split, self.dtype, saved.get(split))
                   for split in self.splits}
        todo = [p for p in self.pieces if p.first_file >= files_done] if not totals.reached else []
        progress = self._progress(files_done)
        current_file, base = None, 0
        try:
            with contextlib.closing(self._results(todo)) as results:
                for piece, result in results:
                    if piece.first_file != current_file:
                        current_file, base = piece.first_file, 0
                    take = totals.take(piece, result, base, self.limits)
                    base += len(result.status)
                    self._append(outputs, piece, result, take)
                    if piece.ends_file:
                        files_done = piece.first_file + piece.file_count
                    progress.update(piece.nbytes)
                    progress.set_postfix_str(f"files {files_done}/{len(self.files)}, {totals.kept:,} docs, "
                                             f"{sum(totals.tokens.values()):,} tokens", refresh=False)
                    if totals.reached:
                        break
                    if piece.ends_file:  # every document of these files is appended: a resume point
                        self.workspace.save_state({
                            "settings": self.settings, "files": self.identities, "files_done": files_done,
                            "outputs": {s: o.state() for s, o in outputs.items()}, "totals": totals.to_state()})
        except BaseException:
            for output in outputs.values():
                output.close()
            raise
        finally:
            progress.close()
        return totals, outputs

    # ---- the end

    def meta(self, split: str, totals: Totals, outputs: dict) -> dict:
        """The meta file of output ``split``."""
        args = self.args
        labels = sorted({f.label for f in self.files})
        meta = {
            "format": "megaproc-indexed-v1",
            "tokenizer": self.settings["tokenizer"],
            "tokenizer_type": self.tokenizer.kind,
            "vocab_size": self.tokenizer.vocab_size,
            "dtype": str(self.dtype),
            "bos_token_id": self.tokenizer.bos_id,
            "eos_token_id": self.tokenizer.eos_id,
            "prepend_bos": bool(args.prepend_bos),
            "append_eod": bool(args.append_eod),
            "documents": outputs[split].documents,
            "sequences": outputs[split].documents,
            "tokens": outputs[split].tokens,
            "input_records": totals.read,
            "skipped": {kind: totals.counts[kind] for kind in ("empty", *BAD_RECORD_KINDS)},
            "blank_lines": totals.counts["blank_lines"],
            "counts": totals.summary(),
            "filters": [f.spec for f in self.filters],
            "limits": {"max_docs": args.max_docs, "max_tokens": args.max_tokens, "reached": totals.reached},
            "input": {
                "paths": [os.path.abspath(p) for p in args.input] if args.input else None,
                "hf_dataset": describe(args.hf_dataset, args.hf_config, args.hf_split) if args.hf_dataset else None,
                "format": "+".join(labels), "json_key": args.json_key, "files": len(self.files),
                "fingerprint": files_fingerprint(self.files),
            },
            "files": [{"path": f.path, "format": f.label, "bytes": f.size} for f in self.files],
            "settings_fingerprint": self.fingerprint,
            "arguments": vars(args),
        }
        if self.threshold is not None:
            meta["split"] = {
                "name": split, "valid_fraction": args.valid_fraction, "rule": HASH_RULE,
                "prefixes": {s: os.path.abspath(p) for s, p in self.finals.items()},
                "documents": {s: o.documents for s, o in outputs.items()},
                "tokens": {s: o.tokens for s, o in outputs.items()},
            }
        return meta

    def finish(self, totals: Totals, outputs: dict) -> None:
        """Write the indexes and publish every output with its meta file."""
        if totals.kept == 0:
            skipped = ", ".join(f"{k}={v}" for k, v in sorted(totals.counts.items()) if v) or "input is empty"
            raise DataToolError(f"{self._input_name()}: no documents to write ({skipped})")
        for output in outputs.values():
            output.write_index()
        metas = {self.finals[s]: self.meta(s, totals, outputs) for s in self.splits}
        self.workspace.publish({self.finals[s]: outputs[s] for s in self.splits}, metas)

    def _input_name(self) -> str:
        if self.args.hf_dataset:
            return describe(self.args.hf_dataset, self.args.hf_config, self.args.hf_split)
        return " ".join(self.args.input)

    def report(self, totals: Totals, outputs: dict, elapsed: float) -> None:
        """Warnings about skipped records and limits, then one line per written output."""
        if totals.counts["empty"]:
            where = ", ".join(totals.examples.get("empty", []))
            print(f"warning: skipped {totals.counts['empty']} empty documents (e.g. {where})", file=sys.stderr)
        for kind in BAD_RECORD_KINDS:
            if totals.counts[kind]:
                where = ", ".join(totals.examples.get(kind, []))
                print(f"warning: --skip-bad skipped {totals.counts[kind]} {kind} records (e.g. {where})",
                      file=sys.stderr)
        if self.filters:
            print(f"note: --filter kept {totals.kept} of {totals.read} records ({totals.counts['filtered']} filtered)",
                  file=sys.stderr)
        if self.limits and not totals.reached:
            print(f"warning: the input ended before --max-docs/--max-tokens was reached "
                  f"({outputs['train'].documents} documents, {outputs['train'].tokens} tokens)", file=sys.stderr)
        for split in self.splits:
            output = outputs[split]
            if output.documents == 0:
                print(f"warning: {self.finals[split]} has no documents", file=sys.stderr)
            print(f"wrote {self.finals[split]}.bin/.idx: {output.documents} documents, {output.tokens} tokens")
        tokens = sum(o.tokens for o in outputs.values())
        megabytes = sum(f.size for f in self.files) / 1e6
        print(f"{len(self.files)} input files ({megabytes:,.1f} MB) in {elapsed:.1f}s: "
              f"{tokens / max(elapsed, 1e-9):,.0f} tokens/s, {megabytes / max(elapsed, 1e-9):.1f} MB/s")


def run(args) -> Totals:
    """Preprocess ``args`` into ``args.output_prefix`` (see the module docstring); returns the totals."""
    start = time.perf_counter()
    job = Run(args)
    if args.resume and not job.workspace.exists() and job.complete_already():
        print(f"{args.output_prefix}: already complete with these inputs and settings, nothing to do", file=sys.stderr)
        return Totals()
    state = job.start()
    processed = False
    try:
        totals, outputs = job.process(state)
        processed = True
        job.finish(totals, outputs)
    except BaseException:
        saved = job.workspace.read_state() if not processed else None
        if saved is not None and saved["files_done"] > 0:  # progress worth resuming
            job.workspace.release()
            print(f"note: partial output kept in {job.workspace.directory} ({saved['files_done']}/{len(job.files)} "
                  "input files done); rerun with --resume to continue", file=sys.stderr)
        else:
            job.workspace.remove()
        raise
    job.report(totals, outputs, time.perf_counter() - start)
    return totals


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run; returns the process exit code."""
    args = build_parser().parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
