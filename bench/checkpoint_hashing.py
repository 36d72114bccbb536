"""Save-time cost of checkpoint manifests (sizes + xxh3_128 hashes), against a plain save.

For each model, ranks build a real ZeRO-2 engine (megaproc's builders, fp32 on CPU), take one
optimizer step (so the Adam state exists), then alternate, ``--repeats`` times:

- ``plain``: the save before manifests, step for step -- ``engine.save_checkpoint``, every
  rank's RNG file, the model config and tokenizer, an fsync of every file and directory by
  local rank 0, the trainer state and ``COMPLETE`` (fsynced), the rename into place;
- ``megaproc``: :meth:`megaproc.checkpoint.Checkpointer.save` (each rank hashes its files while
  writing them and fsyncs them, rank 0 hashes the rest and writes the manifest).

The time spent inside the hash function during a megaproc save is measured directly (the
hasher is wrapped with a timer for the benchmark; the slowest rank counts).  The resume-time
check (:meth:`Checkpointer.verify`, ranks share the files) is timed with hashes and with
sizes only.  Prints JSON per model: ``hash_fraction_of_save`` (hashing / megaproc save) and
``save_ratio`` (megaproc / plain save), medians over the repeats.  Target: hashing < 10% of a
save.

    python bench/checkpoint_hashing.py [--models tiny,quickstart,100M] [--ranks 2] [--repeats 3]

Disk: each repeat writes two checkpoints (~1.8 GB each for the 100M model) under ``--dir``
(default: a temporary directory on the same filesystem as /tmp); they are deleted as it goes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> (model.name, vocabulary size): the test model, the quickstart recipe's own model,
# and GPT-2 small's shape with a 20480-token vocabulary (~102M parameters).
MODELS = {"tiny": ("tiny", 2048), "quickstart": ("gpt2:2_4_128", 2048), "100M": ("gpt2", 20480)}
TARGET = 0.10


class TimedHasher:
    """Wraps a hash state; adds the time of every ``update`` to a shared counter."""

    total = 0.0

    def __init__(self, inner):
        self.inner = inner

    def update(self, data) -> None:
        start = time.perf_counter()
        self.inner.update(data)
        TimedHasher.total += time.perf_counter() - start

    def hexdigest(self) -> str:
        return self.inner.hexdigest()


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def plain_save(engine, tmp: Path, final: Path, state: dict, hf_config, tokenizer) -> None:
    """The save before manifests, step for step: DeepSpeed, RNG, config, tokenizer; local rank
    0 fsyncs every file and directory; rank 0 writes the trainer state and COMPLETE (fsynced)
    and renames the directory in."""
    import torch

    from megaproc import distributed as dist_utils
    from megaproc.checkpoint.checkpointer import rng_state
    from megaproc.checkpoint.layout import fsync_directories, publish
    from megaproc.files import fsync_dir

    engine.save_checkpoint(str(tmp), tag="ds")
    (tmp / "rng").mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), tmp / "rng" / f"rank_{dist_utils.rank():05d}.pt")
    if dist_utils.is_main():
        hf_config.save_pretrained(str(tmp / "hf_config"))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
    dist_utils.barrier()
    if dist_utils.local_rank() == 0:
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directories(tmp)
    dist_utils.barrier()
    if dist_utils.is_main():
        _write_synced(tmp / "trainer_state.json", json.dumps(state, indent=2))
        _write_synced(tmp / "COMPLETE", "ok\n")
        fsync_dir(tmp)
        publish(tmp, final)
    dist_utils.barrier()


def tiny_tokenizer(vocab_size: int):
    """A real fast tokenizer (word level) to save with each checkpoint."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, "w0")))


def worker(args) -> None:
    """One rank: build the engine, step once, time the saves; rank 0 writes the JSON."""
    import torch

    import megaproc.checkpoint.manifest as manifest
    from megaproc import distributed as dist_utils
    from megaproc.checkpoint import Checkpointer
    from megaproc.config import load_config
    from megaproc.engine import build_ds_config, build_engine
    from megaproc.models import build_model

    dist_utils.init_distributed()
    name, vocab = MODELS[args.model]
    work = Path(args.dir)
    cfg = load_config(REPO / "configs" / "quickstart.yaml", [
        f"run.out_dir={work / 'run'}", f"model.name={name}", "train.seq_len=64",
        "train.micro_batch=1", "train.grad_accum=1", "train.precision=fp32", "model.dropout=0.0"])
    ds_config = build_ds_config(cfg, dist_utils.world_size())
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab)
    params = sum(p.numel() for p in model.parameters())
    engine, _ = build_engine(cfg, model, ds_config)
    ids = torch.randint(0, vocab, (1, 64), generator=torch.Generator().manual_seed(1))
    engine.backward(engine(input_ids=ids, labels=ids).loss)
    engine.step()
    tokenizer = tiny_tokenizer(vocab)
    real_hasher = manifest.new_hasher
    manifest.new_hasher = lambda: TimedHasher(real_hasher())  # benchmark instrumentation
    checkpointer = Checkpointer(work / "run", keep_last_k=0)
    state = {"geometry": {}, "settings": {}}
    runs = {"plain_save_s": [], "save_s": [], "hashing_in_save_s": [],
            "verify_hashes_s": [], "verify_sizes_s": []}
    size = 0
    for repeat in range(args.repeats):
        plain = work / "plain" / f"step_{repeat:08d}"
        # Alternate which save goes first, so neither always meets the other's page cache
        # and write-back.
        for kind in (("plain", "megaproc") if repeat % 2 == 0 else ("megaproc", "plain")):
            dist_utils.barrier()
            TimedHasher.total = 0.0
            start = time.perf_counter()
            if kind == "plain":
                plain_save(engine, plain.with_name(f".tmp_{plain.name}"), plain, state,
                           model.config, tokenizer)
                runs["plain_save_s"].append(time.perf_counter() - start)
                continue
            path = checkpointer.save(repeat + 1, engine, state, model.config, tokenizer)
            runs["save_s"].append(time.perf_counter() - start)
            hashing = torch.tensor([TimedHasher.total], dtype=torch.float64)
            torch.distributed.all_reduce(hashing, op=torch.distributed.ReduceOp.MAX)
            runs["hashing_in_save_s"].append(float(hashing))
        for mode in ("hashes", "sizes"):
            checkpointer.verify_hashes = mode == "hashes"
            dist_utils.barrier()
            start = time.perf_counter()
            assert checkpointer.verify(path) is None
            runs[f"verify_{mode}_s"].append(time.perf_counter() - start)
        size = sum(e["size"] for e in manifest.read_manifest(path).values())
        dist_utils.barrier()
        if dist_utils.is_main():
            shutil.rmtree(plain)
            shutil.rmtree(path)
    if dist_utils.is_main():
        med = {key: statistics.median(values) for key, values in runs.items()}
        record = {"model": args.model, "model_name": name, "params": params,
                  "ranks": dist_utils.world_size(), "checkpoint_mb": round(size / 1e6, 1),
                  "repeats": args.repeats, **{k: round(v, 4) for k, v in med.items()},
                  "each_plain_save_s": [round(v, 3) for v in runs["plain_save_s"]],
                  "each_save_s": [round(v, 3) for v in runs["save_s"]],
                  "hash_fraction_of_save": round(med["hashing_in_save_s"] / med["save_s"], 4),
                  "save_ratio": round(med["save_s"] / med["plain_save_s"], 3),
                  "hash_gb_per_s": round(size / 1e9 / max(med["hashing_in_save_s"], 1e-9)
                                         * dist_utils.world_size(), 2)}
        Path(args.out).write_text(json.dumps(record))


def measure(model: str, args) -> dict:
    """Launch the worker for ``model`` on ``args.ranks`` processes; rank 0's record."""
    from megaproc.distributed import free_port

    work = Path(tempfile.mkdtemp(prefix=f"ckpt_hashing_{model}_", dir=args.dir))
    out = work / "result.json"
    me = [str(Path(__file__).resolve()), "--worker", "--model", model, "--out", str(out),
          "--dir", str(work), "--repeats", str(args.repeats)]
    port = free_port()
    if args.ranks == 1:
        cmd = [sys.executable, *me]
    else:
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(args.ranks),
               "--master_port", str(port), *me]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{model} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-3000:]}")
        return json.loads(out.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for leftover in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
            leftover.unlink(missing_ok=True)


def main() -> None:
    """Measure every model and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,quickstart,100M",
                        help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the checkpoints are written")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    results = [measure(model, args) for model in args.models.split(",")]
    worst = max(r["hash_fraction_of_save"] for r in results)
    print(json.dumps({"benchmark": "checkpoint_hashing", "target_hash_fraction": TARGET,
                      "worst_hash_fraction": worst, "meets_target": worst < TARGET,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
