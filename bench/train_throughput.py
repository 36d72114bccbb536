"""Training throughput: megaproc's loop vs a plain DeepSpeed loop vs plain PyTorch AdamW.

Same model, batch geometry, data and ranks (1 and 2), all measured in this one run; prints
JSON with tokens/s and the ratios.  Target: megaproc >= 0.95x the plain DeepSpeed loop.

    python bench/train_throughput.py [--model gpt2:4_4_256 --seq-len 256 --steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megaproc.distributed import free_port  # noqa: E402


def measure(mode: str, ranks: int, passthrough: list[str]) -> float:
    """tokens/s of one mode at ``ranks`` processes (a fresh launch)."""
    worker = str(REPO / "bench" / "_train_worker.py")
    if ranks == 1:
        cmd = [sys.executable, worker]
    else:
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
               "--master_port", str(free_port()), worker]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // ranks)))
    proc = subprocess.run(cmd + ["--mode", mode, *passthrough], cwd=REPO, env=env,
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if "BENCH_RESULT " in line:
            return json.loads(line.split("BENCH_RESULT ", 1)[1])["tokens_per_s"]
    raise RuntimeError(f"{mode} x{ranks} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the modes this many times")
    args, passthrough = parser.parse_known_args()
    results = {}
    for ranks in [int(r) for r in args.ranks.split(",")]:
        rates = {"megaproc": [], "deepspeed": [], "torch": []}
        for _ in range(args.repeats):
            for mode in rates:
                rates[mode].append(measure(mode, ranks, passthrough))
        best = {mode: max(values) for mode, values in rates.items()}
        results[f"ranks_{ranks}"] = {
            "tokens_per_s": best,
            "megaproc_vs_deepspeed": best["megaproc"] / best["deepspeed"],
            "megaproc_vs_torch": best["megaproc"] / best["torch"],
            "target_megaproc_vs_deepspeed": 0.95,
        }
    print(json.dumps({"benchmark": "train_throughput", "settings": passthrough or "defaults",
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
