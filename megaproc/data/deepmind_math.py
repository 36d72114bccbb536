"""Reader of the raw DeepMind Mathematics archive (``mathematics_dataset-v1.0/``).

The extracted archive has split directories ``train-easy``, ``train-medium``, ``train-hard``,
``interpolate`` and ``extrapolate``, each holding one ``<module>.txt`` per module (e.g.
``algebra__linear_1d.txt``) of alternating question and answer lines.

One example is the record ``{"prompt", "answer", "module", "split"}``: the prompt is the
question followed by the separator (one newline by default), the answer the answer line, both
stripped of surrounding whitespace.  This is the layout :class:`megaproc.data.mixin.JsonlTaskDataset`
trains on and :mod:`megaproc.eval.exact_match` evaluates; ``python -m data_tools.deepmind_math``
writes these records as ``.jsonl`` files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from megaproc.errors import UserError

TRAIN_SPLITS = ("train-easy", "train-medium", "train-hard")
EVAL_SPLITS = ("interpolate", "extrapolate")
SPLITS = TRAIN_SPLITS + EVAL_SPLITS
SEPARATOR = "\n"


class DeepMindMathError(UserError, ValueError):
    """A missing split directory or a malformed module file; the message names the file (and line)."""


def make_example(question: str, answer: str, module: str, split: str,
                 separator: str = SEPARATOR) -> dict:
    """The record of one question/answer pair (see the module docstring)."""
    return {"prompt": question.strip() + separator, "answer": answer.strip(), "module": module,
            "split": split}


def module_files(split_dir: str | os.PathLike) -> list[Path]:
    """The ``<module>.txt`` files of a split directory, in name order."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DeepMindMathError(f"split directory not found: {split_dir}")
    return sorted(p for p in split_dir.glob("*.txt") if p.is_file())


def read_pairs(path: str | os.PathLike, limit: int = 0) -> Iterator[tuple[str, str, int]]:
    """``(question, answer, question_line)`` of a module file (first ``limit`` pairs if > 0).

    The file must hold an even number of lines, none of them empty.
    """
    path = Path(path)
    question, question_line, count, line_no = None, 0, 0, 0
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                kind = "question" if question is None else "answer"
                raise DeepMindMathError(f"{path}:{line_no}: empty {kind} line (questions and "
                                        "answers must alternate, one per line)")
            if question is None:
                question, question_line = text, line_no
                continue
            yield question, text, question_line
            question = None
            count += 1
            if limit and count >= limit:
                return
    if question is not None:
        raise DeepMindMathError(f"{path}: odd number of lines ({line_no}): questions and answers "
                                "must alternate, one per line")


def iter_split(root: str | os.PathLike, split: str, limit: int = 0,
               separator: str = SEPARATOR) -> Iterator[dict]:
    """Records of every module of ``root/split`` (``limit`` pairs per module when > 0)."""
    files = module_files(Path(root) / split)
    if not files:
        raise DeepMindMathError(f"{Path(root) / split}: no <module>.txt files")
    for path in files:
        for question, answer, _ in read_pairs(path, limit):
            yield make_example(question, answer, path.stem, split, separator)
