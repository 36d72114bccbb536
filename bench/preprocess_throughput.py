"""Throughput and memory of ``data_tools.preprocess`` against raw ``Tokenizer.encode_batch``.

    python bench/preprocess_throughput.py [--workers 2] [--scales 1 4] [--max-files N] [--repeats 2]
                                          [--megatron-lm DIR]

Corpus: the Python standard library's own ``.py`` files (site-packages excluded), one document
per file, written as JSON lines by this script; ``--scales`` repeats it k times.  Tokenizer: a
byte-level BPE (8k vocab) trained here on a sample of the same corpus, so nothing is downloaded.

Prints one JSON object: end-to-end tokens/s of the preprocess CLI (process start to exit,
including reading, JSON parsing, writing) next to in-process ``encode_batch`` tokens/s on the
same documents with the tokenizer's default threads, their ratio, and the peak RSS of the
preprocess process tree (main + workers) at each scale.  Best of ``--repeats`` runs is kept for
both sides because the machine may be shared.  Megatron-LM's ``tools/preprocess_data.py`` is
run only when ``--megatron-lm`` points at a checkout; otherwise it is reported as unavailable.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MEGATRON_UNAVAILABLE = (
    "unavailable: the megatron-core wheel on PyPI (checked with `pip download --no-deps megatron-core`, "
    "0.16.1) ships only the megatron/core package, not Megatron-LM's tools/preprocess_data.py, and this "
    "machine cannot clone Megatron-LM (no internet); pass --megatron-lm DIR with a checkout to compare"
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


def run_preprocess(corpus: Path, tokenizer_dir: Path, out_prefix: Path, workers: int) -> dict:
    """Time the preprocess CLI end to end and read its token count from the meta file."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "data_tools.preprocess", "--input", str(corpus), "--tokenizer",
               str(tokenizer_dir), "--output-prefix", str(out_prefix), "--workers", str(workers)]
    seconds, peak = run_measured(command, env=env, cwd=REPO_ROOT)
    meta = json.loads(Path(f"{out_prefix}.meta.json").read_text())
    return {"seconds": round(seconds, 2), "tokens": meta["tokens"], "documents": meta["documents"],
            "tokens_per_s": round(meta["tokens"] / seconds), "peak_rss_mib": round(peak / 2**20, 1)}


def run_megatron(megatron_dir: str | None, corpus: Path, tokenizer_dir: Path, out_prefix: Path, workers: int):
    """Megatron-LM tools/preprocess_data.py on the same corpus, when a checkout is given."""
    if not megatron_dir:
        return MEGATRON_UNAVAILABLE
    script = Path(megatron_dir) / "tools" / "preprocess_data.py"
    if not script.is_file():
        return f"unavailable: {script} not found"
    command = [sys.executable, str(script), "--input", str(corpus), "--output-prefix", str(out_prefix),
               "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tokenizer_dir),
               "--workers", str(workers), "--json-keys", "text"]
    env = dict(os.environ, PYTHONPATH=str(megatron_dir) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        seconds, peak = run_measured(command, env=env)
    except RuntimeError as exc:
        return f"unavailable: {exc}"
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(peak / 2**20, 1)}


def main() -> None:
    """Build the corpus and tokenizer, run every measurement, print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4], help="corpus repetitions to run")
    parser.add_argument("--max-files", type=int, default=None, help="use only the first N stdlib files")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement at scale 1; best is kept")
    parser.add_argument("--megatron-lm", default=None, help="Megatron-LM checkout to compare against")
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
        report["megatron_preprocess"] = run_megatron(args.megatron_lm, work / f"corpus_x{min(args.scales)}.jsonl",
                                                     tokenizer_dir, work / "megatron_out", args.workers)
        report["load_average_end"] = os.getloadavg()
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
