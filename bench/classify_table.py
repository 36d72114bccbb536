"""Do small transformers trained from scratch on a few hundred examples of a boolean function
generalize?  Runs the CPU classification sweep and prints final train/test accuracy per function
and length, as JSON and as a table.

    python bench/classify_table.py [--sweep configs/classify/sweep_cpu.yaml] [--parallel 1]
                                   [--out DIR]

The baseline of the same run is chance: every data set is exactly balanced, so a model that has
learned nothing scores 0.5 on test; ``test_over_chance`` is test accuracy / 0.5, and
``generalization_gap`` is train minus test accuracy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHANCE = 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default=str(REPO / "configs" / "classify" / "sweep_cpu.yaml"))
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--out", default=None, help="results root (default: a temporary dir)")
    args = parser.parse_args()
    spec = yaml.safe_load(Path(args.sweep).read_text())
    root = Path(args.out or tempfile.mkdtemp(prefix="classify_table_"))
    spec["results_root"] = str(root)
    sweep_file = root / "sweep.yaml"
    root.mkdir(parents=True, exist_ok=True)
    sweep_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "megaproc.sweep", str(sweep_file),
                           "--parallel", str(args.parallel)], cwd=REPO, capture_output=True,
                          text=True)
    wall = time.time() - started
    if proc.returncode not in (0, 1):  # 1 = some job failed; its row says so
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        return proc.returncode
    rows = []
    for job_dir in sorted(p for p in (root / spec["experiment_name"]).iterdir() if p.is_dir()):
        config = json.loads((job_dir / "config.json").read_text()) if (job_dir / "config.json").is_file() else {}
        point = config.get("args", {})
        metrics_file = job_dir / "metrics.json"
        if not metrics_file.is_file():
            rows.append({"job": job_dir.name, "target_func": point.get("target_func"),
                         "sequence_length": point.get("sequence_length"), "status": "failed"})
            continue
        m = json.loads(metrics_file.read_text())
        train_acc, test_acc = m["train_acc"][-1], m["test_acc"][-1]
        rows.append({"job": job_dir.name, "target_func": point.get("target_func"),
                     "sequence_length": point.get("sequence_length"), "status": "done",
                     "epochs": m["epoch"][-1], "train_acc": train_acc, "test_acc": test_acc,
                     "train_loss": m["train_loss"][-1], "test_loss": m["test_loss"][-1],
                     "test_over_chance": test_acc / CHANCE,
                     "generalization_gap": train_acc - test_acc})
    result = {"sweep": str(args.sweep), "model": spec["base_args"].get("model"),
              "train_set_size": spec["base_args"].get("train_set_size"),
              "test_set_size": spec["base_args"].get("test_set_size"),
              "baseline": {"chance_test_acc": CHANCE}, "wall_time_s": round(wall, 1),
              "results": rows}
    print(json.dumps(result, indent=2))
    header = f"{'function':<10}{'L':>4}{'train_acc':>11}{'test_acc':>10}{'gap':>8}"
    print(header, file=sys.stderr)
    for r in rows:
        if r["status"] != "done":
            print(f"{r['target_func']!s:<10}{r['sequence_length']!s:>4}   failed", file=sys.stderr)
            continue
        print(f"{r['target_func']:<10}{r['sequence_length']:>4}{r['train_acc']:>11.3f}"
              f"{r['test_acc']:>10.3f}{r['generalization_gap']:>8.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
