"""Entry point: ``deepspeed|torchrun|python megaproc/train.py --config X.yaml [a.b=value ...]``."""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script by a launcher: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megaproc.errors import run_cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line arguments (the launcher's ``--local_rank`` is accepted and ignored)."""
    parser = argparse.ArgumentParser(description="Train a causal LM with DeepSpeed.")
    parser.add_argument("--config", help="YAML recipe (may extend another)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=20")
    return parser.parse_args(argv)


def run(argv=None) -> int:
    """Parse, build the trainer, train; returns the exit code."""
    args = parse_args(argv)
    from megaproc.config import load_config, to_yaml
    from megaproc.console_log import setup_console_log

    setup_console_log()
    cfg = load_config(args.config, args.overrides)
    from megaproc.classify import check_run_config

    check_run_config(cfg)  # classification names/lengths (needs the task registry, not config.py)
    if args.dry_run:
        print(to_yaml(cfg), end="")
        return 0
    from megaproc import distributed as dist_utils
    from megaproc.trainer import Trainer

    dist_utils.init_distributed(args.local_rank)
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()


def main(argv=None) -> None:
    """Console entry point."""
    sys.exit(run_cli(run, argv))


if __name__ == "__main__":
    main()
