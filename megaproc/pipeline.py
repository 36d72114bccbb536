"""The README's main job: pre-pretrain, pretrain with mixin, evaluate, export — offline, on CPU.

    python -m megaproc.pipeline [--out-dir runs/pipeline] [--nproc 2]

Steps (each is skipped when its output is already complete, so a rerun resumes):

1. ``splits``   ``python -m data_tools.build_splits`` with the task settings of the
                pre-pretraining recipe -> ``OUT/data/mis{n}_look{L}_seed{S}[_symbolic]/``
2. ``pptrain``  ``configs/pptrain_cpu.yaml`` on ``--nproc`` CPU ranks (deepspeed launcher):
                a tiny model through the accuracy-gated curriculum -> ``OUT/pptrain``
3. ``pretrain`` ``configs/pretrain_cpu.yaml``: the pre-pretrained weights continue on the
                built-in code corpus with the synthetic mixin -> ``OUT/pretrain``
4. ``evaluate`` ``python -m megaproc.evaluate`` of both final checkpoints on ``test.jsonl``
                -> ``OUT/eval/{pptrain,pretrain}_test.json`` (the pre-pretrained model's
                while step 3 runs)
5. ``export``   ``python -m megaproc.export`` of the final pretraining checkpoint -> ``OUT/export``
                (beside the second evaluation)

A training step is complete when it exited successfully (``OUT/<step>/PIPELINE_COMPLETE``); an
interrupted one resumes from its newest checkpoint (``checkpoint.resume: auto``), or restarts
when it had not written one yet.  ``OUT/summary.json`` collects the results and step times.
Extra ``key=value`` overrides after ``--pptrain``/``--pretrain`` go to that training step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from megaproc.checkpoint import latest_checkpoint, read_trainer_state
from megaproc.config import load_config
from megaproc.distributed import free_port
from megaproc.errors import ConfigError, UserError, run_cli
from megaproc.export import EXPORT_INFO_FILE
from megaproc.files import REPO_ROOT, atomic_write_json
from megaproc.synthetic.splits import split_dir_name

REPO = REPO_ROOT
COMPLETE = "PIPELINE_COMPLETE"


class PipelineError(UserError, RuntimeError):
    """A pipeline step failed (the message names the step and its log); exit code 1."""

    exit_code = 1


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m megaproc.pipeline``."""
    parser = argparse.ArgumentParser(prog="python -m megaproc.pipeline",
                                     description="Build splits, pre-pretrain with the curriculum, "
                                                 "pretrain with mixin, evaluate and export.")
    parser.add_argument("--out-dir", default="runs/pipeline", help="where everything is written")
    parser.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")
    parser.add_argument("--pptrain-config", default=str(REPO / "configs" / "pptrain_cpu.yaml"))
    parser.add_argument("--pretrain-config", default=str(REPO / "configs" / "pretrain_cpu.yaml"))
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--mixin-size", type=int, default=1000)
    parser.add_argument("--pptrain", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra overrides for the pre-pretraining run")
    parser.add_argument("--pretrain", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra overrides for the pretraining run")
    return parser


def say(message: str) -> None:
    """Print a pipeline progress line."""
    print(f"[pipeline] {message}", flush=True)


def run_logged(cmd: list[str], log_path: Path, what: str) -> None:
    """Run ``cmd`` in the repository with output teed to ``log_path``; raise on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if line.startswith(("[megaproc]", "error:", "wrote ", "Traceback")):
                print(f"  {line.rstrip()}", flush=True)
        code = proc.wait()
    if code != 0:
        raise PipelineError(f"{what} failed with exit code {code}; see {log_path}")


def train_command(nproc: int, config: str, overrides: list[str]) -> list[str]:
    """The trainer command on ``nproc`` CPU ranks (the deepspeed launcher) or one process."""
    if nproc == 1:
        return [sys.executable, str(REPO / "megaproc" / "train.py"), "--config", config, *overrides]
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc),
            "--master_port", str(free_port()), str(REPO / "megaproc" / "train.py"),
            "--config", config, *overrides]


def split_settings(pptrain_config: str) -> dict:
    """Task settings of the pre-pretraining recipe (the splits must match them)."""
    task = load_config(pptrain_config).task
    return {"max_input_size": task.max_input_size, "max_lookahead": task.max_lookahead,
            "seed": task.seed, "symbolic": not task.natural_language}


def step_splits(out: Path, args, settings: dict) -> Path:
    """Build the eval/test/mixin splits unless their meta.json exists."""
    split_dir = out / "data" / split_dir_name(settings["max_input_size"], settings["max_lookahead"],
                                              settings["seed"], settings["symbolic"])
    if (split_dir / "meta.json").is_file():
        say(f"splits: {split_dir} exists, skipped")
        return split_dir
    cmd = [sys.executable, "-m", "data_tools.build_splits", "--out-dir", str(out / "data"),
           "--max-input-size", str(settings["max_input_size"]),
           "--max-lookahead", str(settings["max_lookahead"]), "--seed", str(settings["seed"]),
           "--eval-size", str(args.eval_size), "--test-size", str(args.test_size),
           "--mixin-size", str(args.mixin_size), "--no-progress"]
    if settings["symbolic"]:
        cmd.append("--symbolic")
    run_logged(cmd, out / "logs" / "splits.log", "building the splits")
    return split_dir


def step_train(name: str, run_dir: Path, args, config: str, overrides: list[str], out: Path) -> None:
    """Run (or resume) a training step unless it already completed."""
    if (run_dir / COMPLETE).is_file():
        say(f"{name}: {run_dir} complete, skipped")
        return
    if run_dir.exists() and latest_checkpoint(run_dir) is None:
        shutil.rmtree(run_dir)  # interrupted before its first checkpoint: start over
    resumed = "resuming" if run_dir.exists() else "starting"
    say(f"{name}: {resumed} on {args.nproc} CPU process(es), log {out / 'logs' / f'{name}.log'}")
    cmd = train_command(args.nproc, config, [f"run.out_dir={run_dir}", "log.progress=false",
                                             "checkpoint.resume=auto", *overrides])
    run_logged(cmd, out / "logs" / f"{name}.log", name)
    (run_dir / COMPLETE).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))


def step_evaluate(name: str, run_dir: Path, split_dir: Path, out: Path) -> dict:
    """Evaluate the newest checkpoint of ``run_dir`` on test.jsonl (cached as JSON)."""
    result_path = out / "eval" / f"{name}_test.json"
    if result_path.is_file():
        say(f"evaluate {name}: {result_path} exists, skipped")
        return json.loads(result_path.read_text())
    cmd = [sys.executable, "-m", "megaproc.evaluate", "--checkpoint", f"latest:{run_dir}",
           "--split", str(split_dir / "test.jsonl")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"evaluating {name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    atomic_write_json(result_path, result)
    split = result["split"]
    say(f"evaluate {name}: test accuracy {split['heldout_acc']:.4f}, answer loss "
        f"{split['heldout_loss']:.4f} on {split['num_examples']} examples")
    return result


def step_export(run_dir: Path, export_dir: Path, out: Path) -> None:
    """Export the newest pretraining checkpoint as a HuggingFace directory."""
    if (export_dir / EXPORT_INFO_FILE).is_file():
        say(f"export: {export_dir} exists, skipped")
        return
    ckpt = latest_checkpoint(run_dir)
    run_logged([sys.executable, "-m", "megaproc.export", str(ckpt), str(export_dir), "--overwrite"],
               out / "logs" / "export.log", "export")
    say(f"export: {ckpt} -> {export_dir}")


def curriculum_summary(run_dir: Path) -> dict:
    """Final stage, completion and step of the pre-pretraining run (from its newest checkpoint)."""
    state = read_trainer_state(latest_checkpoint(run_dir))
    curriculum = state.get("hooks", {}).get("curriculum", {})
    return {"step": state["step"], "stage": curriculum.get("stage"),
            "completed": curriculum.get("completed"),
            "dropped_too_long": state.get("data", {}).get("dropped_too_long")}


def run_pipeline(args) -> dict:
    """Run every step; returns the summary written to ``OUT/summary.json``."""
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times, start = {}, time.time()

    def timed(name, fn, *fn_args):
        t0 = time.time()
        result = fn(*fn_args)
        times[name] = round(time.time() - t0, 1)
        return result

    settings = split_settings(args.pptrain_config)
    split_dir = timed("splits", step_splits, out, args, settings)
    pptrain_dir, pretrain_dir = out / "pptrain", out / "pretrain"
    timed("pptrain", step_train, "pptrain", pptrain_dir, args, args.pptrain_config,
          [f"task.splits_dir={split_dir}", *args.pptrain], out)
    # The evaluations and the export are small one-process jobs that only read finished
    # checkpoints: the pre-pretrained model is evaluated while pretraining starts up (its
    # imports and corpus build leave a core idle), the pretrained one beside the export.
    with ThreadPoolExecutor(max_workers=2) as pool:
        evaluations = {"pptrain": pool.submit(timed, "evaluate_pptrain", step_evaluate,
                                              "pptrain", pptrain_dir, split_dir, out)}
        timed("pretrain", step_train, "pretrain", pretrain_dir, args, args.pretrain_config,
              [f"model.init_from=latest:{pptrain_dir}", f"data.mixin={split_dir / 'mixin.jsonl'}",
               f"task.splits_dir={split_dir}", *args.pretrain], out)
        evaluations["pretrain"] = pool.submit(timed, "evaluate_pretrain", step_evaluate,
                                              "pretrain", pretrain_dir, split_dir, out)
        export = pool.submit(timed, "export", step_export, pretrain_dir, out / "export", out)
        results = {name: future.result() for name, future in evaluations.items()}
        export.result()
    summary = {"splits": str(split_dir), "pptrain": curriculum_summary(pptrain_dir),
               "test": {name: {k: r["split"][k] for k in ("heldout_acc", "heldout_loss",
                                                          "num_examples", "by_lookahead")}
                        for name, r in results.items()},
               "export": str(out / "export"), "seconds": times,
               "total_seconds": round(time.time() - start, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> int:
    """Entry point: 0 on success; one ``error:`` line and 2 on bad input, 1 when a step fails."""
    return run_cli(_run, build_parser().parse_args(argv), also=(OSError,))


def _run(args) -> int:
    if args.nproc < 1:
        raise ConfigError("--nproc must be >= 1")
    summary = run_pipeline(args)
    say(f"done in {summary['total_seconds']} s: curriculum reached stage "
        f"{summary['pptrain']['stage']} (completed: {summary['pptrain']['completed']}); "
        f"test accuracy pptrain {summary['test']['pptrain']['heldout_acc']:.4f}, "
        f"pretrain {summary['test']['pretrain']['heldout_acc']:.4f}; export {summary['export']}")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
