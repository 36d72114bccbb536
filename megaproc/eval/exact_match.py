"""Exact-match accuracy of greedily decoded answers (DeepMind Mathematics).

Examples are ``{"prompt", "answer", "module"[, "split"]}`` records, as
``python -m data_tools.deepmind_math`` writes them.  For each one the model decodes greedily
after ``[bos] + ids(prompt)`` - the prompt part of the training layout of
:class:`megaproc.data.prompt_answer.PromptAnswerDataset` (BOS only when the tokenizer defines one) - until
it emits EOS or a newline, and the example is correct when the decoded text, cut at the first
newline and stripped, equals the stripped answer.

Decoding stops early, without changing any outcome, once the stripped text is no longer a
prefix of the answer (no continuation can make it equal again), and after ``2 * len(ids(answer))
+ 8`` new tokens (that bound only matters for a model that keeps emitting whitespace).  Every
step re-runs the forward on the whole sequence (no KV cache), so the same ``logits_fn`` serves a
HF model and a DeepSpeed engine; rows are right-padded, which causal attention ignores.
Distributed, the batches (planned from all examples, longest prompt first) are shared over the
ranks by :func:`megaproc.eval.sharding.run_in_lockstep`, and inside a batch the ranks step in
lock step (:func:`~megaproc.eval.sharding.any_rank` decides whether any rank still decodes), as
ZeRO-3's collective forwards require.

Result of :meth:`ExactMatchEvaluator.run`: ``{"accuracy", "num_examples", "by_module": {module:
accuracy}, "by_split": {...}}``; module keys are ``split/module`` when the examples name their
split (``measurement__conversion`` exists in both interpolate and extrapolate).
:class:`DmMathEvaluator` (name ``dm_math``) publishes them as ``dm_math_acc``,
``dm_math_num_examples``, ``dm_math_by_module`` and ``dm_math_by_split``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from megaproc.data.deepmind_math import DeepMindMathError, make_example, module_files, read_pairs
from megaproc.eval.evaluator import BatchSize, EvalContext, EvalResult, rows_per_batch
from megaproc.eval.forward import LogitsFn
from megaproc.eval.rows import EvalInputError, json_rows, right_padded
from megaproc.eval.sharding import any_rank, run_in_lockstep
from megaproc.tokenizer import pad_id as tokenizer_pad_id

EVAL_SPLITS = ("interpolate", "extrapolate")


@dataclass(frozen=True)
class PromptAnswer:
    """One exact-match example and where it came from."""

    prompt: str
    answer: str
    module: str
    split: str | None
    file: str
    line: int

    @property
    def group(self) -> str:
        """The ``by_module`` key: ``split/module`` or ``module``."""
        return f"{self.split}/{self.module}" if self.split else self.module


def _parse(record, where: str, file: str, line: int, default_split: str | None) -> PromptAnswer:
    if not isinstance(record, dict):
        raise EvalInputError(f"{where}: expected a JSON object")
    for key in ("prompt", "answer"):
        if key not in record:
            raise EvalInputError(f"{where}: missing field {key!r}")
        if not isinstance(record[key], str):
            raise EvalInputError(f"{where}: {key!r} must be a string")
    if not record["answer"].strip():
        raise EvalInputError(f"{where}: empty 'answer'")
    module = record.get("module", "all")
    split = record.get("split", default_split)
    if not isinstance(module, str) or not (split is None or isinstance(split, str)):
        raise EvalInputError(f"{where}: 'module' and 'split' must be strings")
    return PromptAnswer(record["prompt"], record["answer"], module, split, file, line)


def _read_jsonl(path: Path, per_group: int, out: list[PromptAnswer]) -> None:
    counts: dict[str, int] = {}
    default_split = path.stem if path.stem in EVAL_SPLITS else None
    with open(path, encoding="utf-8") as handle:
        for line_no, where, record in json_rows(handle, str(path)):
            example = _parse(record, where, str(path), line_no, default_split)
            if per_group:
                counts[example.group] = counts.get(example.group, 0) + 1
                if counts[example.group] > per_group:
                    continue
            out.append(example)


def load_examples(path: str | Path, per_module: int = 0) -> list[PromptAnswer]:
    """Examples of a prompt/answer ``.jsonl`` file, or of a directory holding the converter's
    ``interpolate.jsonl``/``extrapolate.jsonl`` or the raw ``interpolate/``/``extrapolate/``
    split directories of ``mathematics_dataset-v1.0``.  ``per_module`` > 0 keeps the first N
    of every split/module.  Bad input raises :class:`~megaproc.eval.rows.EvalInputError`
    naming the file and line."""
    path = Path(path)
    examples: list[PromptAnswer] = []
    if path.is_file():
        _read_jsonl(path, per_module, examples)
    elif path.is_dir():
        converted = [path / f"{s}.jsonl" for s in EVAL_SPLITS if (path / f"{s}.jsonl").is_file()]
        raw = [s for s in EVAL_SPLITS if (path / s).is_dir()]
        if converted:
            for file in converted:
                _read_jsonl(file, per_module, examples)
        elif raw:
            try:
                for split in raw:
                    for file in module_files(path / split):
                        for question, answer, line in read_pairs(file, per_module):
                            record = make_example(question, answer, file.stem, split)
                            examples.append(_parse(record, f"{file}:{line}", str(file), line,
                                                   split))
            except DeepMindMathError as exc:
                raise EvalInputError(str(exc)) from None
        else:
            raise EvalInputError(f"{path}: no interpolate/extrapolate .jsonl files or split "
                             "directories")
    else:
        raise EvalInputError(f"DeepMind Mathematics data not found: {path}")
    if not examples:
        raise EvalInputError(f"{path}: no examples")
    return examples


def _decode_batch(logits_fn: LogitsFn, prompts: Sequence[Sequence[int]], rows: Sequence[int],
                  stop: Callable[[int, list[int]], bool], max_new_tokens: Sequence[int],
                  max_length: int, pad_id: int, device, world_size: int) -> list[list[int]]:
    """Greedy tokens of prompts ``rows`` (an empty batch keeps stepping while another rank
    decodes: a dummy one-token forward per step)."""
    generated: dict[int, list[int]] = {i: [] for i in rows}
    active = [i for i in rows if max_new_tokens[i] > 0]
    while any_rank(bool(active), world_size):
        inputs = [(list(prompts[i]) + generated[i])[-max_length:] for i in active] or [[pad_id]]
        ids, mask = right_padded(inputs, pad_id)
        logits = logits_fn(ids.to(device), mask.to(device))
        still = []
        for row, i in enumerate(active):
            generated[i].append(int(logits[row, len(inputs[row]) - 1].argmax()))
            if not stop(i, generated[i]) and len(generated[i]) < max_new_tokens[i]:
                still.append(i)
        active = still
    return [generated[i] for i in rows]


@torch.no_grad()
def greedy_decode(logits_fn: LogitsFn, prompts: Sequence[Sequence[int]],
                  stop: Callable[[int, list[int]], bool], max_new_tokens: Sequence[int],
                  max_length: int, pad_id: int = 0, batch_size: BatchSize = 16,
                  device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                  progress: bool = False) -> list[list[int]]:
    """Greedy continuations of token-id ``prompts`` (in prompt order, on every rank).

    Row ``i`` stops when ``stop(i, generated)`` is true or after ``max_new_tokens[i]`` tokens;
    inputs longer than ``max_length`` keep their last ``max_length`` tokens.  Batches hold the
    longest prompts first; with ``world_size > 1`` they are shared over the ranks (collective).
    """
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    longest = max((len(prompts[i]) + max_new_tokens[i] for i in order), default=1)
    size = rows_per_batch(batch_size, min(longest, max_length))
    batches = [order[start:start + size] for start in range(0, len(order), size)]

    def run(batch):
        return _decode_batch(logits_fn, prompts, batch or [], stop, max_new_tokens, max_length,
                             pad_id, device, world_size)

    generated: list[list[int]] = [[] for _ in prompts]
    for batch, tokens in zip(batches, run_in_lockstep(batches, run, rank, world_size, progress,
                                                      "exact match")):
        for i, ids in zip(batch, tokens):
            generated[i] = ids
    return generated


def answer_text(tokenizer, ids: Sequence[int]) -> str:
    """The decoded answer: special tokens dropped, cut at the first newline."""
    return tokenizer.decode(list(ids), skip_special_tokens=True).split("\n", 1)[0]


class ExactMatchEvaluator:
    """Greedy exact-match accuracy on a fixed list of :class:`PromptAnswer` examples."""

    def __init__(self, tokenizer, max_length: int, batch_size: BatchSize = 16,
                 device: torch.device | str = "cpu", progress: bool = False):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.batch_size = batch_size if callable(batch_size) else max(1, int(batch_size))
        self.device = device
        self.progress = bool(progress)
        self.pad_id = tokenizer_pad_id(tokenizer)

    def encode_prompts(self, examples: Sequence[PromptAnswer]) -> list[list[int]]:
        """``[bos] + ids(prompt)`` of each example (the mixin's training layout)."""
        if not examples:
            return []
        head = [] if self.tokenizer.bos_token_id is None else [int(self.tokenizer.bos_token_id)]
        ids = self.tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
        return [head + list(x) for x in ids]

    def run(self, logits_fn: LogitsFn, examples: Sequence[PromptAnswer], rank: int = 0,
            world_size: int = 1) -> tuple[dict, list[dict]]:
        """Summary and per-example rows (all examples, on every rank when sharded)."""
        examples = list(examples)
        prompts = self.encode_prompts(examples)
        answers = [e.answer.strip() for e in examples]
        answer_ids = self.tokenizer(answers, add_special_tokens=False)["input_ids"] \
            if examples else []
        caps = [2 * len(a) + 8 for a in answer_ids]
        eos = self.tokenizer.eos_token_id

        def stop(i: int, ids: list[int]) -> bool:
            if eos is not None and ids[-1] == eos:
                return True
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            # Cut at a newline, or when the stripped text has left the answer for good.
            return "\n" in text or not answers[i].startswith(text.strip())

        generated = greedy_decode(logits_fn, prompts, stop, caps, self.max_length, self.pad_id,
                                  self.batch_size, self.device, rank, world_size, self.progress)
        return summarize(examples, [answer_text(self.tokenizer, ids) for ids in generated])


def summarize(examples: Sequence[PromptAnswer], texts: Sequence[str]) -> tuple[dict, list[dict]]:
    """Accuracy overall, per module and per split, and the per-example rows."""
    rows, groups, splits = [], {}, {}
    for example, text in zip(examples, texts):
        correct = text.strip() == example.answer.strip()
        groups.setdefault(example.group, []).append(correct)
        if example.split:
            splits.setdefault(example.split, []).append(correct)
        rows.append({"task": "dm_math", "file": example.file, "line": example.line,
                     "split": example.split, "module": example.module, "prompt": example.prompt,
                     "answer": example.answer, "generated": text, "correct": correct})
    n = len(rows)
    return ({"accuracy": sum(r["correct"] for r in rows) / n if n else None, "num_examples": n,
             "by_module": {k: sum(v) / len(v) for k, v in sorted(groups.items())},
             "by_split": {k: sum(v) / len(v) for k, v in sorted(splits.items())}}, rows)


class DmMathEvaluator:
    """DeepMind-Mathematics greedy exact match of a model on checked examples (name
    ``dm_math``)."""

    name = "dm_math"

    def __init__(self, examples: Sequence[PromptAnswer], path: str | None = None):
        self.examples = list(examples)
        self.path = path

    @classmethod
    def from_path(cls, path: str | Path, per_module: int = 0) -> "DmMathEvaluator":
        """Read and check the data now (see :func:`load_examples`)."""
        return cls(load_examples(path, per_module), str(path))

    def run(self, ctx: EvalContext) -> EvalResult:
        """Decode every example (collective over ``ctx``'s ranks)."""
        evaluator = ExactMatchEvaluator(ctx.tokenizer, ctx.max_length, ctx.batch_size,
                                        ctx.device, ctx.progress)
        summary, rows = evaluator.run(ctx.forward, self.examples, ctx.rank, ctx.world_size)
        metrics = {"dm_math_acc": summary["accuracy"],
                   "dm_math_num_examples": summary["num_examples"],
                   "dm_math_by_split": summary["by_split"],
                   "dm_math_by_module": summary["by_module"]}
        return EvalResult(metrics, rows, {"path": self.path} if self.path else {})
