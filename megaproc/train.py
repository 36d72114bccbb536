"""Entry point: ``deepspeed|torchrun|python megaproc/train.py --config X.yaml [a.b=value ...]``.

Parse, load the config, resolve it for the launcher's world size (``megaproc.runs.resolve``),
then either print it (``--dry-run``) or build the Trainer, train and close it; bad input is one
``error:`` line and exit code 2 (``megaproc.errors.run_cli``).
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script by a launcher: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megaproc import distributed as dist_utils  # noqa: E402
from megaproc.config import load_config, to_yaml  # noqa: E402
from megaproc.console_log import setup_console_log  # noqa: E402
from megaproc.errors import run_cli  # noqa: E402
from megaproc.runs import resolve  # noqa: E402
from megaproc.trainer import Trainer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line arguments (the launcher's ``--local_rank`` is accepted and ignored)."""
    parser = argparse.ArgumentParser(description="Train a causal LM with DeepSpeed.")
    parser.add_argument("--config", help="YAML recipe (may extend another)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the config resolved for the launcher's world size and exit")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=20")
    return parser.parse_args(argv)


def launcher_world_size() -> int:
    """The world size the launcher gives (``WORLD_SIZE``, or SLURM's task count), default 1."""
    return int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)


def run(argv=None) -> int:
    """Parse, resolve, build the trainer, train; returns the exit code."""
    args = parse_args(argv)
    setup_console_log(stream=sys.stderr if args.dry_run else sys.stdout)  # dry-run: YAML only
    cfg = resolve(load_config(args.config, args.overrides), launcher_world_size())
    if args.dry_run:
        print(to_yaml(cfg), end="")
        return 0
    dist_utils.init_distributed(args.local_rank)
    try:
        trainer = Trainer(cfg)
        try:
            return trainer.train()
        finally:
            trainer.close()
    finally:
        dist_utils.shutdown()


def main(argv=None) -> None:
    """Console entry point."""
    sys.exit(run_cli(run, argv))


if __name__ == "__main__":
    main()
