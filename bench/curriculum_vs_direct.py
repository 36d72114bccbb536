"""The curriculum result at CPU scale: accuracy-gated lookahead curriculum vs direct training.

The same tiny model (``configs/pptrain_cpu.yaml``), the same number of steps and the same
examples per step are trained twice on the symbolic graph-search task, each by the real
trainer in its own single-process subprocess:

``curriculum``
    ``curriculum.enabled=true``, stages ``1..max_lookahead`` (stage ``s`` draws lookaheads
    ``0..s``), advancing when the window accuracy reaches the recipe's threshold; the run ends
    at ``--steps`` or when the last stage is passed (then it used fewer steps, reported).
``direct``
    ``curriculum.enabled=false`` with the stream fixed at the last stage
    (``curriculum.start_stage=max_lookahead``: lookaheads uniform in ``0..max_lookahead``
    from the first step), and a held-out evaluation every ``--eval-every`` steps.

Both start from the same seed.  Held-out splits come from ``python -m data_tools.build_splits``
(their prompts never appear in training); at the end each run's last checkpoint is evaluated
on ``test.jsonl`` per lookahead with ``python -m megaproc.evaluate``.  Prints one JSON object:
the settings, and per run the steps trained, the wall time, the stage over steps (from
``logs/train.jsonl``), the held-out evaluations of ``logs/eval.jsonl`` and the test accuracy by
lookahead, and their ratios curriculum / direct (``curriculum_over_direct``).

    python bench/curriculum_vs_direct.py [--max-input-size 26 --max-lookahead 3 --steps 3000]
                                         [--micro-batch 64] [--out-dir DIR] [KEY=VALUE ...]

The default ``--micro-batch 64`` on one process is the recipe's global batch on two ranks
(32 x 2); 3,000 steps (the recipe's curriculum ends after about 2,000-3,000 on two ranks).

Extra ``KEY=VALUE`` overrides go to both runs.  A run that fails (e.g. while the trainer is
being changed) is retried after ``--retry-wait`` seconds, up to ``--retries`` times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "pptrain_cpu.yaml"


def run(cmd: list[str], log_path: Path) -> int:
    """Run ``cmd`` in the repository with its output appended to ``log_path``; the exit code."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        return subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def build_splits(args, out: Path) -> Path:
    """Held-out eval/test splits at the last stage (no mixin)."""
    cmd = [sys.executable, "-m", "data_tools.build_splits", "--out-dir", str(out / "data"),
           "--max-input-size", str(args.max_input_size), "--max-lookahead", str(args.max_lookahead),
           "--seed", str(args.task_seed), "--symbolic", "--eval-size", str(args.eval_size),
           "--test-size", str(args.test_size), "--mixin-size", "0", "--no-progress", "--overwrite"]
    if run(cmd, out / "splits.log") != 0:
        raise SystemExit(f"error: building the splits failed (see {out / 'splits.log'})")
    name = f"mis{args.max_input_size}_look{args.max_lookahead}_seed{args.task_seed}_symbolic"
    return out / "data" / name


def train(name: str, args, out: Path, split_dir: Path, overrides: list[str]) -> dict:
    """One training run (retried on failure); its wall time and attempts."""
    run_dir = out / name
    cmd = [sys.executable, str(REPO / "megaproc" / "train.py"), "--config", str(args.config),
           f"run.out_dir={run_dir}", "log.progress=false", f"train.max_steps={args.steps}",
           f"train.micro_batch={args.micro_batch}", "train.grad_accum=1",
           f"checkpoint.save_every={args.steps}", "checkpoint.resume=none",
           f"task.max_input_size={args.max_input_size}", f"task.max_lookahead={args.max_lookahead}",
           "task.natural_language=false", f"task.seed={args.task_seed}",
           f"task.splits_dir={split_dir}", f"task.eval_subset_size={args.eval_size}",
           *overrides, *args.overrides]
    for attempt in range(1, args.retries + 2):
        shutil.rmtree(run_dir, ignore_errors=True)
        begin = time.perf_counter()
        code = run(cmd, out / f"{name}.log")
        wall = time.perf_counter() - begin
        if code == 0:
            return {"wall_s": round(wall, 1), "attempts": attempt}
        print(f"[bench] {name}: exit code {code} (attempt {attempt}); see {out / f'{name}.log'}",
              file=sys.stderr, flush=True)
        if attempt <= args.retries:
            time.sleep(args.retry_wait)
    raise SystemExit(f"error: the {name} run failed {args.retries + 1} times")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def stage_over_steps(train_log: list[dict]) -> list[list[int]]:
    """``[step, stage]`` at the first log step of every stage, and at the last log step."""
    points: list[list[int]] = []
    for record in train_log:
        stage = record.get("stage")
        if stage is not None and (not points or points[-1][1] != stage):
            points.append([record["step"], stage])
    if train_log and train_log[-1].get("stage") is not None and points[-1][0] != train_log[-1]["step"]:
        points.append([train_log[-1]["step"], train_log[-1]["stage"]])
    return points


def accuracy_by_lookahead(run_dir: Path, split: Path, out: Path) -> dict:
    """Greedy-answer accuracy of the run's last checkpoint on ``split`` per lookahead (and all)."""
    by_lookahead: dict[int, list[str]] = defaultdict(list)
    with open(split, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                by_lookahead[int(json.loads(line)["lookahead"])].append(line if line.endswith("\n") else line + "\n")
    parts = out / "test_by_lookahead"
    parts.mkdir(exist_ok=True)
    result, correct, total = {}, 0.0, 0
    for lookahead in sorted(by_lookahead):
        path = parts / f"L{lookahead}.jsonl"
        path.write_text("".join(by_lookahead[lookahead]), encoding="utf-8")
        cmd = [sys.executable, "-m", "megaproc.evaluate", "--checkpoint", f"latest:{run_dir}",
               "--split", str(path), "--no-progress"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
        if proc.returncode != 0:
            raise SystemExit(f"error: evaluating {run_dir} failed: {proc.stderr.strip()[-500:]}")
        metrics = json.loads(proc.stdout)["split"]
        result[str(lookahead)] = {"accuracy": round(metrics["heldout_acc"], 4),
                                  "num_examples": metrics["num_examples"]}
        correct += metrics["heldout_acc"] * metrics["num_examples"]
        total += metrics["num_examples"]
    result["all"] = {"accuracy": round(correct / max(total, 1), 4), "num_examples": total}
    return result


def resolved_settings(run_dir: Path) -> dict:
    """The recipe values that matter here, from the run's resolved ``config.yaml``."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    model, train, curr = cfg.get("model", {}), cfg.get("train", {}), cfg.get("curriculum", {})
    return {"model": model.get("name"), "config_overrides": model.get("config_overrides"),
            "lr": cfg.get("optim", {}).get("lr"), "loss": train.get("loss"),
            "micro_batch": train.get("micro_batch"), "grad_accum": train.get("grad_accum"),
            "curriculum": {k: curr.get(k) for k in ("enabled", "start_stage", "curr_window",
                                                    "curr_check_every", "curr_threshold")}}


def ratios(curriculum: dict, direct: dict) -> dict:
    """Curriculum over direct (the baseline of the same run): test accuracy per lookahead and
    overall, and wall time (``None`` where the direct value is 0)."""
    def ratio(a, b):
        return None if a is None or not b else round(a / b, 4)

    acc_c = curriculum["test_accuracy_by_lookahead"]
    acc_d = direct["test_accuracy_by_lookahead"]
    return {"test_accuracy": {k: ratio(acc_c[k]["accuracy"], acc_d[k]["accuracy"])
                              for k in acc_c if k in acc_d},
            "wall_s": ratio(curriculum.get("wall_s"), direct.get("wall_s"))}


def summarize(name: str, out: Path, split_dir: Path, timing: dict) -> dict:
    run_dir = out / name
    train_log = read_jsonl(run_dir / "logs" / "train.jsonl")
    eval_log = read_jsonl(run_dir / "logs" / "eval.jsonl")
    settings = resolved_settings(run_dir)
    stages = stage_over_steps(train_log)
    if not stages:            # no curriculum: the stream stays at its start stage
        stages = [[0, settings["curriculum"]["start_stage"]]]
    keep = ("step", "stage", "event", "heldout_acc", "num_examples")
    return {
        "settings": settings,
        "steps_trained": train_log[-1]["step"] if train_log else 0,
        "examples_trained": train_log[-1].get("samples") if train_log else 0,
        **timing,
        "final_stage": stages[-1][1],
        "completed": any(e.get("event") == "completed" for e in eval_log),
        "stage_over_steps": stages,
        "window_acc_over_steps": [[r["step"], round(r["curr_acc"], 3)] for r in train_log
                                  if r.get("curr_acc") is not None][::max(1, len(train_log) // 20)],
        "heldout_eval": [{k: (round(e[k], 4) if isinstance(e.get(k), float) else e.get(k))
                          for k in keep if k in e} for e in eval_log],
        "test_accuracy_by_lookahead": accuracy_by_lookahead(run_dir, split_dir / "test.jsonl", run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(RECIPE), help="recipe of both runs")
    parser.add_argument("--max-input-size", type=int, default=26)
    parser.add_argument("--max-lookahead", type=int, default=3)
    parser.add_argument("--task-seed", type=int, default=12345)
    parser.add_argument("--steps", type=int, default=3000, help="train.max_steps of both runs")
    parser.add_argument("--micro-batch", type=int, default=64, help="train.micro_batch of both runs")
    parser.add_argument("--eval-every", type=int, default=500,
                        help="held-out eval period of the direct run (steps)")
    parser.add_argument("--eval-size", type=int, default=300, help="eval.jsonl examples")
    parser.add_argument("--test-size", type=int, default=2000, help="test.jsonl examples")
    parser.add_argument("--out-dir", default=None, help="work directory (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp work directory")
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--retry-wait", type=float, default=180.0)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="extra trainer overrides for both runs")
    args = parser.parse_args(argv)

    begin = time.perf_counter()
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="curriculum_vs_direct_")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        split_dir = build_splits(args, out)
        timing = {
            "curriculum": train("curriculum", args, out, split_dir,
                                ["curriculum.enabled=true", "curriculum.start_stage=1"]),
            "direct": train("direct", args, out, split_dir,
                            ["curriculum.enabled=false",
                             f"curriculum.start_stage={args.max_lookahead}",
                             f"task.eval_every={args.eval_every}"]),
        }
        runs = {name: summarize(name, out, split_dir, timing[name]) for name in timing}
        result = {
            "benchmark": "curriculum_vs_direct",
            "setting": {"form": "symbolic", "max_input_size": args.max_input_size,
                        "max_lookahead": args.max_lookahead, "steps": args.steps,
                        "recipe": os.path.relpath(args.config, REPO), "overrides": args.overrides,
                        "processes": 1, "micro_batch": args.micro_batch,
                        "test_examples": args.test_size},
            "runs": runs,
            "curriculum_over_direct": ratios(runs["curriculum"], runs["direct"]),
            "wall_s": round(time.perf_counter() - begin, 1),
            "out_dir": str(out),
        }
        print(json.dumps(result, indent=2))
    finally:
        if args.out_dir is None and not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
