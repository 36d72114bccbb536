"""HellaSwag, exactly as lm-evaluation-harness's ``hellaswag`` task (zero-shot).

Rows are the dataset's jsonl records with ``ind, activity_label, ctx_a, ctx_b, ctx, endings,
label`` (the HF ``Rowan/hellaswag`` validation split saved as jsonl works unchanged).  For each
row, as lm-eval's ``hellaswag/utils.py`` and ``hellaswag.yaml`` define it:

* query = ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`` - Python's
  ``str.capitalize`` upper-cases the first character *and lower-cases the rest*;
* choices = ``preprocess(ending)`` for every ending, gold = ``int(label)``;
* ``preprocess``: strip, replace ``" [title]"`` by ``". "``, delete every ``[...]`` (the WikiHow
  artifacts), replace double spaces by single ones (one pass, as lm-eval);
* every choice is scored as the continuation ``" " + choice`` of the query (lm-eval's default
  ``target_delimiter`` is one space) - see :mod:`megaproc.eval.loglik`;
* ``acc``: the argmax of the summed log-likelihoods is the gold index; ``acc_norm``: the argmax
  of log-likelihood divided by ``len(choice)`` in characters (the preprocessed choice, without
  the delimiter space).  Ties go to the first index, like ``numpy.argmax``.

``ctx`` is required (it is part of the dataset's schema) but, as in lm-eval, not used.

:class:`HellaswagEvaluator` (name ``hellaswag``) reports ``hellaswag_acc``,
``hellaswag_acc_norm`` and ``hellaswag_num_examples``; its rows hold every choice's
log-likelihood.  The four endings of an item share one packed row (context reuse,
:mod:`megaproc.eval.packing`) whenever the model allows it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from megaproc.eval.evaluator import EvalContext, EvalResult
from megaproc.eval.loglik import LogitsFn, LoglikScorer
from megaproc.eval.rows import EvalInputError, json_rows, require_fields

REQUIRED_FIELDS = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label")


def preprocess(text: str) -> str:
    """lm-eval's HellaSwag text clean-up (strip, ``[title]``, bracket tags, double spaces)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


@dataclass(frozen=True)
class HellaswagItem:
    """One HellaSwag row, preprocessed: query, choices, gold index and where it came from."""

    ind: object
    query: str
    choices: tuple[str, ...]
    gold: int
    line: int


def _label(value, count: int, where: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or
                                       (isinstance(value, str) and value.strip().isdigit())):
        raise EvalInputError(f"{where}: 'label' must be an integer index of 'endings', got {value!r}")
    gold = int(value)
    if not 0 <= gold < count:
        raise EvalInputError(f"{where}: 'label' {gold} is out of range for {count} endings")
    return gold


def parse_row(record, where: str, line: int) -> HellaswagItem:
    """Validate one decoded row; ``where`` (``file:line``) prefixes every error."""
    require_fields(record, where, REQUIRED_FIELDS)
    for key in ("activity_label", "ctx_a", "ctx_b", "ctx"):
        if not isinstance(record[key], str):
            raise EvalInputError(f"{where}: {key!r} must be a string")
    endings = record["endings"]
    if not isinstance(endings, list) or not endings or \
            not all(isinstance(e, str) for e in endings):
        raise EvalInputError(f"{where}: 'endings' must be a non-empty list of strings")
    choices = tuple(preprocess(e) for e in endings)
    for k, choice in enumerate(choices):
        if not choice:
            raise EvalInputError(f"{where}: ending {k} is empty after preprocessing")
    query = preprocess(record["activity_label"] + ": " + record["ctx_a"] + " "
                       + record["ctx_b"].capitalize())
    return HellaswagItem(record["ind"], query, choices,
                         _label(record["label"], len(choices), where), line)


def load_hellaswag(path: str | Path, max_examples: int = 0) -> list[HellaswagItem]:
    """Items of a HellaSwag jsonl file (first ``max_examples`` when > 0).

    A malformed row raises :class:`~megaproc.eval.rows.EvalInputError` naming the file and
    line number.
    """
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"HellaSwag file not found: {path}")
    items = []
    with open(path, encoding="utf-8") as handle:
        for line_no, where, record in json_rows(handle, str(path)):
            items.append(parse_row(record, where, line_no))
            if max_examples and len(items) >= max_examples:
                break
    if not items:
        raise EvalInputError(f"{path}: no HellaSwag rows")
    return items


def _argmax(values: list[float]) -> int:
    best = 0
    for k, value in enumerate(values):
        if value > values[best]:
            best = k
    return best


def score_items(items: list[HellaswagItem], logliks: list[float]) -> tuple[dict, list[dict]]:
    """``{"acc", "acc_norm", "num_examples"}`` and per-item rows from the flat list of choice
    log-likelihoods (item-major, in :func:`requests` order)."""
    rows, pos, acc, acc_norm = [], 0, 0, 0
    for item in items:
        lls = logliks[pos:pos + len(item.choices)]
        pos += len(item.choices)
        pred = _argmax(lls)
        pred_norm = _argmax([ll / len(c) for ll, c in zip(lls, item.choices)])
        acc += pred == item.gold
        acc_norm += pred_norm == item.gold
        rows.append({"task": "hellaswag", "ind": item.ind, "line": item.line, "label": item.gold,
                     "loglik": lls, "choice_chars": [len(c) for c in item.choices],
                     "pred": pred, "pred_norm": pred_norm, "acc": float(pred == item.gold),
                     "acc_norm": float(pred_norm == item.gold)})
    n = len(items)
    return {"acc": acc / n, "acc_norm": acc_norm / n, "num_examples": n}, rows


def requests(items: list[HellaswagItem]) -> list[tuple[str, str]]:
    """The ``(query, " " + choice)`` pairs of every item, item-major."""
    return [(item.query, " " + choice) for item in items for choice in item.choices]


def evaluate_hellaswag(scorer: LoglikScorer, logits_fn: LogitsFn, items: list[HellaswagItem],
                       rank: int = 0, world_size: int = 1) -> tuple[dict, list[dict]]:
    """Score ``items``; returns ``{"acc", "acc_norm", "num_examples"}`` (lm-eval's names;
    :class:`HellaswagEvaluator` publishes them as ``hellaswag_*``) and per-item rows (on every
    rank when sharded)."""
    results = scorer.score_pairs(logits_fn, requests(items), rank, world_size, desc="hellaswag")
    return score_items(items, [r.logprob for r in results])


class HellaswagEvaluator:
    """HellaSwag ``acc``/``acc_norm`` of a model on checked items (see the module docstring)."""

    name = "hellaswag"

    def __init__(self, items: list[HellaswagItem], path: str | None = None,
                 add_bos: bool = False):
        self.items = list(items)
        self.path = path
        self.add_bos = bool(add_bos)

    @classmethod
    def from_file(cls, path: str | Path, max_examples: int = 0,
                  add_bos: bool = False) -> "HellaswagEvaluator":
        """Read and check the file now (see :func:`load_hellaswag`)."""
        return cls(load_hellaswag(path, max_examples), str(path), add_bos)

    def run(self, ctx: EvalContext) -> EvalResult:
        """Score every item (collective over ``ctx``'s ranks)."""
        scorer = LoglikScorer(ctx.tokenizer, ctx.max_length, ctx.batch_size, self.add_bos,
                              ctx.device, ctx.progress)
        summary, rows = evaluate_hellaswag(scorer, ctx.forward, self.items, ctx.rank,
                                           ctx.world_size)
        metrics = {"hellaswag_acc": summary["acc"], "hellaswag_acc_norm": summary["acc_norm"],
                   "hellaswag_num_examples": summary["num_examples"]}
        return EvalResult(metrics, rows, {"path": self.path} if self.path else {})
