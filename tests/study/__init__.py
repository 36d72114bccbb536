"""Tests of python -m megaproc.study: tiny study specs written into a temporary folder."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")

# A tiny run of the quickstart recipe: 2-layer model, 32-token samples, one process, a few
# steps, validation every 2 steps (val_loss curves for tokens_to_target) and a final checkpoint.
TINY = {"model.name": "tiny", "train.seq_len": 32, "train.micro_batch": 2,
        "train.grad_accum": 1, "train.max_steps": 4, "log.log_every": 1, "eval.every": 2,
        "eval.max_batches": 2, "schedule.warmup_steps": 1, "optim.lr": 5e-3,
        "checkpoint.save_every": 0, "checkpoint.keep_last_k": 1, "deepspeed.config":
        "ds_configs/zero0.json"}
# Symbolic graph-search splits small enough to build in a fraction of a second.
SPLITS = {"max_input_size": 26, "max_lookahead": 3, "seed": 12345, "symbolic": True,
          "eval_size": 16, "test_size": 16, "mixin_size": 32}
EVALUATE = {"split": "${splits}/test.jsonl", "max_examples": 8, "batch_size": 8}


def two_arm_spec(target: float | None = 9.0, **base_overrides) -> dict:
    """splits -> one shared base run -> 2 arms (everything, attn) x 2 seeds, each evaluated on
    the splits' test set."""
    spec = {"name": "tiny", "stages": [
        {"name": "splits", "splits": dict(SPLITS)},
        {"name": "base", "recipe": QUICKSTART, "overrides": {**TINY, **base_overrides},
         "evaluate": dict(EVALUATE)},
        {"name": "arms", "recipe": QUICKSTART, "from": "base", "seeds": [1, 2],
         "overrides": dict(TINY),
         "arms": {"everything": {"model.weights_to_transfer": ["everything"]},
                  "attn": {"model.weights_to_transfer": ["attn"]}},
         "evaluate": dict(EVALUATE)}]}
    if target is not None:
        spec["target_val_loss"] = target
    return spec


def write_spec(path: Path, spec: dict) -> Path:
    """Write ``spec`` as YAML; returns the path."""
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def study_env(**extra) -> dict:
    """Environment of a study subprocess: this worktree first on the path, one thread."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


def study_command(spec: Path, out: Path, *flags: str) -> list[str]:
    """``python -m megaproc.study SPEC --out-dir OUT --no-progress FLAGS``."""
    return [sys.executable, "-m", "megaproc.study", str(spec), "--out-dir", str(out),
            "--no-progress", *flags]


def run_study(spec: Path, out: Path, *flags: str, timeout: int = 900,
              **env) -> subprocess.CompletedProcess:
    """Run a study to its end."""
    return subprocess.run(study_command(spec, out, *flags), cwd=REPO, env=study_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV file."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def flat_numbers(obj, prefix: str = "") -> dict:
    """Numbers of a JSON object by dotted path, written here independently of the code under
    test."""
    out = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out.update(flat_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def launches(run_dir: Path) -> int:
    """How many times a run's command was started (one ``=== `` line per start)."""
    log = Path(run_dir) / "stdout.log"
    if not log.is_file():
        return 0
    return sum(line.startswith("=== ") for line in log.read_text().splitlines())


def eval_json(run_dir: Path) -> dict:
    """A run's eval.json."""
    return json.loads((Path(run_dir) / "eval.json").read_text())
