"""Convert DeepMind Mathematics (``mathematics_dataset-v1.0/``) to prompt/answer jsonl.

    python -m data_tools.deepmind_math --input mathematics_dataset-v1.0 --out-dir DM_MATH \\
        [--splits train-easy,interpolate] [--max-per-module N] [--merge-train]

Input: the extracted archive, with split directories ``train-easy``, ``train-medium``,
``train-hard``, ``interpolate`` and ``extrapolate``, each holding one ``<module>.txt`` per
module (e.g. ``algebra__linear_1d.txt``) of alternating question and answer lines.

Output: one ``<split>.jsonl`` per split found (or requested), one object per line::

    {"prompt": "Solve 3*x = 9 for x.\\n", "answer": "3", "module": "algebra__linear_1d",
     "split": "train-easy"}

Prompt/answer boundary: the prompt is the question followed by one newline (the separator,
``--separator``); the answer is the answer line, both stripped of surrounding whitespace.
This is the layout :class:`megaproc.data.prompt_answer.PromptAnswerDataset` reads (``prompt`` and
``answer`` tokenized separately, ``[bos] + prompt + answer + [eos]``, ``answer_mask`` on the
answer tokens and the eos), so a converted file trains with ``train.loss: answer_only`` as it
is, and :mod:`megaproc.eval.exact_match` decodes greedily after the same ``[bos] + prompt``
until eos or a newline.  The seed used a ``<SEP>`` token of its character-level tokenizer at
the same place; a newline exists in every tokenizer.  ``--merge-train`` writes the three
``train-*`` splits into one ``train.jsonl`` (the mixin reader shuffles examples, so
concatenation order does not matter).  Files are written under a temporary name and renamed
when complete.

The reader itself is :mod:`megaproc.data.deepmind_math` (the evaluator uses it too); this
module is the command line.  Errors (one line, exit code 2): a missing input or split
directory, a module file with an odd number of lines or an empty question/answer line (named
with its line number).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from data_tools._errors import DataToolError, run_cli
from megaproc.data.deepmind_math import SEPARATOR, SPLITS, TRAIN_SPLITS, iter_split, module_files
from megaproc.files import atomic_output

PROG = "python -m data_tools.deepmind_math"


def _write_jsonl(path: Path, records) -> int:
    count = 0
    with atomic_output(path) as temp, open(temp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def convert(root: str | os.PathLike, out_dir: str | os.PathLike, splits: list[str] | None = None,
            limit: int = 0, merge_train: bool = False, separator: str = SEPARATOR) -> dict:
    """Write the jsonl files; returns ``{output file name: number of examples}``.

    Without ``splits``, every split directory present is converted (at least one must be).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataToolError(f"input directory not found: {root}")
    if splits is None:
        splits = [s for s in SPLITS if (root / s).is_dir()]
        if not splits:
            raise DataToolError(f"{root}: none of the split directories {', '.join(SPLITS)}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise DataToolError(f"unknown split {unknown[0]!r} (choose from {', '.join(SPLITS)})")
    for split in splits:  # fail before writing anything
        if not module_files(root / split):
            raise DataToolError(f"{root / split}: no <module>.txt files")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = [[s] for s in splits]
    if merge_train:
        train = [s for s in splits if s in TRAIN_SPLITS]
        groups = ([train] if train else []) + [[s] for s in splits if s not in TRAIN_SPLITS]
    written = {}
    for group in groups:
        name = "train.jsonl" if merge_train and group[0] in TRAIN_SPLITS else f"{group[0]}.jsonl"
        records = (r for split in group for r in iter_split(root, split, limit, separator))
        written[name] = _write_jsonl(out / name, records)
    return written


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog=PROG, description="Convert the extracted DeepMind "
                                     "Mathematics dataset to prompt/answer jsonl (one file per "
                                     "split) for answer-only training and exact-match evaluation.")
    parser.add_argument("--input", required=True, help="the mathematics_dataset-v1.0 directory")
    parser.add_argument("--out-dir", required=True, help="output directory")
    parser.add_argument("--splits", help=f"comma-separated subset of {','.join(SPLITS)} "
                                         "(default: every split directory present)")
    parser.add_argument("--max-per-module", type=int, default=0,
                        help="first N question/answer pairs of every module file (0 = all)")
    parser.add_argument("--merge-train", action="store_true",
                        help="write the train-* splits into one train.jsonl")
    parser.add_argument("--separator", default=SEPARATOR,
                        help="text appended to every question, used verbatim (default: a newline; "
                             "the evaluator stops decoding at a newline)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: convert and print what was written."""
    args = build_parser().parse_args(argv)
    if args.max_per_module < 0:
        raise DataToolError("--max-per-module must be >= 0")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    written = convert(args.input, args.out_dir, splits, args.max_per_module, args.merge_train,
                      args.separator)
    for name, count in written.items():
        print(f"wrote {Path(args.out_dir) / name}: {count} examples")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
