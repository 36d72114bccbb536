"""The seed's single-run command line for sequence classification, on the megaproc trainer.

    python -m megaproc.classify --results-path DIR --model qwen1.7B --target_func fn_a \\
        --sequence_length 50 --train_set_size 200 --test_set_size 10000 --batch_size 20 \\
        --n_epochs 200 --lr 1e-5 --eta_min 1e-6 --precision bf16 --device cuda [a.b=value ...]

translates the seed's flags (table in :mod:`megaproc.seed_compat.classify_flags`) into dotted overrides of
``configs/classify/base.yaml`` (``--config`` picks another recipe), checks them like the trainer
does, writes ``DIR/config.json`` (the flags as given, the overrides and the command) and then
replaces itself with ``python megaproc/train.py --config RECIPE overrides... run.out_dir=DIR``.
``--dry-run`` prints that command instead.  Bad flags or values: one ``error:`` line, exit 2.
For several processes, run the printed command under ``deepspeed``/``torchrun``.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from megaproc.config import load_config
from megaproc.errors import ConfigError, run_cli
from megaproc.files import REPO_ROOT
from megaproc.runs import resolve
from megaproc.seed_compat.classify_flags import BASE_RECIPE, SEED_FLAGS, parse_flag_list, translate
from megaproc.sweep_jobs import DEFAULT_PROGRAM, Job, write_job_config

USAGE = """usage: python -m megaproc.classify --results-path DIR [--SEED_FLAG VALUE ...] [a.b=value ...]
                                  [--config RECIPE] [--dry-run]

Seed flags and the megaproc keys they set:
{table}
Dotted megaproc keys (e.g. model.pretrained_path=/models/Qwen3-1.7B) pass through unchanged.
"""


def _usage() -> str:
    table = "\n".join(f"  --{flag:<24} {target or '(checked, not used: CUDA when present)'}"
                      for flag, target in SEED_FLAGS.items())
    return USAGE.format(table=table)


def classify_command(argv: list[str]) -> tuple[list[str], Path, dict, list[str], bool]:
    """``(trainer command, results dir, seed flags, overrides, dry_run)`` for a command line."""
    argv = list(argv)
    dry_run = "--dry-run" in argv
    argv = [a for a in argv if a != "--dry-run"]
    recipe = str(REPO_ROOT / BASE_RECIPE)
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise ConfigError("--config needs a recipe path")
        recipe = argv[at + 1]
        del argv[at:at + 2]
    flags = parse_flag_list(argv)
    overrides = translate(flags, raw_text=True)
    out_dirs = [o.split("=", 1)[1] for o in overrides if o.startswith("run.out_dir=")]
    if not out_dirs:
        raise ConfigError("--results-path is required (the run folder)")
    cfg = load_config(recipe, overrides)
    if cfg.classify.target_func is None:
        raise ConfigError("--target_func is required (fn_a ... fn_l)")
    resolve(cfg, check_files=False)                   # refuses what the trainer would refuse
    results = Path(cfg.run.out_dir)
    command = [sys.executable, str(REPO_ROOT / DEFAULT_PROGRAM), "--config", recipe, *overrides]
    return command, results, flags, overrides, dry_run


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``exec``s the trainer; returns only on errors or --dry-run)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or "-h" in argv or "--help" in argv:
        print(_usage(), end="")
        return 0
    return run_cli(_run, argv)


def _run(argv: list[str]) -> int:
    command, results, flags, overrides, dry_run = classify_command(argv)
    if dry_run:
        print(shlex.join(command))
        return 0
    write_job_config(Job(0, results.name, {}, flags, overrides, results, command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
