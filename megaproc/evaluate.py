"""Final evaluation of a trained model; prints one JSON object.

    python -m megaproc.evaluate --checkpoint RUN_DIR/checkpoints/step_XXXXXXXX --split SPLIT/test.jsonl
    python -m megaproc.evaluate --model HF_DIR --split SPLIT/test.jsonl [--max-examples N]
    python -m megaproc.evaluate --checkpoint latest:RUN_DIR --prefix DATA/valid_text_document

``--checkpoint`` takes a megaproc checkpoint (any ZeRO stage), a run directory or
``latest:RUN_DIR``; ``--model`` an exported HuggingFace directory.  With ``--split`` (a split
``.jsonl`` of ``data_tools.build_splits``) the output has ``accuracy`` (greedy full-word answer
equals one of ``output_texts``; see :mod:`megaproc.eval.answer_correctness`), ``answer_loss`` (mean
cross entropy per answer token of ``output_texts[0]``), ``num_examples`` and ``num_dropped``
(longer than the model's context).  With ``--prefix`` (an indexed ``.bin/.idx`` pair) it adds
``val_loss``, ``val_ppl``, ``val_token_acc`` and ``num_tokens`` over ``--max-batches``
batches of ``--seq-len`` tokens.  Bad input ends with a one-line ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Sequence

import torch

USAGE_ERROR = 2


class EvaluateError(ValueError):
    """Bad input to the evaluation command (reported as one line)."""


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        self.exit(USAGE_ERROR, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m megaproc.evaluate``."""
    parser = _OneLineParser(prog="python -m megaproc.evaluate",
                            description="Evaluate a checkpoint or exported model on a synthetic "
                                        "split (accuracy, answer loss) and/or an indexed prefix.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint dir, run dir or latest:RUN_DIR")
    source.add_argument("--model", help="exported HuggingFace model directory")
    parser.add_argument("--split", help="split .jsonl (e.g. .../test.jsonl)")
    parser.add_argument("--max-examples", type=int, default=0, help="first N examples (0 = all)")
    parser.add_argument("--prefix", help="indexed data prefix for val loss / perplexity")
    parser.add_argument("--seq-len", type=int, default=0,
                        help="context for --prefix samples and the split length limit "
                             "(default: the model's maximum)")
    parser.add_argument("--max-batches", type=int, default=20, help="--prefix batches (default 20)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per forward (default 16)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the model's own)")
    return parser


def load_model_and_tokenizer(args):
    """The model (CPU, eval mode) and tokenizer named by the arguments."""
    if args.checkpoint:
        from megaproc.checkpoint import resolve_checkpoint_ref
        from megaproc.export import load_checkpoint_model, load_checkpoint_tokenizer

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


def model_context(model) -> int:
    """The model's maximum sequence length."""
    config = model.config
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    return 2048


def evaluate_split(model, tokenizer, path: str, records: list[dict], max_tokens: int,
                   batch_size: int) -> dict:
    """Accuracy and answer loss on split records (see :mod:`megaproc.eval.task_accuracy`)."""
    from megaproc.eval.task_accuracy import HeldoutEvaluator

    evaluator = HeldoutEvaluator(records, tokenizer, max_tokens, batch_size=batch_size)
    result = evaluator.run(lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits)
    return {"split": str(path), "accuracy": result["heldout_acc"],
            "answer_loss": result["heldout_loss"], "num_examples": result["num_examples"],
            "num_dropped": result["num_dropped"]}


def evaluate_prefix(model, tokenizer, prefix: str, seq_len: int, max_batches: int,
                    batch_size: int) -> dict:
    """Validation loss, perplexity and token accuracy on the first samples of an indexed prefix."""
    from megaproc.data.batch import collate
    from megaproc.data.build import open_indexed
    from megaproc.data.gpt_dataset import GPTDataset
    from megaproc.eval.lm import lm_metrics
    from megaproc.tokenizer import pad_id

    dataset = GPTDataset(open_indexed(prefix, "--prefix"), seq_len, None, seed=0, name="valid")
    count = min(len(dataset), max_batches * batch_size)
    if count == 0:
        raise EvaluateError(f"--prefix {prefix}: no samples of {seq_len + 1} tokens")
    batches = (collate([dataset[i] for i in range(start, min(count, start + batch_size))],
                       pad_id(tokenizer), pad_to=seq_len + 1)
               for start in range(0, count, batch_size))
    result = lm_metrics(lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits,
                        batches, reduce=False)
    return {"prefix": str(prefix), **result}


def run(args) -> dict:
    """Evaluate as the arguments say; returns the JSON result."""
    if not args.split and not args.prefix:
        raise EvaluateError("nothing to evaluate: pass --split PATH.jsonl and/or --prefix PREFIX")
    for name in ("max_examples", "seq_len", "max_batches"):
        if getattr(args, name) < 0:
            raise EvaluateError(f"--{name.replace('_', '-')} must be >= 0")
    if args.batch_size <= 0:
        raise EvaluateError("--batch-size must be > 0")
    records = None
    if args.split:  # check the input before the (slow) model load
        from megaproc.eval.task_accuracy import load_eval_records

        if not Path(args.split).is_file():
            raise EvaluateError(f"--split {args.split}: file not found")
        records = load_eval_records(args.split, args.max_examples)
        if not records:
            raise EvaluateError(f"--split {args.split}: no examples")
    if args.prefix:
        from megaproc.data.indexed import IndexedDataset

        if not IndexedDataset.exists(args.prefix):
            raise EvaluateError(f"--prefix {args.prefix}: indexed data not found "
                                f"(expected {args.prefix}.bin and {args.prefix}.idx)")
    torch.set_grad_enabled(False)
    model, tokenizer, where = load_model_and_tokenizer(args)
    context = model_context(model)
    seq_len = min(args.seq_len or context, context)
    result = {"checkpoint" if args.checkpoint else "model": where}
    if args.split:
        result.update(evaluate_split(model, tokenizer, args.split, records, seq_len,
                                     args.batch_size))
    if args.prefix:
        result.update(evaluate_prefix(model, tokenizer, args.prefix, seq_len - 1, args.max_batches,
                                      args.batch_size))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prints the result as JSON; one-line error and exit code 2 on bad input."""
    args = build_parser().parse_args(argv)
    from megaproc.errors import user_error_types
    from megaproc.export import ExportError

    try:
        with contextlib.redirect_stdout(sys.stderr):  # library chatter must not mix with the JSON
            result = run(args)
    except (EvaluateError, ExportError, ValueError, OSError, *user_error_types()) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return USAGE_ERROR
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
