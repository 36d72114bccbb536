"""MFU of a CPU training run against this machine's measured fp32 matmul peak.

Three measurements in one run, all with the same number of threads:
1. the peak: the best fp32 ``torch.mm`` throughput over a few square sizes (2 n^3 FLOPs each);
2. megaproc: the real trainer (``megaproc/train.py``, one process, built-in corpus), tokens/s
   from its ``logs/train.jsonl`` after the warm-up steps; its own logged ``mfu`` (with
   ``train.peak_flops`` set to the measured peak) is reported next to the one computed here;
3. a plain PyTorch loop (same model config, AdamW, random tokens): what the model itself
   reaches here, the baseline for megaproc's loop.
MFU = tokens/s x model FLOPs per token (``megaproc.flops.model_flops_per_token``) / peak.
Prints JSON.

    python bench/mfu.py [--model gpt2:4_4_256 --seq-len 256 --micro-batch 8 --steps 20 --threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def matmul_peak(threads: int, sizes=(256, 512, 1024, 2048), repeats: int = 5) -> dict:
    """Best fp32 matmul FLOP/s per size with ``threads`` threads, and their maximum."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        out[str(n)] = 2 * n**3 / best
    return {"per_size": out, "peak": max(out.values())}


def megaproc_run(args, peak: float) -> dict:
    """The real trainer, one process; tokens/s and logged mfu after the warm-up steps."""
    from transformers import AutoConfig

    run_dir = Path(tempfile.mkdtemp(prefix="bench_mfu_")) / "run"
    steps = args.warmup + args.steps
    cmd = [sys.executable, str(REPO / "megaproc" / "train.py"), "--config",
           str(REPO / "configs" / "quickstart.yaml"), f"run.out_dir={run_dir}",
           f"model.name={args.model}", f"train.seq_len={args.seq_len}",
           f"train.micro_batch={args.micro_batch}", "train.grad_accum=1",
           f"train.max_steps={steps}", "log.log_every=1", "log.progress=false", "eval.every=0",
           "eval.at_end=false", "checkpoint.save_every=0", "checkpoint.save_final=true",
           "checkpoint.resume=none", "deepspeed.config=ds_configs/zero0.json",
           f"train.peak_flops={peak}", "model.dropout=0.0"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"trainer failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-2000:]}")
    log_lines = (run_dir / "logs" / "train.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in log_lines]
    timed = [r for r in records if r["step"] > args.warmup]
    final = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    hf_config = AutoConfig.from_pretrained(final / "hf_config")
    logged = [r["mfu"] for r in timed if r.get("mfu") is not None]
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
            "logged_mfu": statistics.median(logged) if logged else None,
            "hf_config": hf_config}


def torch_loop(hf_config, args) -> float:
    """tokens/s of a plain forward/backward/AdamW loop of the same model."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, hf_config.vocab_size, (args.micro_batch, args.seq_len))

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return args.micro_batch * args.seq_len / statistics.median(times)


def main() -> None:
    """Measure the peak, the trainer and the plain loop; print the JSON report."""
    from megaproc.flops import mfu, model_flops_per_token

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2:4_4_256")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = parser.parse_args()

    peak = matmul_peak(args.threads)
    trainer = megaproc_run(args, peak["peak"])
    per_token = model_flops_per_token(trainer["hf_config"], args.seq_len)
    plain = torch_loop(trainer["hf_config"], args)
    ours = mfu(trainer["tokens_per_s"], per_token, peak["peak"])
    base = mfu(plain, per_token, peak["peak"])
    print(json.dumps({
        "benchmark": "mfu", "model": args.model, "seq_len": args.seq_len,
        "micro_batch": args.micro_batch, "threads": args.threads, "precision": "fp32",
        "flops_per_token": per_token, "fp32_matmul_flops": peak,
        "megaproc": {"tokens_per_s": trainer["tokens_per_s"], "mfu": ours,
                     "mfu_logged_by_trainer": trainer["logged_mfu"]},
        "torch_loop": {"tokens_per_s": plain, "mfu": base},
        "megaproc_vs_torch_loop": ours / base,
    }, indent=2))


if __name__ == "__main__":
    main()
