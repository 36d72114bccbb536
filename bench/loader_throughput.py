"""GPTDataset throughput and index-build cost, next to megatron-core's GPTDataset; prints JSON.

Measures, in fresh subprocesses so peak memory is per measurement:

- random-access samples/s of :class:`megaproc.data.GPTDataset` at seq_len 256 and 2048 on an
  indexed file generated here (default 50k documents, ~20M tokens);
- index build time and peak RSS for a 20-million-document ``.idx`` (sparse ``.bin``), and the
  cache-hit load time of the same dataset;
- time to assign 10M blended samples to sources (exact vectorised rule vs the plain loop);
- the same GPTDataset measurements for megatron-core's GPTDataset, run with the interpreter of a separate venv
  (``--megatron-venv``, default ``/tmp/mc_venv``; created with ``--system-site-packages`` and
  ``pip install --no-deps megatron-core`` when ``--setup-megatron`` is given).  megatron-core
  is never imported by megaproc; when it cannot run, the JSON says
  ``"megatron": "unavailable: <reason>"``.

Megatron's ``__getitem__`` also builds torch tensors, loss masks and position ids, so both its
full ``__getitem__`` and its token fetch (``_query_document_sample_shuffle_indices``) are
reported; the token fetch is the like-for-like comparison with ours.

    python bench/loader_throughput.py [--docs 20000000] [--workdir /tmp/megaproc_loader_bench]
                                      [--setup-megatron] [--megatron-venv /tmp/mc_venv]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

SEQ_LENS = (256, 2048)
BIG_SEQ_LEN = 2048

MEGATRON_RUNNER = r'''
import json, os, resource, sys, time, warnings
warnings.filterwarnings("ignore")
import logging
logging.disable(logging.WARNING)
import numpy
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.utils import Split

class Tok:  # the attributes megatron's GPTDataset reads from its tokenizer
    vocab_size = 32000
    eod = 0
    pad = 1
    unique_identifiers = {"class": "Tok"}

def vm_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def make(prefix, seq_len, cache):
    cfg = GPTDatasetConfig(random_seed=1234, sequence_length=seq_len, blend=([prefix], None),
                           split="1,0,0", path_to_cache=cache, tokenizer=Tok(),
                           reset_position_ids=False, reset_attention_mask=False,
                           eod_mask_loss=False, create_attention_mask=False)
    indexed = GPTDataset.build_low_level_dataset(prefix, cfg)
    indices = numpy.arange(len(indexed.sequence_lengths), dtype=numpy.int32)
    return GPTDataset(indexed, prefix, indices, None, Split.train, cfg)

mode, prefix, seq_len, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if mode == "build":
    before = vm_rss_mb()
    t0 = time.perf_counter(); ds = make(prefix, seq_len, cache); dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"build_s": dt, "rss_before_mb": before, "peak_rss_mb": peak, "samples": len(ds)}))
elif mode == "load":
    t0 = time.perf_counter(); ds = make(prefix, seq_len, cache); dt = time.perf_counter() - t0
    print(json.dumps({"cache_hit_load_s": dt, "samples": len(ds)}))
else:
    count = int(sys.argv[5])
    ds = make(prefix, seq_len, cache)
    idx = numpy.random.default_rng(0).integers(0, len(ds), count)
    for i in idx[:100]:
        ds._query_document_sample_shuffle_indices(int(i))
    t0 = time.perf_counter()
    for i in idx:
        ds._query_document_sample_shuffle_indices(int(i))
    fetch = count / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in idx:
        ds[int(i)]
    full = count / (time.perf_counter() - t0)
    print(json.dumps({"token_fetch_samples_per_s": fetch, "getitem_samples_per_s": full}))
'''


def vm_rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------------------- data files
def write_access_corpus(prefix: str, docs: int) -> dict:
    """Random uint16 documents (lognormal lengths, mean ~400 tokens) via the builder."""
    from megaproc.data.indexed import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(5.5, 0.8, docs), 8, 8000).astype(np.int64)
    tokens = rng.integers(0, 50000, int(lengths.sum()), dtype=np.uint16)
    with IndexedDatasetBuilder(prefix, dtype=np.uint16) as builder:
        start = 0
        for n in lengths:
            builder.add_document(tokens[start:start + n])
            start += n
    return {"documents": docs, "tokens": int(lengths.sum())}


def write_sparse_corpus(prefix: str, docs: int) -> dict:
    """A ``docs``-document ``.idx`` written directly, with a sparse ``.bin`` of matching size."""
    from megaproc.data.indexed import HEADER_STRUCT, MAGIC, VERSION

    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 200, docs, dtype=np.int32)
    with open(prefix + ".idx", "wb") as handle:
        handle.write(HEADER_STRUCT.pack(MAGIC, VERSION, 8, docs, docs + 1))
        handle.write(lengths.tobytes())
        pointers = np.zeros(docs, dtype=np.int64)
        np.cumsum(lengths[:-1].astype(np.int64) * 2, out=pointers[1:])
        handle.write(pointers.tobytes())
        del pointers
        handle.write(np.arange(docs + 1, dtype=np.int64).tobytes())
    total = int(lengths.sum(dtype=np.int64))
    with open(prefix + ".bin", "wb") as handle:
        handle.truncate(total * 2)
    return {"documents": docs, "tokens": total, "bin_bytes_sparse": total * 2}


# ----------------------------------------------------------------------------- our side
def child_ours(args) -> dict:
    """Runs in a fresh process: one measurement of megaproc's GPTDataset."""
    from megaproc.data.gpt_dataset import GPTDataset
    from megaproc.data.indexed import IndexedDataset

    if args.child == "build":
        before = vm_rss_mb()
        t0 = time.perf_counter()
        ds = GPTDataset(IndexedDataset(args.prefix), args.seq_len, None, 1234, cache_dir=args.cache)
        dt = time.perf_counter() - t0
        assert ds.built_index
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"build_s": dt, "rss_before_mb": before, "peak_rss_mb": peak, "samples": len(ds)}
    if args.child == "load":
        t0 = time.perf_counter()
        ds = GPTDataset(IndexedDataset(args.prefix), args.seq_len, None, 1234, cache_dir=args.cache)
        dt = time.perf_counter() - t0
        assert not ds.built_index
        return {"cache_hit_load_s": dt, "samples": len(ds)}
    ds = GPTDataset(IndexedDataset(args.prefix), args.seq_len, None, 1234, cache_dir=args.cache)
    idx = np.random.default_rng(0).integers(0, len(ds), args.count)
    for i in idx[:100]:
        ds[int(i)]
    t0 = time.perf_counter()
    for i in idx:
        ds[int(i)]
    return {"getitem_samples_per_s": args.count / (time.perf_counter() - t0)}


def blend_timing(samples: int) -> dict:
    """Time the exact vectorised blend assignment against the plain loop (on 1M samples)."""
    from megaproc.data.blended import interleave, interleave_reference

    out = {"samples": samples}
    for name, weights in (("0.95/0.05", [0.95, 0.05]), ("0.5/0.3/0.2", [0.5, 0.3, 0.2])):
        t0 = time.perf_counter()
        interleave(weights, samples)
        fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        interleave_reference(weights, 1_000_000)
        loop_per_million = time.perf_counter() - t0
        out[name] = {"vectorised_s": fast, "plain_loop_s_estimate": loop_per_million * samples / 1e6}
    return out


def run_json(cmd: list[str], timeout: int = 1800) -> dict:
    """Run ``cmd`` and parse the last stdout line as JSON (raises with stderr on failure)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{os.path.basename(cmd[0])} exited {proc.returncode}: {tail[0]}")
    return json.loads(lines[-1])


def ours(mode: str, prefix: str, seq_len: int, cache: str, count: int = 0) -> dict:
    return run_json([sys.executable, os.path.abspath(__file__), "--child", mode, "--prefix", prefix,
                     "--seq-len", str(seq_len), "--cache", cache, "--count", str(count)])


# ----------------------------------------------------------------------------- megatron side
def megatron_python(venv: str, setup: bool) -> str:
    """Interpreter of a venv where megatron-core imports, or raise with the reason."""
    python = os.path.join(venv, "bin", "python")
    probe = [python, "-c", "import megatron.core.datasets.gpt_dataset, megatron.core.datasets.helpers_cpp"]
    if not os.path.exists(python):
        if not setup:
            raise RuntimeError(f"no venv at {venv} (run with --setup-megatron)")
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
    if subprocess.run(probe, capture_output=True).returncode != 0:
        if not setup:
            raise RuntimeError(f"megatron-core does not import in {venv} (run with --setup-megatron)")
        pip = subprocess.run([python, "-m", "pip", "install", "--no-deps", "megatron-core"],
                             capture_output=True, text=True)
        if pip.returncode != 0:
            raise RuntimeError("pip install megatron-core failed: " + pip.stderr.strip().splitlines()[-1])
        check = subprocess.run(probe, capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError("megatron-core installed but does not import: "
                               + check.stderr.strip().splitlines()[-1])
    return python


def megatron(python: str, runner: str, mode: str, prefix: str, seq_len: int, cache: str,
             count: int = 0) -> dict:
    return run_json([python, runner, mode, prefix, str(seq_len), cache, str(count)])


def best(runs: list[dict]) -> dict:
    """Best of repeated runs: highest ``*_per_s``, lowest ``*_s`` times, lowest peak RSS."""
    if any("error" in r for r in runs):
        return next(r for r in runs if "error" in r)
    out = dict(runs[0])
    for key in out:
        values = [r[key] for r in runs]
        if key.endswith("_per_s"):
            out[key] = max(values)
        elif key.endswith("_s") or key.endswith("_mb"):
            out[key] = min(values)
    out["repeats"] = len(runs)
    return out


def megatron_version(python: str) -> str:
    out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('megatron-core'))"],
                         capture_output=True, text=True)
    return out.stdout.strip()


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000_000, help="documents in the big .idx")
    parser.add_argument("--access-docs", type=int, default=50_000, help="documents in the access corpus")
    parser.add_argument("--samples", type=int, default=20000, help="random reads per access measurement")
    parser.add_argument("--workdir", default="/tmp/megaproc_loader_bench")
    parser.add_argument("--megatron-venv", default="/tmp/mc_venv")
    parser.add_argument("--setup-megatron", action="store_true", help="create the venv / install megatron-core")
    parser.add_argument("--skip-megatron", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement (best is kept)")
    parser.add_argument("--blend-samples", type=int, default=10_000_000, help="size of the timed blend")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_ours(args)))
        return

    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    small, big = os.path.join(args.workdir, "access"), os.path.join(args.workdir, "big")
    result: dict = {"cpu_count": os.cpu_count()}
    t0 = time.perf_counter()
    result["access_corpus"] = write_access_corpus(small, args.access_docs)
    result["big_corpus"] = write_sparse_corpus(big, args.docs)
    result["big_corpus"]["write_s"] = time.perf_counter() - t0

    # Every measurement runs `--repeats` times, alternating megaproc and megatron so both see
    # the same machine load; the best run of each is reported (the machine may be shared).
    theirs_python, runner, theirs_error = None, os.path.join(args.workdir, "megatron_runner.py"), None
    if args.skip_megatron:
        theirs_error = "skipped (--skip-megatron)"
    else:
        try:
            theirs_python = megatron_python(args.megatron_venv, args.setup_megatron)
            with open(runner, "w") as handle:
                handle.write(MEGATRON_RUNNER)
        except Exception as exc:  # noqa: BLE001 - reported honestly in the JSON
            theirs_error = str(exc)

    def measure(mode: str, prefix: str, seq_len: int, tag: str, count: int = 0):
        mine_runs, theirs_runs = [], []
        for repeat in range(args.repeats):
            cache_ours = os.path.join(args.workdir, f"ours_{tag}_{repeat}")
            cache_theirs = os.path.join(args.workdir, f"mc_{tag}_{repeat}")
            if mode == "build":  # build, then a cache hit on the same cache
                run = ours("build", prefix, seq_len, cache_ours)
                run.update(ours("load", prefix, seq_len, cache_ours))
            else:
                run = ours(mode, prefix, seq_len, cache_ours, count)
            mine_runs.append(run)
            if theirs_python is not None:
                try:
                    run = megatron(theirs_python, runner, mode, prefix, seq_len, cache_theirs, count)
                    if mode == "build":
                        run.update(megatron(theirs_python, runner, "load", prefix, seq_len, cache_theirs))
                    theirs_runs.append(run)
                except Exception as exc:  # noqa: BLE001
                    theirs_runs.append({"error": str(exc)})
            for cache in (cache_ours, cache_theirs):
                shutil.rmtree(cache, ignore_errors=True)
        return best(mine_runs), best(theirs_runs) if theirs_runs else None

    mine: dict = {}
    theirs: dict = {}
    for seq_len in SEQ_LENS:
        count = args.samples if seq_len <= 256 else max(1000, args.samples // 4)
        key = f"random_access_seq{seq_len}"
        mine[key], theirs[key] = measure("access", small, seq_len, key, count)
    mine["index_20m_docs"], theirs["index_20m_docs"] = measure("build", big, BIG_SEQ_LEN, "big")
    mine["blend_index"] = blend_timing(args.blend_samples)
    result["megaproc"] = mine
    if theirs_error is not None:
        result["megatron"] = f"unavailable: {theirs_error}"
    elif any("error" in v for v in theirs.values()):
        result["megatron"] = "unavailable: " + next(v["error"] for v in theirs.values() if "error" in v)
    else:
        theirs["version"] = megatron_version(theirs_python)
        result["megatron"] = theirs
        ratios = {}
        for seq_len in SEQ_LENS:
            key = f"random_access_seq{seq_len}"
            ratios[f"{key}_ours_over_megatron_token_fetch"] = (
                mine[key]["getitem_samples_per_s"] / theirs[key]["token_fetch_samples_per_s"])
            ratios[f"{key}_ours_over_megatron_getitem"] = (
                mine[key]["getitem_samples_per_s"] / theirs[key]["getitem_samples_per_s"])
        big_mine, big_theirs = mine["index_20m_docs"], theirs["index_20m_docs"]
        ratios["index_build_time_megatron_over_ours"] = big_theirs["build_s"] / big_mine["build_s"]
        ratios["index_build_peak_rss_delta_megatron_over_ours"] = (
            (big_theirs["peak_rss_mb"] - big_theirs["rss_before_mb"])
            / (big_mine["peak_rss_mb"] - big_mine["rss_before_mb"]))
        result["ratios"] = ratios
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
