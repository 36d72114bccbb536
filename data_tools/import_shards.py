"""Convert the seed projects' token shards into the indexed format, recovering documents.

    python -m data_tools.import_shards --format {c4_packed,fineweb} --input DIR --output-prefix OUT \\
           [--split train|val] [--eos-id N] [--bos-id N] [--seq-len N] [--vocab-size N]

``c4_packed`` (pre_pretraining seed): ``shard_*.bin`` hold uint16 blocks of ``seq_len + 1``
tokens cut from one contiguous stream where every document ends with EOS.  Documents are split
*after* each EOS (the EOS stays at the end of its document); a document may span blocks and
shards.  ``fineweb`` (gpt_prototype seed): ``train_*.bin`` / ``val_*.bin`` are flat uint16
streams with BOS at the start of every document (an llm.c 1024-byte header is detected and
skipped).  Documents are split *before* each BOS, which stays at the start of its document.

``DIR/meta.json`` supplies ``seq_len``, ``eos_token_id`` / ``bos_token_id``, ``vocab_size``
and ``dtype`` (common aliases accepted); flags override it.  Shards are streamed in bounded
chunks: memory is bounded by the chunk size plus the longest document.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import numpy as np

from data_tools._errors import DataToolError, run_cli
from data_tools._meta import finalize_with_meta
from megaproc.data.indexed import IndexedDatasetBuilder

PROG = "data_tools.import_shards"
CHUNK_TOKENS = 8 * 1024 * 1024
LLMC_MAGIC, LLMC_HEADER_BYTES = 20240520, 256 * 4

SEQ_LEN_KEYS = ("seq_len", "sequence_length", "block_size", "context_length")
EOS_KEYS = ("eos_token_id", "eos_id", "eos", "eot_token_id", "eot_id", "eot", "eot_token")
BOS_KEYS = ("bos_token_id", "bos_id", "bos", "bos_token", "eot_token_id", "eot_id", "eot", "eot_token")
VOCAB_KEYS = ("vocab_size", "n_vocab")
DTYPE_KEYS = ("dtype", "token_dtype")
TOKENIZER_KEYS = ("tokenizer", "tokenizer_name", "encoding", "tokenizer_path")


def _lookup(meta: dict, keys: tuple[str, ...]):
    for key in keys:
        if meta.get(key) is not None:
            return meta[key]
    return None


def _natural_key(path: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", os.path.basename(path))]


def list_shards(input_dir: str, fmt: str, split: str) -> list[str]:
    """Shard files of ``fmt`` in ``input_dir`` in stream order (numeric-aware sort)."""
    pattern = "shard_*.bin" if fmt == "c4_packed" else f"{split}_*.bin"
    shards = sorted(glob.glob(os.path.join(input_dir, pattern)), key=_natural_key)
    if not shards:
        raise DataToolError(f"{input_dir}: no {pattern} files")
    return shards


class DocumentSplitter:
    """Cuts a token stream fed in pieces into documents and writes them to a builder.

    ``mode="end"``: a document ends right after each ``delimiter`` (EOS).
    ``mode="start"``: a document starts at each ``delimiter`` (BOS).
    """

    def __init__(self, builder: IndexedDatasetBuilder, delimiter: int, mode: str):
        self.builder = builder
        self.delimiter = delimiter
        self.mode = mode
        self._pending: list[np.ndarray] = []
        self.documents = 0
        self.tokens = 0
        self.tokens_before_first_bos = 0

    def _emit(self, piece: np.ndarray) -> None:
        if self._pending:
            piece = np.concatenate(self._pending + [piece])
            self._pending = []
        if len(piece) == 0:
            return
        if self.mode == "start" and self.documents == 0 and piece[0] != self.delimiter:
            self.tokens_before_first_bos = len(piece)
        self.builder.add_document(piece)
        self.documents += 1
        self.tokens += len(piece)

    def feed(self, tokens: np.ndarray) -> None:
        """Consume the next piece of the stream."""
        cuts = np.flatnonzero(tokens == self.delimiter)
        if self.mode == "end":
            cuts += 1
        previous = 0
        for cut in cuts.tolist():
            if cut > previous or self._pending:
                self._emit(tokens[previous:cut])
            previous = cut
        if previous < len(tokens):
            self._pending.append(np.array(tokens[previous:]))

    def close(self) -> bool:
        """Flush the last document; True if it was cut off (no final EOS in ``end`` mode)."""
        partial = bool(self._pending) and self.mode == "end"
        if self._pending:
            self._emit(np.empty(0, dtype=self._pending[0].dtype))
        return partial


def _open_shard(path: str, fmt: str, dtype: np.dtype, block_tokens: int | None) -> np.ndarray:
    size = os.path.getsize(path)
    if size == 0:
        return np.empty(0, dtype)
    offset = 0
    count = None
    if fmt == "fineweb" and size >= LLMC_HEADER_BYTES:
        header = np.fromfile(path, dtype=np.int32, count=3)
        if header[0] == LLMC_MAGIC:
            offset, count = LLMC_HEADER_BYTES, int(header[2])
            if offset + count * dtype.itemsize != size:
                raise DataToolError(f"{path}: llm.c header announces {count} tokens but the file holds {size - offset} bytes")
    if count is None:
        if size % dtype.itemsize:
            raise DataToolError(f"{path}: size {size} is not a multiple of {dtype.itemsize} bytes ({dtype})")
        count = size // dtype.itemsize
    if block_tokens and count % block_tokens:
        raise DataToolError(f"{path}: {count} tokens is not a whole number of {block_tokens}-token blocks (seq_len + 1)")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


def _settings(args) -> dict:
    meta_file = os.path.join(args.input, "meta.json")
    meta = {}
    if os.path.isfile(meta_file):
        try:
            with open(meta_file, encoding="utf-8") as handle:
                meta = json.load(handle)
        except json.JSONDecodeError as exc:
            raise DataToolError(f"{meta_file}: not valid JSON ({exc})") from None
    dtype = np.dtype(args.dtype or _lookup(meta, DTYPE_KEYS) or "uint16")
    if dtype not in (np.dtype(np.uint16), np.dtype(np.int32)):
        raise DataToolError(f"{meta_file}: token dtype {dtype} not supported (uint16 or int32)")
    settings = {"meta": meta, "dtype": dtype, "vocab_size": args.vocab_size or _lookup(meta, VOCAB_KEYS)}
    if args.format == "c4_packed":
        delimiter, flag, keys = args.eos_id if args.eos_id is not None else _lookup(meta, EOS_KEYS), "--eos-id", EOS_KEYS
        seq_len = args.seq_len or _lookup(meta, SEQ_LEN_KEYS)
        if seq_len is None:
            raise DataToolError(f"{meta_file}: no sequence length (looked for {', '.join(SEQ_LEN_KEYS)}); pass --seq-len")
        settings["block_tokens"] = int(seq_len) + 1
    else:
        delimiter, flag, keys = args.bos_id if args.bos_id is not None else _lookup(meta, BOS_KEYS), "--bos-id", BOS_KEYS
        settings["block_tokens"] = None
    if delimiter is None:
        raise DataToolError(f"{meta_file}: no document delimiter id (looked for {', '.join(keys)}); pass {flag}")
    settings["delimiter"] = int(delimiter)
    return settings


def import_shards(args) -> dict:
    """Stream every shard into ``args.output_prefix``; returns the written meta."""
    if not os.path.isdir(args.input):
        raise DataToolError(f"{args.input}: input directory not found")
    settings = _settings(args)
    shards = list_shards(args.input, args.format, args.split)
    dtype, vocab_size = settings["dtype"], settings["vocab_size"]
    mode = "end" if args.format == "c4_packed" else "start"
    with IndexedDatasetBuilder(args.output_prefix, dtype=dtype) as builder:
        splitter = DocumentSplitter(builder, settings["delimiter"], mode)
        for shard in shards:
            tokens = _open_shard(shard, args.format, dtype, settings["block_tokens"])
            for start in range(0, len(tokens), CHUNK_TOKENS):
                chunk = tokens[start : start + CHUNK_TOKENS]
                if vocab_size and len(chunk) and int(chunk.max()) >= int(vocab_size):
                    where = start + int(np.argmax(chunk >= int(vocab_size)))
                    raise DataToolError(f"{shard}: token {where} is {int(chunk[where - start])}, not below vocab_size {vocab_size}")
                splitter.feed(chunk)
            del tokens
        partial = splitter.close()
        meta = {
            "format": "megaproc-indexed-v1",
            "imported_from": {"format": args.format, "input": os.path.abspath(args.input), "split": args.split
                              if args.format == "fineweb" else None, "shards": len(shards)},
            "dtype": str(dtype),
            "vocab_size": vocab_size,
            "tokenizer": _lookup(settings["meta"], TOKENIZER_KEYS),
            "eos_token_id": settings["delimiter"] if mode == "end" else _lookup(settings["meta"], EOS_KEYS),
            "bos_token_id": settings["delimiter"] if mode == "start" else _lookup(settings["meta"], ("bos_token_id",)),
            "documents": splitter.documents,
            "sequences": splitter.documents,
            "tokens": splitter.tokens,
            "trailing_partial_document": partial,
            "tokens_before_first_bos": splitter.tokens_before_first_bos,
        }
        finalize_with_meta(builder, args.output_prefix, meta)
    return meta


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of data_tools.import_shards."""
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", required=True, choices=["c4_packed", "fineweb"], help="shard layout")
    parser.add_argument("--input", required=True, help="directory with the shards and meta.json")
    parser.add_argument("--output-prefix", required=True, help="writes OUT.bin, OUT.idx and OUT.meta.json")
    parser.add_argument("--split", choices=["train", "val"], default="train", help="fineweb split (default: train)")
    parser.add_argument("--eos-id", type=int, default=None, help="c4_packed: EOS id ending each document")
    parser.add_argument("--bos-id", type=int, default=None, help="fineweb: BOS id starting each document")
    parser.add_argument("--seq-len", type=int, default=None, help="c4_packed: block length minus one")
    parser.add_argument("--vocab-size", type=int, default=None, help="refuse token ids >= this")
    parser.add_argument("--dtype", choices=["uint16", "int32"], default=None, help="shard token dtype (default: meta or uint16)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: import the shards and print the totals."""
    args = build_parser().parse_args(argv)
    meta = import_shards(args)
    if meta["trailing_partial_document"]:
        print("warning: the last document has no final EOS (cut off by the packer); kept as is", file=sys.stderr)
    if meta["tokens_before_first_bos"]:
        print(f"warning: {meta['tokens_before_first_bos']} tokens before the first BOS kept as a document", file=sys.stderr)
    print(f"wrote {args.output_prefix}.bin/.idx: {meta['documents']} documents, {meta['tokens']} tokens "
          f"({meta['dtype']}) from {meta['imported_from']['shards']} shards")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
