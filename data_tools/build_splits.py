"""Build held-out graph-search splits: eval, test and mixin ``.jsonl`` files plus ``meta.json``.

    python -m data_tools.build_splits --out-dir DIR --max-input-size 384 --max-lookahead 64 \\
        --seed 12345 [--eval-size 2000 --test-size 5000 --mixin-size 50000] [--symbolic] \\
        [--workers N] [--overwrite]

writes ``DIR/mis{n}_look{L}_seed{seed}[_symbolic]/{eval,test,mixin}.jsonl`` and ``meta.json``
(parameters, counts, lookahead histograms and the sha256 of each file).  Examples come from
``GraphSearchGenerator(n, L, seed, stream_id=1)`` at the final curriculum stage (alpha = 1.0),
index 0, 1, 2, ...; they are assigned in index order to eval, then test, then mixin, skipping
rejected draws and any prompt already used, so prompts never repeat within or across splits.
The output is identical for any ``--workers``.  Everything is written to a temporary directory
that is renamed into place when complete; an existing split directory is only replaced with
``--overwrite``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from collections import Counter, deque
from multiprocessing import get_context

from megaproc.synthetic.graph_search import MIN_INPUT_SIZE, GraphSearchGenerator
from megaproc.files import sha256_file
from megaproc.synthetic.splits import split_dir_name

SPLITS = ("eval", "test", "mixin")
SPLIT_STREAM_ID = 1          # held-out splits never share the training stream (stream_id 0)
CHUNK_SIZE = 256             # indices per worker task
MAX_STALL = 100_000          # give up after this many indices without a new unique prompt
META_FORMAT_VERSION = 1


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are a single line on stderr (exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (dashes or underscores in option names)."""
    parser = _OneLineParser(prog="python -m data_tools.build_splits",
                            description="Build non-overlapping eval/test/mixin graph-search splits.")
    parser.add_argument("--out-dir", "--out_dir", required=True, help="parent directory of the split dir")
    parser.add_argument("--max-input-size", "--max_input_size", type=int, default=384,
                        help="symbolic input size n (default 384)")
    parser.add_argument("--max-lookahead", "--max_lookahead", type=int, default=64,
                        help="curriculum stages; splits use the last one (default 64)")
    parser.add_argument("--seed", type=int, default=12345, help="generator seed (default 12345)")
    parser.add_argument("--eval-size", "--eval_size", type=int, default=2000)
    parser.add_argument("--test-size", "--test_size", type=int, default=5000)
    parser.add_argument("--mixin-size", "--mixin_size", type=int, default=50000)
    parser.add_argument("--symbolic", action="store_true", help="symbolic token form instead of natural language")
    parser.add_argument("--workers", type=int, default=1, help="generator processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing split directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _validate(args) -> None:
    if args.max_input_size < MIN_INPUT_SIZE:
        raise ValueError(f"--max-input-size must be at least {MIN_INPUT_SIZE} (got {args.max_input_size})")
    if args.max_lookahead < 1:
        raise ValueError(f"--max-lookahead must be >= 1 (got {args.max_lookahead})")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0 (got {args.seed})")
    for name in ("eval_size", "test_size", "mixin_size"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(args, name)})")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1 (got {args.workers})")


# -- generation (runs in worker processes too) ---------------------------------------------------
_GENERATOR: GraphSearchGenerator | None = None


def _make_generator(max_input_size: int, max_lookahead: int, seed: int, symbolic: bool,
                    quiet: bool) -> GraphSearchGenerator:
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        return GraphSearchGenerator(max_input_size, max_lookahead, seed,
                                    natural_language=not symbolic, stream_id=SPLIT_STREAM_ID)


def _init_worker(*settings) -> None:
    global _GENERATOR
    _GENERATOR = _make_generator(*settings, quiet=True)


def _generate_chunk(first_index: int, generator: GraphSearchGenerator | None = None) -> tuple:
    """``(first_index, items)`` with one ``(index, prompt sha1, lookahead, json line)`` item per
    accepted index of the chunk."""
    generator = generator or _GENERATOR
    stage = generator.num_stages
    out = []
    for index in range(first_index, first_index + CHUNK_SIZE):
        example = generator.example(index, stage)
        if example is None:
            continue
        digest = hashlib.sha1(example.prompt.encode("utf-8")).digest()
        line = json.dumps(example.to_json(), ensure_ascii=False, separators=(",", ":"))
        out.append((index, digest, example.lookahead, line))
    return first_index, out


def _chunks(generator, workers: int, settings: tuple):
    """Chunks of generated examples in index order (in-process, or from a worker pool that
    keeps at most ``2 * workers`` chunks in flight)."""
    first = 0
    if workers == 1:
        while True:
            yield _generate_chunk(first, generator)
            first += CHUNK_SIZE
    with get_context("spawn").Pool(workers, initializer=_init_worker, initargs=settings) as pool:
        pending = deque()
        while True:
            while len(pending) < 2 * workers:
                pending.append(pool.apply_async(_generate_chunk, (first,)))
                first += CHUNK_SIZE
            yield pending.popleft().get()


def build_splits(out_dir: str, max_input_size: int = 384, max_lookahead: int = 64, seed: int = 12345,
                 eval_size: int = 2000, test_size: int = 5000, mixin_size: int = 50000,
                 symbolic: bool = False, workers: int = 1, overwrite: bool = False,
                 progress: bool = True, max_stall: int = MAX_STALL) -> str:
    """Write the three splits and ``meta.json``; returns the split directory.

    Raises ``FileExistsError`` if a split directory is already there and ``overwrite`` is
    false, ``ValueError`` on bad parameters, and ``RuntimeError`` (leaving nothing behind) if
    ``max_stall`` consecutive indices bring no new unique prompt, i.e. the task at this input
    size has too few distinct examples for the requested sizes.
    """
    args = argparse.Namespace(max_input_size=max_input_size, max_lookahead=max_lookahead, seed=seed,
                              eval_size=eval_size, test_size=test_size, mixin_size=mixin_size,
                              workers=workers)
    _validate(args)
    final_dir = os.path.join(out_dir, split_dir_name(max_input_size, max_lookahead, seed, symbolic))
    if os.path.exists(final_dir) and not overwrite:
        state = "complete" if os.path.exists(os.path.join(final_dir, "meta.json")) else "incomplete"
        raise FileExistsError(f"{final_dir} already exists ({state}); pass --overwrite to replace it")
    os.makedirs(out_dir, exist_ok=True)
    tmp_dir = f"{final_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)

    settings = (max_input_size, max_lookahead, seed, symbolic)
    generator = _make_generator(*settings, quiet=False)      # warns once about the cap, if any
    sizes = {"eval": eval_size, "test": test_size, "mixin": mixin_size}
    total = sum(sizes.values())
    order = [name for name in SPLITS for _ in range(sizes[name])]   # split of the k-th unique example
    counts = Counter()
    histograms = {name: Counter() for name in SPLITS}
    seen: set[bytes] = set()
    files = {name: open(os.path.join(tmp_dir, f"{name}.jsonl"), "w", encoding="utf-8") for name in SPLITS}
    bar = None
    if progress and total:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="ex", desc=os.path.basename(final_dir))
    started = time.time()
    written = duplicates = consumed = 0
    chunks = _chunks(generator, workers, settings)
    try:
        while written < total:
            first, chunk = next(chunks)
            if first + CHUNK_SIZE - consumed > max_stall:
                raise RuntimeError(
                    f"only {written} distinct examples found for {total} requested: no new prompt "
                    f"in {max_stall} indices (too few distinct graphs at max_input_size={max_input_size}"
                    f"{', symbolic' if symbolic else ''}); request smaller splits")
            for index, digest, lookahead, line in chunk:
                if digest in seen:
                    duplicates += 1
                    continue
                seen.add(digest)
                split = order[written]
                files[split].write(line + "\n")
                counts[split] += 1
                histograms[split][lookahead] += 1
                written += 1
                consumed = index + 1
                if bar is not None:
                    bar.update(1)
                if written == total:
                    break
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        chunks.close()
        for f in files.values():
            f.close()
        if bar is not None:
            bar.close()
    rejected = consumed - written - duplicates

    meta = {
        "format_version": META_FORMAT_VERSION,
        "task": "graph_search",
        "form": "symbolic" if symbolic else "natural_language",
        "generator": generator.config(),
        "stage": generator.num_stages,
        "alpha": 1.0,
        "max_lookahead_drawn": generator.max_lookahead_for_stage(generator.num_stages),
        "requested": sizes,
        "counts": {name: counts[name] for name in SPLITS},
        "indices_consumed": consumed,
        "skipped": {"rejected": rejected, "duplicate_prompt": duplicates},
        "lookahead_histogram": {name: {str(k): histograms[name][k] for k in sorted(histograms[name])}
                                for name in SPLITS},
        "files": {name: f"{name}.jsonl" for name in SPLITS},
        "sha256": {name: sha256_file(os.path.join(tmp_dir, f"{name}.jsonl")) for name in SPLITS},
        "build_seconds": round(time.time() - started, 2),
    }
    with open(os.path.join(tmp_dir, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")

    if os.path.exists(final_dir):                       # only reached with overwrite=True
        old_dir = f"{final_dir}.old-{os.getpid()}"
        os.rename(final_dir, old_dir)
        os.rename(tmp_dir, final_dir)
        shutil.rmtree(old_dir, ignore_errors=True)
    else:
        os.rename(tmp_dir, final_dir)
    return final_dir


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"warning: {message}\n"
    try:
        split_dir = build_splits(args.out_dir, args.max_input_size, args.max_lookahead, args.seed,
                                 args.eval_size, args.test_size, args.mixin_size, args.symbolic,
                                 args.workers, args.overwrite, progress=not args.no_progress)
    except (ValueError, FileExistsError, RuntimeError, OSError) as error:
        parser.error(str(error))
    with open(os.path.join(split_dir, "meta.json"), encoding="utf-8") as f:
        counts = json.load(f)["counts"]
    print(f"wrote {split_dir}: " + ", ".join(f"{name} {counts[name]}" for name in SPLITS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
