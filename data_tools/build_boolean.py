"""Build a balanced boolean-function data set: ``train.jsonl``, ``test.jsonl`` and ``meta.json``.

    python -m data_tools.build_boolean --target-func fn_a --sequence-length 50 \\
        --train-set-size 200 --test-set-size 10000 --seed 42 --out-dir DIR

Each line is ``{"sequence": "0110...", "label": 0|1}``; both splits are exactly 50/50 by label,
no sequence appears twice (within or across splits), and the files are identical to the ones
the trainer generates (and caches) for ``classify.target_func`` with the same length, sizes and
``run.seed`` (see :mod:`megaproc.synthetic.boolean_data` for the constructions).  An impossible
request (odd size, a length the function is not defined at, more distinct sequences than
exist) is one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from megaproc.synthetic.boolean import FUNCTION_NAMES, TARGET_FUNCTIONS, BooleanDataError
from megaproc.synthetic.boolean_data import make_splits, replacement_note, write_splits


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are a single line on stderr (exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (dashes or underscores in option names)."""
    functions = ", ".join(f"{name} ({fn.seed_name})" for name, fn in TARGET_FUNCTIONS.items())
    parser = _OneLineParser(prog="python -m data_tools.build_boolean",
                            description="Write balanced train/test splits of a boolean target "
                                        f"function. Functions: {functions}.")
    parser.add_argument("--target-func", "--target_func", required=True, choices=FUNCTION_NAMES,
                        metavar="FN", help="fn_a ... fn_l")
    parser.add_argument("--sequence-length", "--sequence_length", required=True, type=int,
                        metavar="L", help="symbols per sequence (bits; digits for fn_i/fn_k)")
    parser.add_argument("--train-set-size", "--train_set_size", required=True, type=int,
                        metavar="N", help="training examples (even)")
    parser.add_argument("--test-set-size", "--test_set_size", required=True, type=int,
                        metavar="M", help="test examples (even, may be 0)")
    parser.add_argument("--seed", type=int, default=42, help="global seed (default 42)")
    parser.add_argument("--out-dir", "--out_dir", required=True, help="output directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        splits = make_splits(args.target_func, args.sequence_length, args.train_set_size,
                             args.test_set_size, args.seed)
        out = write_splits(splits, args.out_dir)
    except (BooleanDataError, OSError) as error:
        parser.error(" ".join(str(error).split()))
    note = replacement_note(args.target_func, args.sequence_length, args.train_set_size,
                            args.test_set_size)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    print(f"wrote {out}: train {len(splits.train)}, test {len(splits.test)} "
          f"({args.target_func}, L={args.sequence_length}, derived seed {splits.derived_seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
