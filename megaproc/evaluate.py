"""Final evaluation of a trained model; prints one JSON object.

    python -m megaproc.evaluate --checkpoint RUN_DIR/checkpoints/step_XXXXXXXX --split SPLIT/test.jsonl
    python -m megaproc.evaluate --model HF_DIR --split SPLIT/test.jsonl [--max-examples N]
    python -m megaproc.evaluate --checkpoint latest:RUN_DIR --prefix DATA/valid_text_document
    python -m megaproc.evaluate --model HF_DIR --hf-dataset C4_VALID_DIR [--text-key text]
    python -m megaproc.evaluate --model HF_DIR --hellaswag hellaswag_val.jsonl --ewok ewok.zip \\
        --dm-math DM_MATH_DIR --items-out items.jsonl

``--checkpoint`` takes a megaproc checkpoint (any ZeRO stage), a run directory or
``latest:RUN_DIR``; ``--model`` an exported HuggingFace directory.  Every option adds to the
one JSON object printed on stdout:

``--split S.jsonl`` (a split of ``data_tools.build_splits``)
    top-level ``accuracy`` (greedy full-word answer equals one of ``output_texts``; see
    :mod:`megaproc.eval.answer_correctness`), ``answer_loss`` (mean cross entropy per answer
    token of ``output_texts[0]``), ``num_examples`` and ``num_dropped`` (longer than the
    model's context).
``--prefix P`` (an indexed ``.bin/.idx`` pair)
    top-level ``val_loss``, ``val_ppl``, ``val_token_acc``, ``num_tokens`` over
    ``--max-batches`` batches of ``--seq-len`` tokens (:mod:`megaproc.eval.lm`).
``--hf-dataset DIR`` (``datasets.Dataset(Dict).save_to_disk``)
    ``"hf_dataset": {val_loss, val_ppl, val_token_acc, num_tokens}`` on the first documents of
    ``--hf-split`` (default: validation, else test, else the only split): ``--text-key``
    texts are tokenized with EOS after each document, or an ``input_ids`` column is used as
    it is; the token stream is cut into windows of ``--seq-len + 1`` tokens.
``--hellaswag FILE.jsonl``
    ``"hellaswag": {acc, acc_norm, num_examples}`` (:mod:`megaproc.eval.hellaswag`, exactly
    lm-eval's ``hellaswag`` task).
``--ewok [DIR_OR_ZIP]``
    ``"ewok": {num_items, sum: {accuracy, accuracy_t1, accuracy_t2, by_domain}, mean: {...}}``
    (:mod:`megaproc.eval.ewok`); without a path the source is ``$EWOK_SRC``; an encrypted zip
    needs ``$EWOK_ZIP_PASSWORD``.
``--dm-math DIR_OR_JSONL``
    ``"deepmind_math": {accuracy, num_examples, by_module, by_split}`` - greedy exact match
    (:mod:`megaproc.eval.exact_match`) on ``data_tools.deepmind_math`` output
    (``interpolate.jsonl``/``extrapolate.jsonl`` in DIR, or one jsonl file) or on the raw
    ``mathematics_dataset-v1.0`` directory.

``--items-out FILE.jsonl`` writes one row per HellaSwag item (the choices' log-likelihoods),
EWoK item (the four log-probabilities and the verdicts) and DeepMind-Math example (the decoded
answer), each with a ``task`` key.  ``--max-examples N`` keeps the first N examples of every
task (DeepMind Mathematics: of every split/module).  Log-likelihood tasks put no BOS before the
context unless ``--add-bos``.  A progress bar goes to stderr (``--no-progress`` turns it off).
Bad input ends with a one-line ``error: ...`` and exit code 2; nothing is evaluated until every
input file has been read and checked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Sequence

import torch

from megaproc.errors import UserError

USAGE_ERROR = 2


class EvaluateError(UserError, ValueError):
    """Bad input to the evaluation command (reported as one line)."""


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        self.exit(USAGE_ERROR, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m megaproc.evaluate``."""
    parser = _OneLineParser(prog="python -m megaproc.evaluate",
                            description="Evaluate a checkpoint or exported model: synthetic split "
                                        "accuracy, LM metrics on indexed data or a HF dataset, "
                                        "HellaSwag, EWoK, DeepMind-Math exact match.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint dir, run dir or latest:RUN_DIR")
    source.add_argument("--model", help="exported HuggingFace model directory")
    parser.add_argument("--split", help="split .jsonl (e.g. .../test.jsonl)")
    parser.add_argument("--max-examples", type=int, default=0,
                        help="first N examples of each task (DeepMind-Math: per split/module; "
                             "0 = all)")
    parser.add_argument("--prefix", help="indexed data prefix for val loss / perplexity")
    parser.add_argument("--hf-dataset", help="HF datasets directory (save_to_disk) for val loss / "
                                             "perplexity")
    parser.add_argument("--text-key", default="text", help="--hf-dataset text column (default "
                                                           "text; else an input_ids column)")
    parser.add_argument("--hf-split", help="--hf-dataset split of a DatasetDict (default: "
                                           "validation, test, or the only one)")
    parser.add_argument("--hellaswag", help="HellaSwag .jsonl (ind, activity_label, ctx_a, ctx_b, "
                                            "ctx, endings, label)")
    parser.add_argument("--ewok", nargs="?", const="", default=None, metavar="DIR_OR_ZIP",
                        help="EWoK jsonl directory or .zip (no value: $EWOK_SRC)")
    parser.add_argument("--dm-math", help="DeepMind-Math prompt/answer jsonl, converted directory "
                                          "or raw mathematics_dataset-v1.0 directory")
    parser.add_argument("--items-out", help="write per-item rows of hellaswag/ewok/dm-math here")
    parser.add_argument("--add-bos", action="store_true",
                        help="put BOS before HellaSwag/EWoK contexts (default: none, as lm-eval)")
    parser.add_argument("--seq-len", type=int, default=0,
                        help="context for --prefix/--hf-dataset samples and the split length limit "
                             "(default: the model's maximum)")
    parser.add_argument("--max-batches", type=int, default=20,
                        help="--prefix/--hf-dataset batches (default 20)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per forward (default 16)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the model's own)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    return parser


def load_model_and_tokenizer(args):
    """The model (CPU, eval mode) and tokenizer named by the arguments."""
    if args.checkpoint:
        from megaproc.checkpoint import (load_checkpoint_model, load_checkpoint_tokenizer,
                                         resolve_checkpoint_ref)

        path = resolve_checkpoint_ref(args.checkpoint)
        model, tokenizer = load_checkpoint_model(path), load_checkpoint_tokenizer(path)
        where = str(path)
    else:
        from transformers import AutoModelForCausalLM

        path = Path(args.model)
        if not (path / "config.json").is_file():
            raise EvaluateError(f"--model {path}: not a HuggingFace model directory (no config.json)")
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).eval()
        tokenizer = None if args.tokenizer else _load_tokenizer_or_none(path)
        where = str(path)
    if args.tokenizer:
        from megaproc.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    if tokenizer is None:
        raise EvaluateError(f"{where} has no tokenizer; pass --tokenizer DIR")
    return model, tokenizer, where


def _load_tokenizer_or_none(path: Path):
    from megaproc.tokenizer import load_tokenizer

    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return load_tokenizer(path)


def evaluate_split(model, tokenizer, path: str, records: list[dict], max_tokens: int,
                   batch_size: int) -> dict:
    """Accuracy and answer loss on split records (see :mod:`megaproc.eval.task_accuracy`)."""
    from megaproc.eval.loglik import hf_logits_fn
    from megaproc.eval.task_accuracy import HeldoutEvaluator

    evaluator = HeldoutEvaluator(records, tokenizer, max_tokens, batch_size=batch_size)
    result = evaluator.run(hf_logits_fn(model))
    return {"split": str(path), "accuracy": result["heldout_acc"],
            "answer_loss": result["heldout_loss"], "num_examples": result["num_examples"],
            "num_dropped": result["num_dropped"]}


def _lm_metrics_of_samples(model, tokenizer, samples, seq_len: int, batch_size: int) -> dict:
    from megaproc.data.batch import collate
    from megaproc.eval.lm import lm_metrics
    from megaproc.eval.loglik import hf_logits_fn
    from megaproc.tokenizer import pad_id

    batches = (collate(samples[start:start + batch_size], pad_id(tokenizer), pad_to=seq_len + 1)
               for start in range(0, len(samples), batch_size))
    return lm_metrics(hf_logits_fn(model), batches, reduce=False)


def evaluate_prefix(model, tokenizer, prefix: str, seq_len: int, max_batches: int,
                    batch_size: int) -> dict:
    """Validation loss, perplexity and token accuracy on the first samples of an indexed prefix."""
    from megaproc.data.build import open_indexed
    from megaproc.data.gpt_dataset import GPTDataset

    dataset = GPTDataset(open_indexed(prefix, "--prefix"), seq_len, None, seed=0, name="valid")
    count = min(len(dataset), max_batches * batch_size)
    if count == 0:
        raise EvaluateError(f"--prefix {prefix}: no samples of {seq_len + 1} tokens")
    samples = [dataset[i] for i in range(count)]
    return {"prefix": str(prefix),
            **_lm_metrics_of_samples(model, tokenizer, samples, seq_len, batch_size)}


def open_hf_dataset(path: str, split: str | None, text_key: str):
    """The ``datasets.Dataset`` to evaluate and the column used (``text_key`` or input_ids)."""
    from datasets import DatasetDict, load_from_disk

    if not Path(path).is_dir():
        raise EvaluateError(f"--hf-dataset {path}: directory not found")
    try:
        dataset = load_from_disk(path)
    except (FileNotFoundError, ValueError) as exc:
        raise EvaluateError(f"--hf-dataset {path}: not a dataset saved with save_to_disk "
                            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if isinstance(dataset, DatasetDict):
        names = list(dataset.keys())
        if split is None:
            split = next((s for s in ("validation", "test") if s in dataset),
                         names[0] if len(names) == 1 else None)
        if split not in dataset:
            raise EvaluateError(f"--hf-dataset {path}: choose a split with --hf-split "
                                f"({', '.join(names)})")
        dataset = dataset[split]
    elif split is not None:
        raise EvaluateError(f"--hf-dataset {path}: a single dataset has no splits (--hf-split)")
    if text_key in dataset.column_names:
        return dataset, text_key
    if "input_ids" in dataset.column_names:
        return dataset, "input_ids"
    raise EvaluateError(f"--hf-dataset {path}: no {text_key!r} or 'input_ids' column (columns: "
                        f"{', '.join(dataset.column_names)})")


def evaluate_hf_dataset(model, tokenizer, dataset, column: str, seq_len: int, max_batches: int,
                        batch_size: int) -> dict:
    """LM metrics on windows of ``seq_len + 1`` tokens cut from the dataset's first documents
    (consecutive windows share one token, as the indexed samples do)."""
    count = max_batches * batch_size
    needed = count * seq_len + 1
    stream: list[int] = []
    eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    for start in range(0, len(dataset), 256):
        rows = dataset[start:start + 256][column]
        if column == "input_ids":  # already tokenized (e.g. grouped blocks): used as they are
            pieces = [list(map(int, row)) for row in rows]
        else:
            pieces = [ids + eos for ids in tokenizer([r or "" for r in rows],
                                                      add_special_tokens=False)["input_ids"]]
        for piece in pieces:
            stream.extend(piece)
        if len(stream) >= needed:
            break
    windows = min(count, (len(stream) - 1) // seq_len)
    if windows <= 0:
        raise EvaluateError(f"--hf-dataset: fewer than {seq_len + 1} tokens in the dataset")
    samples = [{"tokens": stream[k * seq_len:k * seq_len + seq_len + 1]} for k in range(windows)]
    return _lm_metrics_of_samples(model, tokenizer, samples, seq_len, batch_size)


def _read_inputs(args) -> dict:
    """Read and check every input file before the (slow) model load."""
    inputs = {}
    if args.split:
        from megaproc.eval.task_accuracy import load_eval_records

        if not Path(args.split).is_file():
            raise EvaluateError(f"--split {args.split}: file not found")
        inputs["split"] = load_eval_records(args.split, args.max_examples)
        if not inputs["split"]:
            raise EvaluateError(f"--split {args.split}: no examples")
    if args.prefix:
        from megaproc.data.indexed import IndexedDataset

        if not IndexedDataset.exists(args.prefix):
            raise EvaluateError(f"--prefix {args.prefix}: indexed data not found "
                                f"(expected {args.prefix}.bin and {args.prefix}.idx)")
    if args.hf_dataset:
        inputs["hf_dataset"] = open_hf_dataset(args.hf_dataset, args.hf_split, args.text_key)
    if args.hellaswag:
        from megaproc.eval.hellaswag import load_hellaswag

        inputs["hellaswag"] = load_hellaswag(args.hellaswag, args.max_examples)
    if args.ewok is not None:
        from megaproc.eval.ewok import load_ewok

        inputs["ewok"] = load_ewok(args.ewok or None, max_items=args.max_examples)
    if args.dm_math:
        from megaproc.eval.exact_match import load_examples

        inputs["dm_math"] = load_examples(args.dm_math, args.max_examples)
    return inputs


def run(args) -> dict:
    """Evaluate as the arguments say; returns the JSON result (and writes ``--items-out``)."""
    if not any((args.split, args.prefix, args.hf_dataset, args.hellaswag, args.dm_math)) \
            and args.ewok is None:
        raise EvaluateError("nothing to evaluate: pass --split, --prefix, --hf-dataset, "
                            "--hellaswag, --ewok and/or --dm-math")
    for name in ("max_examples", "seq_len", "max_batches"):
        if getattr(args, name) < 0:
            raise EvaluateError(f"--{name.replace('_', '-')} must be >= 0")
    if args.batch_size <= 0:
        raise EvaluateError("--batch-size must be > 0")
    if args.items_out and not (args.hellaswag or args.dm_math or args.ewok is not None):
        raise EvaluateError("--items-out needs --hellaswag, --ewok or --dm-math")
    if args.items_out and Path(args.items_out).is_dir():
        raise EvaluateError(f"--items-out {args.items_out} is a directory")
    inputs = _read_inputs(args)
    model, tokenizer, where = load_model_and_tokenizer(args)
    from megaproc.eval.loglik import LoglikScorer, context_length, hf_logits_fn

    context = context_length(model)
    seq_len = min(args.seq_len or context, context)
    progress = not args.no_progress
    logits_fn = hf_logits_fn(model)
    result = {"checkpoint" if args.checkpoint else "model": where}
    items: list[dict] = []
    if "split" in inputs:
        result.update(evaluate_split(model, tokenizer, args.split, inputs["split"], seq_len,
                                     args.batch_size))
    if args.prefix:
        result.update(evaluate_prefix(model, tokenizer, args.prefix, seq_len - 1, args.max_batches,
                                      args.batch_size))
    if "hf_dataset" in inputs:
        dataset, column = inputs["hf_dataset"]
        result["hf_dataset"] = {"path": str(args.hf_dataset), "column": column,
                                **evaluate_hf_dataset(model, tokenizer, dataset, column,
                                                      seq_len - 1, args.max_batches,
                                                      args.batch_size)}
    scorer = LoglikScorer(tokenizer, context, args.batch_size, add_bos=args.add_bos,
                          progress=progress)
    if "hellaswag" in inputs:
        from megaproc.eval.hellaswag import evaluate_hellaswag

        result["hellaswag"], rows = evaluate_hellaswag(scorer, logits_fn, inputs["hellaswag"])
        items += rows
    if "ewok" in inputs:
        from megaproc.eval.ewok import evaluate_ewok

        result["ewok"], rows = evaluate_ewok(scorer, logits_fn, inputs["ewok"])
        items += rows
    if "dm_math" in inputs:
        from megaproc.eval.exact_match import ExactMatchEvaluator

        evaluator = ExactMatchEvaluator(tokenizer, context, args.batch_size, progress=progress)
        result["deepmind_math"], rows = evaluator.run(logits_fn, inputs["dm_math"])
        items += rows
    if args.items_out:
        out = Path(args.items_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as handle:
            for row in items:
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        result["items_out"] = str(out)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prints the result as JSON; one-line error and exit code 2 on bad input."""
    args = build_parser().parse_args(argv)
    try:
        # Library chatter must not mix with the JSON; no_grad (not a global switch) so that
        # calling main() in a process leaves autograd as it was.
        with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
            result = run(args)
    except (UserError, ValueError, OSError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return USAGE_ERROR
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
