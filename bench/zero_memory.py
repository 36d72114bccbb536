"""ZeRO-3 memory per rank: one optimizer step of qwen3-0.6b on 2 ranks vs ZeRO-0 on one.

Both runs use megaproc's own builders (``build_ds_config``, ``build_model`` -- under
``zero.Init`` for ZeRO-3, so the whole model never exists on one rank -- and ``build_engine``)
and take one forward/backward/optimizer step on random tokens on CPU, in bf16 mixed precision
as on GPUs (bf16 weights and gradients, fp32 master weights and Adam moments; ``--precision
fp32`` for plain fp32).  Memory is the process's peak resident set (``ru_maxrss``); the ratio
uses the peak *above* each process's resident set just before the model is built (imports and
the process group, the same in every process, excluded); absolute peaks and per-phase peaks
are printed too.  Prints JSON; target: ZeRO-3 per-rank peak <= 0.6 x the ZeRO-0 peak.

    python bench/zero_memory.py [--vocab-size 8192 --seq-len 256 --micro-batch 1]
    python bench/zero_memory.py --overrides num_hidden_layers=14     # half the layers

Memory needed: about 20 bytes per parameter for ZeRO-0 (~9 GB for the 448M parameters of
qwen3-0.6b's layers with the default 8192-token vocabulary), then about 9 per parameter on
each of the two ZeRO-3 ranks.  ``--vocab-size 151936`` is the published vocabulary (+3 GB);
``--overrides num_hidden_layers=N`` fits smaller machines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET = 0.6
ZERO3_BUFFERS = {"reduce_bucket_size": 50_000_000, "stage3_prefetch_bucket_size": 50_000_000,
                 "sub_group_size": 10_000_000}


def rss_bytes() -> int:
    """Current resident set of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(args) -> None:
    """One rank: build, take one step, write this rank's figures to ``args.out``."""
    import torch

    from megaproc import distributed as dist_utils
    from megaproc.config import load_config
    from megaproc.engine import build_ds_config, build_engine
    from megaproc.models import build_model

    dist_utils.init_distributed()
    cfg = load_config(None, [
        f"run.out_dir={tempfile.mkdtemp(prefix='bench_zero_memory_')}",
        f"model.name={args.model}", f"train.seq_len={args.seq_len}",
        f"train.micro_batch={args.micro_batch}", "train.grad_accum=1", "train.precision=fp32",
        f"deepspeed.config={args.ds_config if args.zero == 3 else 'ds_configs/zero0.json'}",
        "model.dropout=0.0",
        f"model.config_overrides={args.overrides!r}"])
    ds_config = build_ds_config(cfg, dist_utils.world_size())
    if args.zero == 3:
        # DeepSpeed's defaults size the gradient bucket (5e8 elements) and the optimizer
        # sub-groups (1e9) for big GPU jobs; for a 0.6B model those fixed buffers alone would
        # be most of a rank's memory, so the benchmark sizes them for the model.
        ds_config["zero_optimization"].update(ZERO3_BUFFERS)
    if args.precision == "bf16":
        # megaproc trains fp32 on CPU (train.precision=auto); the benchmark mirrors GPU
        # training instead: bf16 weights and gradients, fp32 master weights and Adam moments.
        ds_config["bf16"], ds_config["fp16"] = {"enabled": True}, {"enabled": False}
    dist_utils.barrier()
    baseline = rss_bytes()
    torch.manual_seed(0)
    model = build_model(cfg.model, args.vocab_size, zero3_init=args.zero == 3, ds_config=ds_config)
    params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    engine = build_engine(cfg, model, ds_config)
    engine = engine[0] if isinstance(engine, tuple) else engine  # (engine, schedule) today
    phases = {"built": peak_rss_bytes() - baseline}
    generator = torch.Generator().manual_seed(1 + dist_utils.rank())
    ids = torch.randint(0, args.vocab_size, (args.micro_batch, args.seq_len), generator=generator)
    loss = engine(input_ids=ids, labels=ids).loss
    phases["forward"] = peak_rss_bytes() - baseline
    engine.backward(loss)
    phases["backward"] = peak_rss_bytes() - baseline
    engine.step()
    phases["step"] = peak_rss_bytes() - baseline
    phases["after_step_current"] = rss_bytes() - baseline
    dist_utils.barrier()
    record = {"rank": dist_utils.rank(), "params": int(params), "loss": float(loss),
              "baseline_rss_bytes": baseline, "peak_rss_bytes": peak_rss_bytes(),
              "peak_above_baseline_by_phase": phases}
    record["peak_above_baseline_bytes"] = record["peak_rss_bytes"] - baseline
    Path(args.out, f"rank{dist_utils.rank()}.json").write_text(json.dumps(record))


def measure(zero: int, ranks: int, args) -> list[dict]:
    """Launch the worker for ZeRO ``zero`` on ``ranks`` processes; its per-rank records."""
    from megaproc.distributed import free_port

    out = tempfile.mkdtemp(prefix=f"zero{zero}_")
    me = [str(Path(__file__).resolve()), "--worker", "--zero", str(zero), "--out", out,
          "--model", args.model, "--vocab-size", str(args.vocab_size),
          "--seq-len", str(args.seq_len), "--micro-batch", str(args.micro_batch),
          "--precision", args.precision, "--overrides", args.overrides,
          "--ds-config", args.ds_config]
    port = free_port()
    if ranks == 1:
        cmd = [sys.executable, *me]
    else:
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
               "--master_port", str(port), *me]
    # glibc raises its mmap threshold as large blocks are freed (up to 32 MiB) and then keeps
    # freed tensors in the heap, so the resident set would count dead memory; a fixed
    # threshold returns every freed tensor buffer to the OS, in both runs alike.
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    # DeepSpeed's CPU shared-memory all-reduce never unlinks its buffers (see launch/lib.sh).
    for leftover in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_127.0.0.1_{port}_*"):
        leftover.unlink(missing_ok=True)
    files = sorted(Path(out).glob("rank*.json"))
    if proc.returncode != 0 or len(files) != ranks:
        raise RuntimeError(f"ZeRO-{zero} x{ranks} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return [json.loads(f.read_text()) for f in files]


def main() -> None:
    """Run ZeRO-0 on one rank, then ZeRO-3 on two, and print the comparison as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen3-0.6b")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--ds-config", default="ds_configs/zero3.json",
                        help="DeepSpeed config of the ZeRO-3 run")
    parser.add_argument("--overrides", default="",
                        help="model.config_overrides, e.g. num_hidden_layers=14 on a small machine")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--zero", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    zero0 = measure(0, 1, args)[0]
    zero3 = measure(3, 2, args)
    worst = max(zero3, key=lambda r: r["peak_above_baseline_bytes"])
    ratio = worst["peak_above_baseline_bytes"] / zero0["peak_above_baseline_bytes"]
    print(json.dumps({
        "benchmark": "zero_memory", "model": args.model, "params": zero0["params"],
        "overrides": args.overrides, "zero3_ds_config": args.ds_config,
        "zero3_buffer_settings": ZERO3_BUFFERS, "vocab_size": args.vocab_size,
        "seq_len": args.seq_len, "micro_batch": args.micro_batch,
        "precision": args.precision, "zero0_single_rank": zero0, "zero3_two_ranks": zero3,
        "ratio": ratio,
        "ratio_absolute_rss": max(r["peak_rss_bytes"] for r in zero3) / zero0["peak_rss_bytes"],
        "target": TARGET, "meets_target": ratio <= TARGET,
    }, indent=2))


if __name__ == "__main__":
    main()
