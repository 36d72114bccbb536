"""Rows for continuation scoring: one packed row per context (context reuse), or one per pair.

Per-pair rows (lm-eval's layout)
    ``(context + continuation)[-(max_length + 1):][:-1]``: the last ``len(continuation)``
    positions predict the continuation.  Used for pairs that do not fit the model's context
    (the left truncation then depends on the continuation) and whenever the model cannot take
    a block mask (:attr:`megaproc.eval.forward.ModelForward.supports_block_mask`).

Packed rows (context reuse)
    All continuations of one context share a row: ``context + cont_1[:-1] + cont_2[:-1] + ...``
    with position ids ``0 .. C-1`` for the context and ``C .. C + len(cont_k) - 2`` for every
    continuation, and a block mask: context tokens attend causally to the context, continuation
    ``k`` to the whole context and causally to itself, never to another continuation.  Each
    token therefore sees exactly what it sees in its own per-pair row, at the same positions,
    so the log-likelihoods equal the per-pair ones up to float rounding.  The first token of
    every continuation is predicted by the last context position; token ``j > 0`` by the
    position of token ``j - 1``.  A row never holds more than ``max_length`` tokens (a context
    with many long continuations is split over several rows).  HellaSwag's four endings of one
    context cost ``C + sum(L_k - 1)`` tokens instead of ``4C + sum(L_k - 1)``.

Scoring a batch (:func:`score_batch`)
    Rows are right-padded; the logits of every predicting position of the batch are gathered at
    once, log-softmaxed in float32 and summed per continuation in float64 (one vectorised pass
    instead of a handful of small tensor operations per request).  Padding never changes a
    scored position: causal rows never look right, and in a block mask pads are invisible (a
    pad only attends to itself, so no row of the attention is empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from megaproc.eval.rows import right_padded

CONTEXT_SEGMENT = 0
PAD_SEGMENT = -1


@dataclass(frozen=True)
class Span:
    """One scored continuation inside a row: its request index, the row positions whose
    logits predict its tokens, and the tokens."""

    request: int
    positions: tuple[int, ...]
    targets: tuple[int, ...]


@dataclass(frozen=True)
class ScoreRow:
    """Model input of one row; ``segments`` is None for a plain causal row, else the segment
    of every token (0 = shared context, k > 0 = continuation k) and ``position_ids`` the
    positions the model sees."""

    tokens: tuple[int, ...]
    spans: tuple[Span, ...]
    segments: tuple[int, ...] | None = None
    position_ids: tuple[int, ...] | None = None


def pair_row(request: int, context: Sequence[int], continuation: Sequence[int],
             max_length: int) -> ScoreRow:
    """The per-pair row of lm-eval: the pair cut to its last ``max_length + 1`` tokens, minus
    the final one (only ever a label)."""
    tokens = tuple((tuple(context) + tuple(continuation))[-(max_length + 1):][:-1])
    first = len(tokens) - len(continuation)
    return ScoreRow(tokens, (Span(request, tuple(range(first, len(tokens))),
                                  tuple(continuation)),))


def packed_rows(requests: Sequence[int], context: Sequence[int],
                continuations: Sequence[Sequence[int]], max_length: int) -> list[ScoreRow]:
    """Rows sharing ``context`` among ``continuations`` (each must fit: ``len(context) +
    len(continuation) - 1 <= max_length``); a row takes continuations while it stays within
    ``max_length`` tokens.  A row with one continuation is the plain per-pair row."""
    size = len(context)
    rows, group, used = [], [], size
    for request, continuation in zip(requests, continuations):
        extra = len(continuation) - 1
        if group and used + extra > max_length:
            rows.append(_one_row(group, context, max_length))
            group, used = [], size
        group.append((request, continuation))
        used += extra
    if group:
        rows.append(_one_row(group, context, max_length))
    return rows


def _one_row(group, context: Sequence[int], max_length: int) -> ScoreRow:
    if len(group) == 1:
        request, continuation = group[0]
        return pair_row(request, context, continuation, max_length)
    size = len(context)
    tokens, segments, positions = list(context), [CONTEXT_SEGMENT] * size, list(range(size))
    spans = []
    for k, (request, continuation) in enumerate(group, start=1):
        start = len(tokens)
        body = list(continuation[:-1])
        tokens += body
        segments += [k] * len(body)
        positions += range(size, size + len(body))
        predicting = (size - 1,) + tuple(range(start, start + len(body)))
        spans.append(Span(request, predicting, tuple(continuation)))
    return ScoreRow(tuple(tokens), tuple(spans), tuple(segments), tuple(positions))


def build_rows(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int,
               reuse_context: bool) -> list[ScoreRow]:
    """Rows scoring every ``(context, continuation)`` pair once (span ``request`` = index in
    ``pairs``), longest first.  With ``reuse_context`` the pairs of one context that fit the
    model share packed rows; the others get per-pair rows."""
    rows: list[ScoreRow] = []
    if reuse_context:
        groups: dict[tuple, list[int]] = {}
        for index, (context, continuation) in enumerate(pairs):
            if len(context) + len(continuation) - 1 <= max_length:
                groups.setdefault(tuple(context), []).append(index)
            else:
                rows.append(pair_row(index, context, continuation, max_length))
        for context, members in groups.items():
            rows += packed_rows(members, context, [pairs[i][1] for i in members], max_length)
    else:
        rows = [pair_row(i, context, continuation, max_length)
                for i, (context, continuation) in enumerate(pairs)]
    # Longest first (little padding, and a batch that does not fit shows up at once); ties by
    # content, so the order never depends on how the pairs were listed.
    rows.sort(key=lambda row: (-len(row.tokens), row.tokens))
    return rows


def block_attention(segments: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, T, T]`` (query, key) "may attend" of padded segment ids ``[B, T]``:
    causal, a continuation sees the context and itself, pads see only themselves."""
    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]
    context_key = (segments == CONTEXT_SEGMENT)[:, None, :]
    real_key = (segments != PAD_SEGMENT)[:, None, :]
    allowed = causal & (same | context_key) & real_key
    return allowed | torch.eye(width, dtype=torch.bool, device=segments.device)


def batch_inputs(rows: Sequence[ScoreRow], pad_id: int, block_mask) -> tuple:
    """``(input_ids, attention_mask, position_ids or None)`` of a batch of rows.

    Without packed rows: a 2-D padding mask (the per-pair layout exactly as before).  With
    any packed row: ``block_mask(block_attention(...))`` and explicit position ids.
    """
    ids, mask = right_padded([list(row.tokens) for row in rows], pad_id)
    if all(row.segments is None for row in rows):
        return ids, mask, None
    segments = torch.full(ids.shape, PAD_SEGMENT, dtype=torch.long)
    positions = torch.zeros(ids.shape, dtype=torch.long)
    for r, row in enumerate(rows):
        n = len(row.tokens)
        segments[r, :n] = torch.tensor(row.segments or [CONTEXT_SEGMENT] * n)
        positions[r, :n] = torch.tensor(row.position_ids or range(n))
    return ids, block_mask(block_attention(segments)), positions


@torch.no_grad()
def score_batch(logits_fn, rows: Sequence[ScoreRow], pad_id: int, device) -> list[tuple]:
    """``(request, logprob, num_tokens, is_greedy)`` of every span of ``rows`` (one forward)."""
    block_mask = getattr(logits_fn, "block_mask", None)
    ids, mask, positions = batch_inputs(rows, pad_id, block_mask)
    if positions is None:
        logits = logits_fn(ids.to(device), mask.to(device))
    else:
        logits = logits_fn(ids.to(device), mask.to(device), positions.to(device))
    row_index, position_index, targets, span_index = [], [], [], []
    spans = [span for row in rows for span in row.spans]
    k = 0
    for r, row in enumerate(rows):
        for span in row.spans:
            row_index += [r] * len(span.positions)
            position_index += span.positions
            targets += span.targets
            span_index += [k] * len(span.positions)
            k += 1
    picked_logits = logits[torch.tensor(row_index, device=logits.device),
                           torch.tensor(position_index, device=logits.device)].float()
    target = torch.tensor(targets, device=logits.device)
    logp = torch.log_softmax(picked_logits, dim=-1)
    picked = logp.gather(-1, target[:, None]).squeeze(-1).double().cpu()
    missed = (logp.argmax(-1) != target).double().cpu()
    which = torch.tensor(span_index)
    sums = torch.zeros(len(spans), dtype=torch.float64).index_add_(0, which, picked)
    misses = torch.zeros(len(spans), dtype=torch.float64).index_add_(0, which, missed)
    return [(span.request, float(total), len(span.targets), bool(miss == 0))
            for span, total, miss in zip(spans, sums.tolist(), misses.tolist())]


def dummy_forward(logits_fn, pad_id: int, device) -> None:
    """The one-token forward a rank without work runs to keep collective forwards in step."""
    ids = torch.tensor([[pad_id]], device=device)
    logits_fn(ids, torch.ones_like(ids))
