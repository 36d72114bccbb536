"""What running a study costs beyond its runs: ``python -m megaproc.study`` against the same
trainings and evaluations started by hand, in the same process environment.

The study is tiny (quickstart recipe, ``model.name=tiny``, ``--steps`` steps, one process):
a parent run and ``--arms`` arms that start from it, each evaluated on held-out graph-search
splits.  ``direct`` runs exactly the study's commands (``study_node.json`` gives each run's
overrides) one after another with ``subprocess``; ``study`` runs the spec with ``--parallel 1``
(config checks of every run, markers, evaluation, results.csv/md and plots included), then a
rerun of the finished study (``rerun``: what checking and skipping everything costs).  Prints
one JSON object: wall seconds of each and the ratios ``study / direct`` and ``rerun /
direct``.

    python bench/study_overhead.py [--steps 20] [--arms 2] [--out-dir DIR]
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
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
RUN = {"model.name": "tiny", "train.seq_len": 32, "train.micro_batch": 2, "log.log_every": 5,
       "eval.every": 10, "eval.max_batches": 2, "checkpoint.save_every": 0,
       "deepspeed.config": "ds_configs/zero0.json"}


def spec(steps: int, arms: int) -> dict:
    """splits -> base -> ``arms`` transfer arms, each evaluated on the test split."""
    run = {**RUN, "train.max_steps": steps}
    evaluate = {"split": "${splits}/test.jsonl", "max_examples": 16}
    groups = [["everything"], ["attn"], ["ffn"], ["ln"], ["embed"]]
    return {"name": "bench", "stages": [
        {"name": "splits", "splits": {"max_input_size": 26, "max_lookahead": 3, "seed": 1,
                                      "symbolic": True, "eval_size": 16, "test_size": 16,
                                      "mixin_size": 16}},
        {"name": "base", "recipe": "configs/quickstart.yaml", "overrides": run,
         "evaluate": evaluate},
        {"name": "arms", "recipe": "configs/quickstart.yaml", "from": "base", "overrides": run,
         "arms": {f"a{i}": {"model.weights_to_transfer": groups[i % len(groups)]}
                  for i in range(arms)},
         "evaluate": evaluate}]}


def timed(cmd: list[str], env: dict, log) -> float:
    """Wall seconds of ``cmd`` (which must succeed)."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def direct_commands(study_dir: Path) -> list[list[str]]:
    """The commands the study ran, from each node's study_node.json, in its order."""
    order = ["splits", "base/run"] + sorted(
        str(p.parent.relative_to(study_dir)) for p in study_dir.glob("arms/*/study_node.json"))
    commands = []
    for node_id in order:
        node = json.loads((study_dir / node_id / "study_node.json").read_text())
        if node["kind"] == "splits":
            continue  # built once by hand below, into the same place
        commands.append([sys.executable, str(REPO / "megaproc" / "train.py"), "--config",
                         node["recipe"], *node["overrides"]])
        for flags in node["evaluate"].values():
            commands.append([sys.executable, "-m", "megaproc.evaluate", "--checkpoint",
                             f"latest:{node['directory']}", *flags, "--no-progress"])
    return commands


def main() -> int:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--arms", type=int, default=2)
    parser.add_argument("--out-dir", help="work folder (default: a temporary one, removed)")
    args = parser.parse_args()
    work = Path(args.out_dir or tempfile.mkdtemp(prefix="study_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    spec_path = work / "study.yaml"
    spec_path.write_text(yaml.safe_dump(spec(args.steps, args.arms), sort_keys=False))
    study_dir = work / "study"
    shutil.rmtree(study_dir, ignore_errors=True)
    command = [sys.executable, "-m", "megaproc.study", str(spec_path), "--out-dir",
               str(study_dir), "--no-progress"]
    with open(work / "bench.log", "w") as log:
        study = timed(command, env, log)
        rerun = timed(command, env, log)
        # The same runs by hand, into fresh run folders (the study's own are finished).
        for node_json in study_dir.glob("*/*/study_node.json"):
            run_dir = node_json.parent
            for item in run_dir.iterdir():
                if item.name not in ("study_node.json",):
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
        direct = sum(timed(cmd, env, log) for cmd in direct_commands(study_dir))
    result = {"runs": 1 + args.arms, "steps": args.steps, "seconds": {
        "direct": round(direct, 2), "study": round(study, 2), "rerun": round(rerun, 2)},
        "study_over_direct": round(study / direct, 3),
        "rerun_over_direct": round(rerun / direct, 3)}
    print(json.dumps(result, indent=2))
    if not args.out_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
