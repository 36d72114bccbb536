"""The one Evaluator protocol, shared by ``python -m megaproc.evaluate`` and training (the
evaluation hook, :mod:`megaproc.hooks.evaluation`, and the curriculum's held-out evaluation).

An evaluator is built from its inputs and checks them when it is built - before any model
loads (a malformed row names its file, line and field; a wrong EWoK password is one line) -
and then runs on an :class:`EvalContext`: "score these token batches" (``forward``), the
tokenizer, the model's context, the batch size and the rank / world size.  The work is cut
into batches from the whole item list and shared over the ranks by
:func:`megaproc.eval.sharding.run_in_lockstep`, so every rank runs the same number of forwards
(ZeRO-3 forwards are collective) and returns the same :class:`EvalResult`: metrics, per-item
rows (optional) and where the data came from.

Metric names are the names of ``logs/eval.jsonl`` (one name per quantity, the seeds' names
where a seed names them): the command prints ``{evaluator.name: {**info, **metrics}}`` and a
training record holds :func:`flat_metrics` of the same metrics - a nested breakdown
``{"by_lookahead": {"3": {"heldout_acc": x}}}`` becomes the field ``by_lookahead/3/heldout_acc``.

=============  ==========================================================================
evaluator      metrics
=============  ==========================================================================
split          heldout_acc, heldout_loss, num_examples, num_dropped,
               by_lookahead/<L>/{heldout_acc, num_examples}
prefix         val_loss, val_ppl, val_token_acc, num_tokens
hf_dataset     val_loss, val_ppl, val_token_acc, num_tokens
validation     (training) val_loss, ... of the validation blend, or per named source
               val_loss/<name>, val_ppl/<name>, val_token_acc/<name>, num_tokens/<name>
hellaswag      hellaswag_acc, hellaswag_acc_norm, hellaswag_num_examples
ewok           ewok_{sum,mean}_accuracy[_t1|_t2], ewok_num_items, ewok_domain/<Domain>,
               ewok_mean_domain/<Domain>
dm_math        dm_math_acc, dm_math_num_examples, dm_math_by_split/<split>,
               dm_math_by_module/<split>/<module>
=============  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol, Union

import torch

from megaproc.eval.forward import LogitsFn

# A fixed number of rows per forward, or a rule giving it from the longest row (tokens) and
# whether the batch uses block masks (``--batch-size auto``, :mod:`megaproc.eval.batch_size`).
BatchSize = Union[int, Callable[..., int]]


def rows_per_batch(batch_size: BatchSize, longest: int, block_mask: bool = False) -> int:
    """The number of rows per forward for batches whose longest row has ``longest`` tokens.

    With an automatic rule this may be collective (every rank must ask at the same point,
    which holds because every rank plans the same batches)."""
    if callable(batch_size):
        return max(1, int(batch_size(longest, block_mask)))
    return max(1, int(batch_size))


@dataclass
class EvalContext:
    """What an evaluator runs on.

    ``forward(input_ids, attention_mask[, position_ids]) -> logits`` (a
    :class:`~megaproc.eval.forward.ModelForward` of a model or DeepSpeed engine);
    ``max_length`` the model's context; ``batch_size`` rows per forward (or a rule);
    ``device`` where inputs go; ``rank``/``world_size`` how the work is shared.
    """

    forward: LogitsFn
    tokenizer: Any
    max_length: int
    batch_size: BatchSize = 16
    device: torch.device | str = "cpu"
    rank: int = 0
    world_size: int = 1
    progress: bool = False


@dataclass
class EvalResult:
    """``metrics`` (the eval.jsonl names, breakdowns nested), per-item ``rows`` (each with a
    ``task`` key) and ``info`` on the data (path, column, ...)."""

    metrics: dict
    rows: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def section(self) -> dict:
        """The evaluator's section of the command's JSON: ``{**info, **metrics}``."""
        return {**self.info, **self.metrics}


class Evaluator(Protocol):
    """Built from checked inputs; ``run`` is collective when ``ctx.world_size > 1`` and gives
    every rank the same result."""

    name: ClassVar[str]

    def run(self, ctx: EvalContext) -> EvalResult:
        """Evaluate the context's model; every rank must call it."""
        ...


def flat_metrics(metrics: dict, prefix: str = "") -> dict:
    """Metrics as flat ``logs/eval.jsonl`` fields: nested dicts joined with ``/``."""
    flat: dict = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_metrics(value, f"{name}/"))
        else:
            flat[name] = value
    return flat
