"""Token losses and masked metrics: the one copy used by training, validation and evaluation.

Conventions: ``logits`` are [B, T, V] next-token logits, ``labels`` [B, T] the next tokens with
:data:`IGNORE_INDEX` on padding (see :mod:`megaproc.data.batch`); per-token losses are float32
[B, T] with 0 where the label is ignored.

Training losses (``train.loss``):

``mean``
    token-mean cross entropy over every label token.
``weighted``
    the whole sequence trains, answer tokens up-weighted as in the original ``pptrain.py``:
    with ``N`` label tokens and ``P`` answer tokens in the micro-batch, every answer token gets
    weight ``w_pred = 1 + N / P`` and every other token weight 1, and the loss is the weighted
    mean ``sum_t w_t ce_t / sum_t w_t`` (a batch without answer tokens gives the token mean).
    The answer tokens then carry ``P + N`` of the ``2N`` total weight, at least half of the
    gradient however short the answer is.  The answer tokens are the answer's own tokens
    (the batch's ``word_mask``); the eos after the answer trains with weight 1 like the prompt.
    Up-weighting that eos as well slowed learning the answers (on the symbolic task it
    contradicts the next-vertex targets, see ``answer_word``): on symbolic graph search
    (n = 26, a 4-layer width-128 model, batch 64) the held-out accuracy on lookahead-0
    examples stayed at 0.35 for 800 steps with it and reached 0.65 within 200 steps without it.
``answer_only``
    token-mean cross entropy over the answer tokens and the eos after them (prompt/answer data
    such as DeepMind Mathematics, whose generations must learn to stop); a micro-batch without
    answer tokens contributes a zero loss.
``answer_word``
    token-mean cross entropy over the answer's own tokens only (``word_mask``): one prediction
    at the end of each prompt, as the search model of Saparov et al. is trained.  For the
    symbolic graph-search form this is the loss to use: its prompt's end is not marked, so an
    eos trained after the answer contradicts the examples with a longer path so far (after
    ``PATH 2 3`` one example's target is the eos, its successor's the next vertex ``6``).

Several valid answers (graph search): the live task source adds one row per *other* valid
answer of an example (``example_id`` says which example a row answers, ``primary`` marks the
``output_texts[0]`` row).  Only primary rows count for ``mean``/``answer_only``/``answer_word`` and for the
logged loss; ``weighted`` accepts any valid answer: an example's answer term is the marginal
negative log-likelihood ``-log sum_i P(answer_i | prompt)`` of its valid answers (each
``P(answer_i | prompt)`` the product over the answer's tokens), in place of the summed
answer-token cross entropy of ``output_texts[0]``, with the same weight ``w_pred``.  With one
answer per example this is exactly the formula above.

The logged ``loss`` is always the unweighted token-mean over the primary rows' tokens that train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megaproc.data.batch import IGNORE_INDEX

LOSS_KINDS = ("mean", "weighted", "answer_only", "answer_word")


def label_mask(labels: torch.Tensor) -> torch.Tensor:
    """Bool [B, T]: positions with a real label (not padding)."""
    return labels != IGNORE_INDEX


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy [B, T] in float32 (0 on ignored labels)."""
    flat = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="none")
    return flat.view(labels.shape)


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_token`` over ``mask`` (0 when the mask is empty)."""
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def answer_weights(mask: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Per-token weights [B, T]: ``1 + N/P`` on answer tokens, 1 on other label tokens, 0 on pads."""
    mask = mask.bool()
    answer = answer_mask.to(mask.device).bool() & mask
    total, pred = mask.sum(), answer.sum()
    weights = mask.to(torch.float32)
    if pred > 0:
        weights = torch.where(answer, 1.0 + total.float() / pred.float(), weights)
    return weights


def weighted_token_loss(per_token: torch.Tensor, mask: torch.Tensor,
                        answer_mask: torch.Tensor) -> torch.Tensor:
    """Weighted mean of ``per_token`` [B, T] with :func:`answer_weights`."""
    weights = answer_weights(mask, answer_mask).to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1e-9)


def training_mask(kind: str, labels: torch.Tensor, answer_mask: torch.Tensor,
                  primary: torch.Tensor | None = None,
                  word_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The tokens whose loss is logged (and, but for ``weighted``'s weights, trained)."""
    mask = label_mask(labels)
    if primary is not None:
        mask = mask & primary.to(mask.device).bool()[:, None]
    if kind == "answer_only":
        mask = mask & answer_mask.to(mask.device).bool()
    elif kind == "answer_word":
        mask = mask & (answer_mask if word_mask is None else word_mask).to(mask.device).bool()
    return mask


def segment_logsumexp(values: torch.Tensor, segments: torch.Tensor, count: int) -> torch.Tensor:
    """``log(sum(exp(values[segments == k])))`` for ``k < count`` (differentiable)."""
    top = torch.full((count,), float("-inf"), dtype=values.dtype, device=values.device)
    top = top.scatter_reduce(0, segments, values.detach(), reduce="amax")
    sums = torch.zeros(count, dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, segments, torch.exp(values - top[segments]))
    return top + torch.log(sums)


def any_answer_weighted_loss(per_token: torch.Tensor, labels: torch.Tensor,
                             answer_mask: torch.Tensor, example_id: torch.Tensor,
                             primary: torch.Tensor) -> torch.Tensor:
    """``weighted`` with several valid answers per example (see the module docstring)."""
    mask = label_mask(labels)
    answer = answer_mask.to(mask.device).bool() & mask
    primary = primary.to(mask.device).bool()[:, None]
    example_id = example_id.to(mask.device)
    total = (mask & primary).sum()
    pred = (answer & primary).sum()
    if pred == 0:
        return masked_mean(per_token, mask & primary)
    w_pred = 1.0 + total.float() / pred.float()
    prompt_part = (per_token * (mask & ~answer & primary)).sum()
    row_nll = (per_token * answer).sum(dim=1)
    marginal = -segment_logsumexp(-row_nll, example_id, int(example_id.max()) + 1)
    denominator = (total - pred).float() + w_pred * pred.float()
    return (prompt_part + w_pred * marginal.sum()) / denominator


def training_loss(kind: str, per_token: torch.Tensor, labels: torch.Tensor,
                  answer_mask: torch.Tensor, example_id: torch.Tensor | None = None,
                  primary: torch.Tensor | None = None,
                  word_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The loss to backpropagate for ``train.loss = kind`` (see the module docstring).

    ``answer_mask`` [B, T] marks the answer tokens and the eos after them (what
    ``answer_only`` trains), ``word_mask`` [B, T] the answer's own tokens (what ``weighted``
    up-weights and ``answer_word`` trains; ``answer_mask`` when None).
    ``example_id``/``primary`` [B] describe rows of alternative valid answers; without
    alternatives (all rows primary) the plain formulas apply.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r} (expected one of {list(LOSS_KINDS)})")
    alternatives = primary is not None and not bool(primary.all())
    if kind == "weighted":
        weighted = answer_mask if word_mask is None else word_mask
        if alternatives:
            return any_answer_weighted_loss(per_token, labels, weighted, example_id, primary)
        return weighted_token_loss(per_token, label_mask(labels), weighted)
    return masked_mean(per_token, training_mask(kind, labels, answer_mask,
                                                primary if alternatives else None, word_mask))


def token_weights(kind: str, labels: torch.Tensor, answer_mask: torch.Tensor,
                  word_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Float [B, T] per-token weights whose weighted mean is ``training_loss(kind, ...)`` of the
    same rows (one answer per example): 1 on the tokens ``kind`` trains (``mean``,
    ``answer_only``, ``answer_word``: :func:`training_mask`), :func:`answer_weights` for
    ``weighted`` (``N`` and ``P`` counted over these rows)."""
    if kind == "weighted":
        return answer_weights(label_mask(labels), answer_mask if word_mask is None else word_mask)
    return training_mask(kind, labels, answer_mask, word_mask=word_mask).to(torch.float32)


def per_source_loss(kinds: dict[int, str], default_kind: str, sources: torch.Tensor,
                    per_token: torch.Tensor, labels: torch.Tensor, answer_mask: torch.Tensor,
                    word_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, trained mask)`` when rows of some blend sources train with their own loss.

    ``kinds`` maps a source id to its loss kind (e.g. the synthetic mixin's ``data.mixin_loss``),
    every other row uses ``default_kind`` (``train.loss``).  Each group of rows gets the
    weights of its kind (:func:`token_weights`, normalised within the group as that kind
    would be alone), and the loss is the weighted mean over the whole micro-batch: with one
    kind throughout it equals :func:`training_loss` of that kind.
    """
    sources = sources.to(labels.device)
    weights = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    groups = {kind: torch.zeros_like(sources, dtype=torch.bool) for kind in {default_kind,
                                                                           *kinds.values()}}
    for row_source in sources.unique().tolist():
        groups[kinds.get(int(row_source), default_kind)] |= sources == row_source
    for kind, rows in groups.items():
        if rows.any():
            weights[rows] = token_weights(kind, labels[rows], answer_mask[rows],
                                          None if word_mask is None else word_mask[rows])
    loss = (per_token * weights.to(per_token.dtype)).sum() / weights.sum().clamp(min=1e-9)
    return loss, weights > 0


def masked_sums(logits: torch.Tensor, labels: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """float64 ``[loss_sum, tokens, correct]`` over ``mask`` (default: every label token).

    ``correct`` counts positions whose argmax equals the label (token accuracy).
    """
    mask = label_mask(labels) if mask is None else mask.bool() & label_mask(labels)
    per_token = token_cross_entropy(logits, labels)
    correct = (logits.argmax(dim=-1) == labels) & mask
    return torch.stack([(per_token.double() * mask).sum(), mask.sum().double(),
                        correct.sum().double()])


def per_row_sums(logits: torch.Tensor, labels: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(sum of cross entropy over mask, number of masked tokens)`` (float64 [B])."""
    mask = mask.to(labels.device).bool() & label_mask(labels)
    per_token = token_cross_entropy(logits, labels)
    return (per_token.double() * mask).sum(dim=1), mask.sum(dim=1).double()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary sequence classification: ``(per-sample BCE [B, 1], mean loss)`` of one logit per
    sequence (``logits`` [B] or [B, 1]) against 0/1 ``labels`` [B]."""
    per_sample = F.binary_cross_entropy_with_logits(logits.float().reshape(-1), labels.float(),
                                                    reduction="none")
    return per_sample[:, None], per_sample.mean()
