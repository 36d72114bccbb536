"""Throughput and memory of ``data_tools.preprocess``: a shard directory in one command against
Megatron-LM's documented route, and single-file runs against raw ``Tokenizer.encode_batch``.

    python bench/preprocess_throughput.py --megatron-lm DIR [--workers 2] [--shards 64] [--shard-docs 1500]
                                          [--scales 1 4] [--max-files N] [--repeats 2]

Corpus: the Python standard library's own ``.py`` files (site-packages excluded), cut into
documents.  Tokenizer: a byte-level BPE (8k vocab) trained here on a sample of the same corpus,
so nothing is downloaded.

Shards (the issue's target): ``--shards`` C4-style ``c4-train.0000X-of-01024.json.gz`` files
(``text``, ``timestamp``, ``url``).  megaproc: ``python -m data_tools.preprocess --input DIR``,
one command.  Megatron-LM (``--megatron-lm``, a checkout whose tools run here, e.g. tag
``core_v0.13.0``): its ``tools/preprocess_data.py`` reads plain JSON lines only, so each shard
is decompressed, preprocessed, and ``tools/merge_datasets.py`` merges the outputs in sorted
order.  Same ``--workers``, one run each; the outputs must be byte-identical; the peak RSS of
each process tree (main + workers) is sampled.  Ratios are Megatron's wall time over ours, with
and without the decompression step.

Scales: end-to-end tokens/s of the preprocess CLI on one ``.jsonl`` file (process start to exit)
next to in-process ``encode_batch`` tokens/s on the same documents, and the peak RSS at each
scale (``--scales`` repeats the corpus k times).  Best of ``--repeats`` runs at scale 1.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MEGATRON_UNAVAILABLE = (
    "unavailable: the megatron-core wheel ships only megatron/core, not Megatron-LM's tools/preprocess_data.py "
    "and tools/merge_datasets.py; pass --megatron-lm DIR with a checkout to compare"
)


def stdlib_documents(max_files: int | None) -> list[str]:
    """Text of every stdlib ``.py`` file (sorted by path, site-packages excluded)."""
    root = sysconfig.get_paths()["stdlib"]
    paths = sorted(p for p in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
                   if "site-packages" not in p and "dist-packages" not in p)
    texts = []
    for path in paths[:max_files]:
        try:
            texts.append(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return texts


def train_tokenizer(texts: list[str], directory: Path) -> Path:
    """Train and save a byte-level BPE tokenizer directory (tokenizer.json + config)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts[::4], trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return directory


def write_corpus(texts: list[str], path: Path, repeats: int) -> int:
    """Write ``texts`` ``repeats`` times as JSON lines; return the file size in bytes."""
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(repeats):
            for text in texts:
                handle.write(json.dumps({"text": text}) + "\n")
    return path.stat().st_size


def raw_encode_batch(tokenizer_dir: Path, texts: list[str]) -> dict:
    """Tokens/s of one in-process ``encode_batch`` call over all non-empty texts."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    docs = [t for t in texts if t.strip()]  # preprocess skips empty documents too
    start = time.perf_counter()
    encodings = tokenizer.encode_batch(docs, add_special_tokens=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(e.ids) for e in encodings)
    return {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds)}


class TreeMemoryMonitor(threading.Thread):
    """Samples the summed RSS of a process and all its descendants until stopped."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        import psutil

        self._root = psutil.Process(pid)
        self._psutil = psutil
        self._interval = interval
        self._stop_event = threading.Event()
        self.peak_bytes = 0

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                processes = [self._root] + self._root.children(recursive=True)
            except self._psutil.Error:
                break
            total = 0
            for process in processes:
                try:
                    total += process.memory_info().rss
                except self._psutil.Error:
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop_event.wait(self._interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_measured(command: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, int]:
    """Run ``command``; return (wall seconds, peak RSS bytes of its process tree)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    monitor = TreeMemoryMonitor(process.pid)
    monitor.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - start
    monitor.stop()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): {stderr.strip()[-500:]}")
    return seconds, monitor.peak_bytes


def run_preprocess(corpus: Path, tokenizer_dir: Path, out_prefix: Path, workers: int, *extra: str) -> dict:
    """Time the preprocess CLI end to end and read its token count from the meta file."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "data_tools.preprocess", "--input", str(corpus), "--tokenizer",
               str(tokenizer_dir), "--output-prefix", str(out_prefix), "--workers", str(workers), *extra]
    seconds, peak = run_measured(command, env=env, cwd=REPO_ROOT)
    meta = json.loads(Path(f"{out_prefix}.meta.json").read_text())
    return {"seconds": round(seconds, 2), "tokens": meta["tokens"], "documents": meta["documents"],
            "tokens_per_s": round(meta["tokens"] / seconds), "peak_rss_mib": round(peak / 2**20, 1)}


def shard_documents(texts: list[str], count: int):
    """``count`` documents of 0.4-3.4 KB cut from ``texts`` at shifting offsets."""
    for k in range(count):
        source = texts[k % len(texts)]
        start = (k // len(texts)) * 97 % max(1, len(source) - 64)
        document = source[start : start + 400 + (k * 37) % 3000]
        # Whitespace-only documents differ between the tools (megaproc skips them as empty,
        # Megatron keeps their tokens), so the corpus has none.
        yield document if document.strip() else source


def write_shards(texts: list[str], directory: Path, shards: int, per_shard: int) -> int:
    """C4-layout ``c4-train.0000X-of-01024.json.gz`` shards; returns their total size in bytes."""
    directory.mkdir(parents=True)
    documents = shard_documents([t for t in texts if t.strip()], shards * per_shard)
    for shard in range(shards):
        with gzip.open(directory / f"c4-train.{shard:05d}-of-01024.json.gz", "wt", encoding="utf-8") as handle:
            for k in range(per_shard):
                record = {"text": next(documents), "timestamp": "2019-04-25T12:57:54Z",
                          "url": f"https://example.org/{shard}/{k}"}
                handle.write(json.dumps(record) + "\n")
    return sum(p.stat().st_size for p in directory.iterdir())


def run_megatron_route(megatron_dir: str | None, shard_dir: Path, tokenizer_dir: Path, work: Path, workers: int):
    """Megatron-LM's route: decompress each shard, tools/preprocess_data.py per file, tools/merge_datasets.py."""
    if not megatron_dir:
        return MEGATRON_UNAVAILABLE, None
    tools = Path(megatron_dir) / "tools"
    if not (tools / "preprocess_data.py").is_file():
        return f"unavailable: {tools / 'preprocess_data.py'} not found", None
    env = dict(os.environ, PYTHONPATH=str(megatron_dir))
    plain, parts = work / "megatron_plain", work / "megatron_parts"
    plain.mkdir()
    parts.mkdir()
    start = time.perf_counter()
    for shard in sorted(shard_dir.glob("*.json.gz")):
        with gzip.open(shard, "rb") as source, open(plain / shard.name.removesuffix(".gz"), "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
    decompress = time.perf_counter() - start
    seconds, peak = 0.0, 0
    for path in sorted(plain.glob("*.json")):
        command = [sys.executable, str(tools / "preprocess_data.py"), "--input", str(path), "--output-prefix",
                   str(parts / path.stem), "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                   str(tokenizer_dir), "--workers", str(workers), "--append-eod"]
        took, rss = run_measured(command, env=env)
        seconds, peak = seconds + took, max(peak, rss)
    merged = work / "megatron_merged"
    merge_seconds, merge_peak = run_measured([sys.executable, str(tools / "merge_datasets.py"), "--input", str(parts),
                                              "--output-prefix", str(merged)], env=env)
    total = decompress + seconds + merge_seconds
    return {"decompress_s": round(decompress, 2), "preprocess_per_file_s": round(seconds, 2),
            "merge_s": round(merge_seconds, 2), "total_s": round(total, 2),
            "peak_rss_mib": round(max(peak, merge_peak) / 2**20, 1)}, merged


def shards_comparison(args, texts: list[str], tokenizer_dir: Path, work: Path) -> dict:
    """megaproc on a shard directory in one command vs Megatron-LM per file + merge."""
    shard_dir = work / "c4" / "en"
    size = write_shards(texts, shard_dir, args.shards, args.shard_docs)
    ours = run_preprocess(shard_dir, tokenizer_dir, work / "megaproc_shards", args.workers, "--append-eod")
    ours["mb_per_s_compressed"] = round(size / 1e6 / ours["seconds"], 2)
    theirs, merged = run_megatron_route(args.megatron_lm, shard_dir, tokenizer_dir, work, args.workers)
    result = {"shards": args.shards, "documents_per_shard": args.shard_docs, "compressed_mb": round(size / 1e6, 1),
              "workers": args.workers, "megaproc_one_command": ours, "megatron_lm_per_file_then_merge": theirs}
    if merged is not None:
        identical = all(Path(f"{merged}{s}").read_bytes() == Path(f"{work / 'megaproc_shards'}{s}").read_bytes()
                        for s in (".bin", ".idx"))
        result["identical_bin_and_idx"] = identical
        result["speedup_megatron_over_megaproc"] = round(theirs["total_s"] / ours["seconds"], 2)
        result["speedup_without_decompression"] = round((theirs["total_s"] - theirs["decompress_s"]) / ours["seconds"], 2)
        result["target_2x_met"] = identical and result["speedup_megatron_over_megaproc"] >= 2.0
    result["megaproc_peak_rss_under_1_gib"] = ours["peak_rss_mib"] < 1024
    return result


def main() -> None:
    """Build the corpus and tokenizer, run every measurement, print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4], help="corpus repetitions to run")
    parser.add_argument("--max-files", type=int, default=None, help="use only the first N stdlib files")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement at scale 1; best is kept")
    parser.add_argument("--megatron-lm", default=None, help="Megatron-LM checkout to compare against")
    parser.add_argument("--shards", type=int, default=64, help="json.gz shards of the directory comparison")
    parser.add_argument("--shard-docs", type=int, default=1500, help="documents per shard")
    parser.add_argument("--work-dir", default=None, help="where to write corpus and outputs (default: temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.work_dir) as temp:
        work = Path(temp)
        texts = stdlib_documents(args.max_files)
        tokenizer_dir = train_tokenizer(texts, work / "tokenizer")
        report: dict = {"cpus": os.cpu_count(), "workers": args.workers, "load_average_start": os.getloadavg(),
                        "tokenizer": "byte-level BPE, vocab 8000, trained on the corpus"}
        sizes = {}
        for scale in args.scales:
            sizes[scale] = write_corpus(texts, work / f"corpus_x{scale}.jsonl", scale)
        report["corpus"] = {"documents": len(texts), "mb_x1": round(sizes[min(args.scales)] / min(args.scales) / 1e6, 1),
                            "source": "python stdlib .py files"}

        raw_runs, scale_results = [], {}
        for scale in args.scales:
            runs = args.repeats if scale == min(args.scales) else 1
            results = []
            for _ in range(runs):
                if scale == min(args.scales):
                    raw_runs.append(raw_encode_batch(tokenizer_dir, texts * scale))
                results.append(run_preprocess(work / f"corpus_x{scale}.jsonl", tokenizer_dir, work / f"out_x{scale}",
                                              args.workers))
            best = max(results, key=lambda r: r["tokens_per_s"])
            best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in results)
            best["input_mb"] = round(sizes[scale] / 1e6, 1)
            scale_results[f"x{scale}"] = best
        raw = max(raw_runs, key=lambda r: r["tokens_per_s"])
        raw["runs_tokens_per_s"] = [r["tokens_per_s"] for r in raw_runs]
        raw["threads"] = "tokenizers default (all cores)"
        report["raw_encode_batch_x1"] = raw
        report["preprocess"] = scale_results
        first = scale_results[f"x{min(args.scales)}"]
        assert first["tokens"] == raw["tokens"], "preprocess and raw encode_batch disagree on the token count"
        report["ratio_preprocess_over_raw"] = round(first["tokens_per_s"] / raw["tokens_per_s"], 3)
        peaks = [r["peak_rss_mib"] for r in scale_results.values()]
        report["peak_rss_mib_max"] = max(peaks)
        report["peak_rss_under_1_gib"] = max(peaks) < 1024
        report["peak_rss_growth_largest_over_smallest_scale"] = round(peaks[-1] / peaks[0], 3)
        report["shard_directory"] = shards_comparison(args, texts, tokenizer_dir, work)
        report["load_average_end"] = os.getloadavg()
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
