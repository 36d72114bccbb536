"""``--batch-size auto``: the largest number of rows per forward that fits the device.

The rule is asked per batch plan with the plan's longest row (tokens, rounded up to a power of
two and capped at the model's context) and whether its batches use block masks
(:mod:`megaproc.eval.packing`), and remembers each answer:

CUDA
    Probe forwards of ``rows x tokens`` (a block-masked probe when the plan packs: the mask and
    the attention kernel it forces cost memory), starting at :data:`CUDA_START_ROWS` rows and
    halving on ``torch.OutOfMemoryError`` (lm-eval's search); the allocator cache is emptied
    between tries.
CPU
    Half of the memory available now (``psutil``), divided by an upper bound of one row's peak
    memory in a no-grad forward (the logits, a layer's hidden, MLP and attention activations,
    the block mask), capped at :data:`CPU_MAX_ROWS` - past a few dozen rows a CPU forward gets
    no faster per row.

Under several ranks every rank asks at the same points (every rank plans the same batches) and
the smallest answer wins, so all ranks batch alike.
"""

from __future__ import annotations

from typing import Callable

import psutil
import torch

from megaproc.errors import UserError
from megaproc.eval.forward import ModelForward, context_length, unwrap
from megaproc.eval.sharding import min_over_ranks

CUDA_START_ROWS = 256
CPU_MAX_ROWS = 64
CPU_MEMORY_SHARE = 0.5
MIN_PROBE_TOKENS = 16


class BatchSizeError(UserError, RuntimeError):
    """Not even one row fits on the device."""


def largest_fitting_batch(try_rows: Callable[[int], None], start: int,
                          on_oom: Callable[[], None] | None = None) -> int:
    """The first of ``start, start // 2, ..., 1`` for which ``try_rows(rows)`` raises no
    ``torch.OutOfMemoryError`` (``on_oom`` runs after each failure, e.g. to empty the CUDA
    cache)."""
    rows = max(1, int(start))
    while True:
        try:
            try_rows(rows)
            return rows
        except torch.OutOfMemoryError:
            if on_oom is not None:
                on_oom()
            if rows == 1:
                raise BatchSizeError("out of memory with a single row per forward: the model "
                                     "does not fit this device (try --dtype bfloat16 or a "
                                     "shorter --seq-len)") from None
            rows //= 2


def bytes_per_row(config, tokens: int, element_size: int, block_mask: bool) -> int:
    """Upper bound of one row's peak memory in a no-grad forward of ``tokens`` tokens."""
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    hidden = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0) or 0)
    inner = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
                or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1) or 1)
    # logits (model dtype) + their float32 log-softmax; residual, attention and MLP activations
    # of one layer; attention scores and probabilities; the block mask (one byte per entry).
    per_token = vocab * (element_size + 4) + (8 * hidden + 3 * inner) * element_size
    attention = 2 * heads * tokens * tokens * element_size + (tokens * tokens if block_mask else 0)
    return tokens * per_token + attention


def cpu_rows(config, tokens: int, element_size: int, block_mask: bool,
             available: int | None = None) -> int:
    """Rows per forward on the CPU: a share of the available memory over one row's bound."""
    if available is None:
        available = psutil.virtual_memory().available
    need = max(1, bytes_per_row(config, tokens, element_size, block_mask))
    return max(1, min(CPU_MAX_ROWS, int(CPU_MEMORY_SHARE * available) // need))


class AutoBatchSize:
    """The ``batch_size`` rule of an :class:`~megaproc.eval.evaluator.EvalContext` for
    ``--batch-size auto``; ``chosen`` maps ``"<tokens>[/block]"`` to the rows picked."""

    def __init__(self, forward: ModelForward, device: torch.device | str, world_size: int = 1,
                 pad_id: int = 0, start: int = CUDA_START_ROWS):
        self.forward = forward
        self.device = torch.device(device)
        self.world_size = int(world_size)
        self.pad_id = int(pad_id)
        self.start = int(start)
        self.config = getattr(unwrap(forward.model), "config", None)
        self.max_length = context_length(forward.model)
        self.chosen: dict[str, int] = {}

    def __call__(self, longest: int, block_mask: bool = False) -> int:
        tokens = MIN_PROBE_TOKENS
        while tokens < longest:
            tokens *= 2
        tokens = min(tokens, max(longest, self.max_length))
        key = f"{tokens}/block" if block_mask else str(tokens)
        if key not in self.chosen:
            if self.device.type == "cuda":
                rows = largest_fitting_batch(lambda n: self._probe(n, tokens, block_mask),
                                             self.start, on_oom=torch.cuda.empty_cache)
            else:
                element_size = torch.empty((), dtype=self.forward.dtype).element_size()
                rows = cpu_rows(self.config, tokens, element_size, block_mask)
            self.chosen[key] = min_over_ranks(rows, self.world_size)
        return self.chosen[key]

    @torch.no_grad()
    def _probe(self, rows: int, tokens: int, block_mask: bool) -> None:
        ids = torch.full((rows, tokens), self.pad_id, dtype=torch.long, device=self.device)
        if block_mask:
            causal = torch.ones(rows, tokens, tokens, dtype=torch.bool, device=self.device).tril()
            positions = torch.arange(tokens, device=self.device).expand(rows, tokens)
            logits = self.forward(ids, self.forward.block_mask(causal), positions)
        else:
            logits = self.forward(ids, torch.ones_like(ids))
        torch.log_softmax(logits[:, -1:].float(), dim=-1)
        del logits
        torch.cuda.synchronize(self.device)
