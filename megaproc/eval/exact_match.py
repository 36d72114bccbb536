"""Exact-match accuracy of greedily decoded answers (DeepMind Mathematics).

Examples are ``{"prompt", "answer", "module"[, "split"]}`` records, as
``python -m data_tools.deepmind_math`` writes them.  For each one the model decodes greedily
after ``[bos] + ids(prompt)`` - the prompt part of the training layout of
:class:`megaproc.data.mixin.JsonlTaskDataset` (BOS only when the tokenizer defines one) - until
it emits EOS or a newline, and the example is correct when the decoded text, cut at the first
newline and stripped, equals the stripped answer.

Decoding stops early, without changing any outcome, once the stripped text is no longer a
prefix of the answer (no continuation can make it equal again), and after ``2 * len(ids(answer))
+ 8`` new tokens (that bound only matters for a model that keeps emitting whitespace).  Every
step re-runs the forward on the whole sequence (no KV cache), so the same ``logits_fn`` serves a
HF model and a DeepSpeed engine; rows are right-padded, which causal attention ignores.
Distributed, every rank decodes its share and the ranks step in lock step (one all-reduce per
step decides whether any rank still decodes), as ZeRO-3's collective forwards require.

Result: ``{"accuracy", "num_examples", "by_module": {module: accuracy}, "by_split": {...}}``;
module keys are ``split/module`` when the examples name their split (``measurement__conversion``
exists in both interpolate and extrapolate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from megaproc import distributed as dist_utils
from megaproc.data.deepmind_math import DeepMindMathError, make_example, module_files, read_pairs
from megaproc.eval.loglik import LogitsFn
from megaproc.eval.rows import json_rows, right_padded

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
        raise ValueError(f"{where}: expected a JSON object")
    for key in ("prompt", "answer"):
        if key not in record:
            raise ValueError(f"{where}: missing field {key!r}")
        if not isinstance(record[key], str):
            raise ValueError(f"{where}: {key!r} must be a string")
    if not record["answer"].strip():
        raise ValueError(f"{where}: empty 'answer'")
    module = record.get("module", "all")
    split = record.get("split", default_split)
    if not isinstance(module, str) or not (split is None or isinstance(split, str)):
        raise ValueError(f"{where}: 'module' and 'split' must be strings")
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
    of every split/module.  Bad input raises ``ValueError`` naming the file and line."""
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
                raise ValueError(str(exc)) from None
        else:
            raise ValueError(f"{path}: no interpolate/extrapolate .jsonl files or split "
                             "directories")
    else:
        raise ValueError(f"DeepMind Mathematics data not found: {path}")
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


@torch.no_grad()
def greedy_decode(logits_fn: LogitsFn, prompts: Sequence[Sequence[int]],
                  stop: Callable[[int, list[int]], bool], max_new_tokens: Sequence[int],
                  max_length: int, pad_id: int = 0, batch_size: int = 16,
                  device: torch.device | str = "cpu", num_batches: int | None = None,
                  lockstep: bool = False, progress=None) -> list[list[int]]:
    """Greedy continuations of token-id ``prompts`` (in prompt order).

    Row ``i`` stops when ``stop(i, generated)`` is true or after ``max_new_tokens[i]`` tokens;
    inputs longer than ``max_length`` keep their last ``max_length`` tokens.  ``num_batches``
    and ``lockstep`` keep distributed ranks in step (see the module docstring).
    """
    batch_size = max(1, int(batch_size))
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    needed = math.ceil(len(order) / batch_size)
    total = needed if num_batches is None else max(int(num_batches), needed)
    generated: list[list[int]] = [[] for _ in prompts]
    for b in range(total):
        chunk = order[b * batch_size:(b + 1) * batch_size]
        active = [i for i in chunk if max_new_tokens[i] > 0]
        while True:
            if lockstep:
                flag = torch.tensor([float(len(active))], device=device)
                if dist_utils.all_reduce_sum(flag).item() == 0:
                    break
            elif not active:
                break
            inputs = [(list(prompts[i]) + generated[i])[-max_length:] for i in active] or [[pad_id]]
            ids, mask = right_padded(inputs, pad_id)
            logits = logits_fn(ids.to(device), mask.to(device))
            still = []
            for row, i in enumerate(active):
                generated[i].append(int(logits[row, len(inputs[row]) - 1].argmax()))
                if not stop(i, generated[i]) and len(generated[i]) < max_new_tokens[i]:
                    still.append(i)
            active = still
        if progress is not None and chunk:
            progress.update(len(chunk))
    return generated


def answer_text(tokenizer, ids: Sequence[int]) -> str:
    """The decoded answer: special tokens dropped, cut at the first newline."""
    return tokenizer.decode(list(ids), skip_special_tokens=True).split("\n", 1)[0]


class ExactMatchEvaluator:
    """Greedy exact-match accuracy on a fixed list of :class:`PromptAnswer` examples."""

    def __init__(self, tokenizer, max_length: int, batch_size: int = 16,
                 device: torch.device | str = "cpu", progress: bool = False):
        from megaproc.tokenizer import pad_id

        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.batch_size = max(1, int(batch_size))
        self.device = device
        self.progress = bool(progress)
        self.pad_id = pad_id(tokenizer)

    def encode_prompts(self, examples: Sequence[PromptAnswer]) -> list[list[int]]:
        """``[bos] + ids(prompt)`` of each example (the mixin's training layout)."""
        if not examples:
            return []
        head = [] if self.tokenizer.bos_token_id is None else [int(self.tokenizer.bos_token_id)]
        ids = self.tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
        return [head + list(x) for x in ids]

    def _decode_local(self, logits_fn: LogitsFn, local: list[PromptAnswer], per_rank: int,
                      lockstep: bool, show: bool) -> list[str]:
        prompts = self.encode_prompts(local)
        answers = [e.answer.strip() for e in local]
        answer_ids = self.tokenizer(answers, add_special_tokens=False)["input_ids"] if local else []
        caps = [2 * len(a) + 8 for a in answer_ids]
        eos = self.tokenizer.eos_token_id

        def stop(i: int, ids: list[int]) -> bool:
            if eos is not None and ids[-1] == eos:
                return True
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            # Cut at a newline, or when the stripped text has left the answer for good.
            return "\n" in text or not answers[i].startswith(text.strip())

        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=len(local), desc="exact match", unit="ex", mininterval=1.0,
                       leave=False)
        try:
            generated = greedy_decode(logits_fn, prompts, stop, caps, self.max_length, self.pad_id,
                                      self.batch_size, self.device,
                                      math.ceil(per_rank / self.batch_size), lockstep, bar)
        finally:
            if bar is not None:
                bar.close()
        return [answer_text(self.tokenizer, ids) for ids in generated]

    def run(self, logits_fn: LogitsFn, examples: Sequence[PromptAnswer], rank: int = 0,
            world_size: int = 1) -> tuple[dict, list[dict]]:
        """Summary and per-example rows (all examples, on every rank when sharded)."""
        examples = list(examples)
        local = examples[rank::world_size]
        per_rank = math.ceil(len(examples) / world_size)
        texts = self._decode_local(logits_fn, local, per_rank, world_size > 1,
                                   self.progress and rank == 0)
        if world_size > 1:
            shares = dist_utils.all_gather_objects(texts)
            texts = [None] * len(examples)
            for r, share in enumerate(shares):
                for k, text in enumerate(share):
                    texts[r + k * world_size] = text
        return summarize(examples, texts)


def summarize(examples: Sequence[PromptAnswer], texts: Sequence[str]) -> tuple[dict, list[dict]]:
    """Accuracy overall, per module and per split, and the per-example rows."""
    rows, groups, splits = [], {}, {}
    for example, text in zip(examples, texts):
        correct = text.strip() == example.answer.strip()
        groups.setdefault(example.group, []).append(correct)
        if example.split:
            splits.setdefault(example.split, []).append(correct)
        rows.append({"task": "deepmind_math", "file": example.file, "line": example.line,
                     "split": example.split, "module": example.module, "prompt": example.prompt,
                     "answer": example.answer, "generated": text, "correct": correct})
    n = len(rows)
    return ({"accuracy": sum(r["correct"] for r in rows) / n if n else None, "num_examples": n,
             "by_module": {k: sum(v) / len(v) for k, v in sorted(groups.items())},
             "by_split": {k: sum(v) / len(v) for k, v in sorted(splits.items())}}, rows)
