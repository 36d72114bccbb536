"""Speed of the CPU pre-pretraining recipe: task vocabulary + sliced head vs BPE + full logits.

The recipe of ``python -m megaproc.pipeline`` (``configs/pptrain_cpu.yaml``) runs twice through
its whole curriculum on the same machine, in one invocation, each by the real trainer under the
deepspeed launcher on ``--nproc`` CPU ranks:

``before``
    ``task.tokenizer=data train.sliced_head=false``: the built-in BPE (some vertex ids are two
    tokens) and the LM head over every position;
``after``
    the recipe as shipped: the task vocabulary (one token per symbol) and the head only where
    the loss and the curriculum's correctness check read.

Per run: optimizer steps, the step at which each curriculum stage was passed (``passed_stage``
records of ``logs/eval.jsonl``) and the seconds to it, the held-out accuracy of each record,
examples/s and s/step over the training records (held-out evaluations included), and the wall
time of the launch.  ``after_over_before`` holds the ratios (``examples_per_s`` > 1 is faster;
``steps_to_stage`` < 1 is fewer steps).  Then the plain LM recipe (``configs/quickstart.yaml``,
``train.loss: mean``, where nothing is sliced) runs ``--lm-steps`` steps with
``train.sliced_head`` false and true: its ``s_per_step`` ratio shows the change costs nothing
where it does not apply.  The machine's load average is recorded before and after (other
processes inflate wall times; steps are not affected).

    python bench/pptrain_speed.py [--nproc 2] [--out-dir DIR] [--max-steps N] [--lm-steps 100]
                                  [KEY=VALUE ...]

``--max-steps`` bounds both curriculum runs (default: the recipe's ``train.max_steps``; the
``before`` run needs about 3,000 steps to finish, the ``after`` run about 1,200): a stage not
passed by then is absent from ``steps_to_stage`` and ``completed`` is false.  Extra
``KEY=VALUE`` overrides go to both pre-pretraining runs (e.g. ``run.seed=2``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megaproc.files import read_jsonl  # noqa: E402
from megaproc.pipeline import run_logged, split_settings, step_splits, train_command  # noqa: E402

RECIPE = REPO / "configs" / "pptrain_cpu.yaml"
LM_RECIPE = REPO / "configs" / "quickstart.yaml"
VARIANTS = {"after": [], "before": ["task.tokenizer=data", "train.sliced_head=false"]}


def timed_run(name: str, config: Path, overrides: list[str], out: Path, nproc: int) -> float:
    """Launch one training run (its console goes to ``out/logs``); the wall seconds."""
    begin = time.perf_counter()
    # run_logged echoes the trainer's [megaproc] lines: keep them off stdout (the JSON).
    with contextlib.redirect_stdout(sys.stderr):
        run_logged(train_command(nproc, str(config), overrides), out / "logs" / f"{name}.log", name)
    return time.perf_counter() - begin


def pace(records: list[dict], start: float | None = None) -> dict:
    """Steps, examples/s and s/step from train.jsonl records (from ``start`` if given)."""
    first, last = records[0], records[-1]
    begin = start if start is not None else first["timestamp"]
    steps = last["step"] - (0 if start is not None else first["step"])
    samples = last["samples"] - (0 if start is not None else first["samples"])
    seconds = max(last["timestamp"] - begin, 1e-9)
    return {"steps": last["step"], "train_s": round(seconds, 1),
            "examples_per_s": round(samples / seconds, 1), "s_per_step": round(seconds / steps, 4)}


def curriculum_run(name: str, args, split_dir: Path, out: Path) -> dict:
    """One pre-pretraining run through the curriculum and what its logs say."""
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    bound = [f"train.max_steps={args.max_steps}"] if args.max_steps else []
    wall = timed_run(name, RECIPE, [f"run.out_dir={run_dir}", f"task.splits_dir={split_dir}",
                                    "log.progress=false", *VARIANTS[name], *args.overrides,
                                    *bound], out, args.nproc)
    evals = read_jsonl(run_dir / "logs" / "eval.jsonl")
    start = evals[0]["timestamp"]  # the step-0 held-out evaluation, just before step 1
    passed = [e for e in evals if e.get("passed_stage") is not None]
    return {**pace(read_jsonl(run_dir / "logs" / "train.jsonl"), start), "wall_s": round(wall, 1),
            "completed": any(e.get("event") == "completed" for e in evals),
            "steps_to_stage": {str(e["passed_stage"]): e["step"] for e in passed},
            "seconds_to_stage": {str(e["passed_stage"]): round(e["timestamp"] - start, 1)
                                 for e in passed},
            "heldout_acc": {f"{e['step']}:{e['event']}": round(e["heldout_acc"], 4) for e in evals}}


def lm_run(sliced: bool, args, out: Path) -> dict:
    """The plain LM recipe for ``--lm-steps`` steps (``train.loss: mean``: nothing to slice)."""
    name = f"lm_sliced_head_{str(sliced).lower()}"
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [f"run.out_dir={run_dir}", "log.progress=false", f"train.max_steps={args.lm_steps}",
                 "eval.every=0", "eval.at_end=false", "checkpoint.save_every=0",
                 "checkpoint.save_final=false", f"train.sliced_head={sliced}"]
    wall = timed_run(name, LM_RECIPE, overrides, out, args.nproc)
    records = read_jsonl(run_dir / "logs" / "train.jsonl")
    return {**pace(records), "wall_s": round(wall, 1)}  # from the first record: no start-up


def ratios(after: dict, before: dict) -> dict:
    """after / before for the rates and times, stage by stage for the curriculum."""
    out = {key: round(after[key] / before[key], 3) for key in
           ("examples_per_s", "s_per_step", "wall_s", "steps") if before.get(key)}
    for key in ("steps_to_stage", "seconds_to_stage"):
        if key in after:
            out[key] = {stage: round(value / before[key][stage], 3)
                        for stage, value in after[key].items() if before[key].get(stage)}
    return out


def main(argv=None) -> int:
    """Run the comparison and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--out-dir", default=None, help="work directory (default: a temp dir)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="bound of both curriculum runs (default: the recipe's)")
    parser.add_argument("--lm-steps", type=int, default=100)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="pptrain_speed_")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    settings = split_settings(str(RECIPE))
    # The splits of the pipeline (its mixin prompts are reserved too), so "after" is its run.
    splits_args = SimpleNamespace(eval_size=200, test_size=200, mixin_size=1000)
    with contextlib.redirect_stdout(sys.stderr):
        split_dir = step_splits(out, splits_args, settings)
    runs = {name: curriculum_run(name, args, split_dir, out) for name in VARIANTS}
    lm = {str(sliced): lm_run(sliced, args, out) for sliced in (False, True)}
    result = {
        "recipe": str(RECIPE.relative_to(REPO)), "nproc": args.nproc, "overrides": args.overrides,
        "max_steps": args.max_steps,
        "cpu_count": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()], "out_dir": str(out),
        **runs, "after_over_before": ratios(runs["after"], runs["before"]),
        "lm_quickstart": {"sliced_head_false": lm["False"], "sliced_head_true": lm["True"],
                          "true_over_false": ratios(lm["True"], lm["False"])},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
