"""Final evaluation of a model: a loop over the evaluators asked for; prints one JSON object.

    python -m megaproc.evaluate --checkpoint RUN_DIR/checkpoints/step_XXXXXXXX --split SPLIT/test.jsonl
    python -m megaproc.evaluate --model HF_DIR --split SPLIT/test.jsonl [--max-examples N]
    python -m megaproc.evaluate --checkpoint latest:RUN_DIR --prefix DATA/valid_text_document
    python -m megaproc.evaluate --model HF_DIR --hf-dataset C4_VALID_DIR [--text-key text]
    python -m megaproc.evaluate --model HF_DIR --hellaswag hellaswag_val.jsonl --ewok ewok.zip \\
        --dm-math DM_MATH_DIR --items-out items.jsonl [--device cuda --dtype bfloat16]
    torchrun --nproc_per_node 8 -m megaproc.evaluate --checkpoint latest:RUN --hellaswag H.jsonl

``--checkpoint`` takes a megaproc checkpoint (any ZeRO stage, consolidated in memory), a run
directory or ``latest:RUN_DIR``; ``--model`` an exported HuggingFace directory.  Every option
adds one evaluator (:mod:`megaproc.eval.evaluator`) and one section to the JSON object, named as
the evaluator and holding its metrics under the names ``logs/eval.jsonl`` uses:

``--split S.jsonl``      ``"split": {path, heldout_acc, heldout_loss, num_examples, num_dropped,
                         by_lookahead}`` (:mod:`megaproc.eval.task_accuracy`)
``--prefix P``           ``"prefix": {path, seq_len, val_loss, val_ppl, val_token_acc, num_tokens}``
                         (``--reset-position-ids --reset-attention-mask --eod-mask-loss``:
                         the document masking of training, also for ``--hf-dataset``)
``--hf-dataset DIR``     ``"hf_dataset": {path, split, column, seq_len, val_loss, ...}``
                         (:mod:`megaproc.eval.lm_windows`; ``--max-batches 0``: the whole split)
``--hellaswag F.jsonl``  ``"hellaswag": {path, hellaswag_acc, hellaswag_acc_norm,
                         hellaswag_num_examples}`` (exactly lm-eval's ``hellaswag`` task)
``--ewok [DIR_OR_ZIP]``  ``"ewok": {source, ewok_sum_accuracy, ..., ewok_domain}``; no path:
                         ``$EWOK_SRC``, else ``data/eval/ewok_fast_jsonl.zip`` / ``ewok_fast/``
``--dm-math DIR``        ``"dm_math": {path, dm_math_acc, dm_math_num_examples,
                         dm_math_by_split, dm_math_by_module}`` (greedy exact match)

plus ``"model"`` or ``"checkpoint"`` and ``"run": {device, dtype, world_size, batch_size}``.
``--items-out FILE.jsonl`` writes the per-item rows (each with a ``task`` key) of the split,
HellaSwag, EWoK and DeepMind-Math evaluators.

Devices and ranks: ``--device`` (default CUDA when available, else CPU) and ``--dtype`` (default
bfloat16 on CUDA, float32 on CPU).  Under ``torchrun --nproc_per_node N`` or ``deepspeed
--num_gpus N`` the batches of every task are shared over the ranks and gathered (the same
numbers as one process); rank 0 prints the JSON and writes ``--items-out``.  ``--batch-size
auto`` picks the largest batch that fits (:mod:`megaproc.eval.batch_size`).

Bad input - a missing or malformed file (file and line), a wrong EWoK password, a checkpoint of
another architecture, a device that is not there - is one ``error: ...`` line and exit code 2,
before the model loads; progress bars go to stderr (``--no-progress`` turns them off).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import torch

from megaproc import distributed as dist_utils
from megaproc.errors import UserError, one_line, run_cli
from megaproc.eval.batch_size import AutoBatchSize
from megaproc.eval.evaluator import EvalContext, Evaluator
from megaproc.eval.ewok import EwokEvaluator
from megaproc.eval.exact_match import DmMathEvaluator
from megaproc.eval.forward import ModelForward, context_length
from megaproc.eval.hellaswag import HellaswagEvaluator
from megaproc.eval.lm_windows import DOCUMENT_FLAGS, HFDatasetEvaluator, PrefixEvaluator
from megaproc.eval.model_loading import (check_model_source, dtype_name, load_eval_model,
                                         load_eval_tokenizer, resolve_device, resolve_dtype)
from megaproc.eval.task_accuracy import SplitEvaluator
from megaproc.files import atomic_output
from megaproc.tokenizer import pad_id

USAGE_ERROR = 2
ROW_EVALUATORS = ("split", "hellaswag", "ewok", "dm_math")
T = TypeVar("T")


class EvaluateError(UserError, ValueError):
    """Bad input to the evaluation command (reported as one line)."""


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        self.exit(USAGE_ERROR, f"error: {message}\n")


def _batch_size(value: str):
    if value == "auto":
        return value
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {value!r}")
    if size <= 0:
        raise argparse.ArgumentTypeError("must be > 0 (or auto)")
    return size


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
                        help="EWoK jsonl directory or .zip (no value: $EWOK_SRC, else "
                             "data/eval/ewok_fast_jsonl.zip or data/eval/ewok_fast/)")
    parser.add_argument("--dm-math", help="DeepMind-Math prompt/answer jsonl, converted directory "
                                          "or raw mathematics_dataset-v1.0 directory")
    parser.add_argument("--items-out", help="write the per-item rows of split/hellaswag/ewok/"
                                            "dm-math here")
    parser.add_argument("--add-bos", action="store_true",
                        help="put BOS before HellaSwag/EWoK contexts (default: none, as lm-eval)")
    parser.add_argument("--seq-len", type=int, default=0,
                        help="window of --prefix/--hf-dataset samples and the split length limit "
                             "(default: the model's context)")
    parser.add_argument("--max-batches", type=int, default=20,
                        help="--prefix/--hf-dataset batches (default 20; 0 = the whole split)")
    documents = parser.add_argument_group(
        "document masking of --prefix/--hf-dataset windows (as data.reset_position_ids, "
        "data.reset_attention_mask, data.eod_mask_loss in training; EOD = the tokenizer's EOS)")
    documents.add_argument("--reset-position-ids", action="store_true",
                           help="positions restart at 0 after every EOD")
    documents.add_argument("--reset-attention-mask", action="store_true",
                           help="no attention across an EOD (block-diagonal causal mask)")
    documents.add_argument("--eod-mask-loss", action="store_true",
                           help="no loss where the input is an EOD (Megatron's eod_mask_loss)")
    parser.add_argument("--batch-size", type=_batch_size, default=16,
                        help="rows per forward, or auto: the largest that fits (default 16)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda when "
                                         "available, else cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="parameter dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the model's own)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    # The deepspeed launcher passes --local_rank=N to every rank; LOCAL_RANK is read instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help=argparse.SUPPRESS)
    return parser


def check_args(args) -> None:
    """Refuse option combinations that cannot work (before anything is read)."""
    if not any((args.split, args.prefix, args.hf_dataset, args.hellaswag, args.dm_math)) \
            and args.ewok is None:
        raise EvaluateError("nothing to evaluate: pass --split, --prefix, --hf-dataset, "
                            "--hellaswag, --ewok and/or --dm-math")
    for name in ("max_examples", "seq_len", "max_batches"):
        if getattr(args, name) < 0:
            raise EvaluateError(f"--{name.replace('_', '-')} must be >= 0")
    if args.items_out and not (args.split or args.hellaswag or args.dm_math
                               or args.ewok is not None):
        raise EvaluateError("--items-out needs --split, --hellaswag, --ewok or --dm-math")
    if any(document_switches(args).values()) and not (args.prefix or args.hf_dataset):
        raise EvaluateError("--reset-position-ids / --reset-attention-mask / --eod-mask-loss "
                            "need --prefix or --hf-dataset")
    if args.items_out and Path(args.items_out).is_dir():
        raise EvaluateError(f"--items-out {args.items_out} is a directory")


def document_switches(args) -> dict:
    """The document-masking switches of the command line (:mod:`megaproc.eval.lm_windows`)."""
    return {key: bool(getattr(args, key)) for key in DOCUMENT_FLAGS}


def build_evaluators(args) -> list[Evaluator]:
    """One evaluator per option, each reading and checking its inputs now."""
    evaluators: list[Evaluator] = []
    if args.split:
        evaluators.append(SplitEvaluator.from_file(args.split, args.max_examples, args.seq_len))
    if args.prefix:
        evaluators.append(PrefixEvaluator(args.prefix, args.seq_len, args.max_batches,
                                          document_switches(args)))
    if args.hf_dataset:
        evaluators.append(HFDatasetEvaluator(args.hf_dataset, args.hf_split, args.text_key,
                                             args.seq_len, args.max_batches,
                                             document_switches(args)))
    if args.hellaswag:
        evaluators.append(HellaswagEvaluator.from_file(args.hellaswag, args.max_examples,
                                                       args.add_bos))
    if args.ewok is not None:
        evaluators.append(EwokEvaluator.from_source(args.ewok or None, args.max_examples,
                                                    args.add_bos))
    if args.dm_math:
        evaluators.append(DmMathEvaluator.from_path(args.dm_math, args.max_examples))
    return evaluators


def on_every_rank(step: Callable[[], T], world_size: int) -> T:
    """Run ``step`` on every rank; when it fails with a user error on any rank, every rank
    raises it (one rank alone must not leave the others waiting in a collective)."""
    error = None
    try:
        value = step()
    except UserError as exc:
        error = exc
    if world_size > 1:
        messages = dist_utils.all_gather_objects(None if error is None else one_line(error))
        failed = next(((r, m) for r, m in enumerate(messages) if m), None)
        if failed is not None and error is None:
            raise EvaluateError(f"rank {failed[0]}: {failed[1]}")
    if error is not None:
        raise error
    return value


def write_items(path: str, rows: list[dict]) -> None:
    """The per-item rows as JSON lines, written atomically (temp file, then rename)."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def run(args) -> dict:
    """Evaluate as the arguments say; the JSON result (every rank) and ``--items-out``
    (rank 0)."""
    rank, world_size = dist_utils.rank(), dist_utils.world_size()
    check_args(args)
    device = resolve_device(args.device, dist_utils.local_rank())
    dtype = resolve_dtype(args.dtype, device)
    evaluators = on_every_rank(lambda: build_evaluators(args), world_size)
    path, _ = on_every_rank(lambda: check_model_source(args.checkpoint, args.model), world_size)
    tokenizer = on_every_rank(lambda: load_eval_tokenizer(path, bool(args.checkpoint),
                                                          args.tokenizer), world_size)
    model = on_every_rank(lambda: load_eval_model(path, bool(args.checkpoint), device, dtype),
                          world_size)
    forward = ModelForward(model)
    auto = AutoBatchSize(forward, device, world_size, pad_id(tokenizer)) \
        if args.batch_size == "auto" else None
    ctx = EvalContext(forward, tokenizer, context_length(model), auto or args.batch_size,
                      device, rank, world_size, progress=not args.no_progress)
    result: dict = {"checkpoint" if args.checkpoint else "model": str(path)}
    items: list[dict] = []
    for evaluator in evaluators:
        evaluated = evaluator.run(ctx)
        result[evaluator.name] = evaluated.section()
        items += evaluated.rows
    result["run"] = {"device": str(device), "dtype": dtype_name(dtype), "world_size": world_size,
                     "batch_size": {"auto": dict(auto.chosen)} if auto else args.batch_size}
    if args.items_out:
        if rank == 0:
            write_items(args.items_out, items)
        result["items_out"] = str(args.items_out)
    return result


def _main(args) -> int:
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or \
        int(os.environ.get("SLURM_NTASKS", "1")) > 1
    try:
        # Library chatter (DeepSpeed's start-up lines included) must not mix with the JSON;
        # no_grad (not a global switch) so that calling main() leaves autograd as it was.
        with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
            if launched:
                dist_utils.init_distributed(args.local_rank)
            result = run(args)
        if dist_utils.rank() == 0:
            print(json.dumps(result, indent=2), flush=True)
    finally:
        if launched:
            dist_utils.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prints the result as JSON (rank 0); one-line error and exit code 2 on bad
    input."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return int(exc.code or 0)
    return run_cli(_main, args, also=(OSError,))


if __name__ == "__main__":
    sys.exit(main())
