"""Continuation log-likelihood: ``log P(continuation | context)`` under a causal LM.

The scoring behind the multiple-choice benchmarks (:mod:`megaproc.eval.hellaswag`,
:mod:`megaproc.eval.ewok`), modelled on lm-evaluation-harness's ``loglikelihood`` requests.

Tokenization
    The context and the continuation are tokenized *separately* (no special tokens) and the
    two id lists concatenated; a BOS token is put before the context only with
    ``add_bos=True``.  An empty context becomes the single BOS (else EOS) token, as lm-eval does,
    so the first continuation token has something to condition on.  lm-eval's HF model
    instead encodes ``context + continuation`` as one string and takes the ids past
    ``len(encode(context))`` as the continuation (after moving trailing spaces of the context
    onto the continuation).  For byte-level BPE tokenizers (GPT-2, Pythia/GPT-NeoX, Llama-3)
    and a continuation that starts with a space after a context that does not end in
    whitespace - every HellaSwag and EWoK request - the two give the same ids, because the
    pre-tokenizer always starts a new piece at ``" word"``.  SentencePiece tokenizers (Llama-2)
    add a word-start marker to a separately encoded string, so there the two can differ.

Truncation and scoring (as lm-eval's ``_loglikelihood_tokens``)
    The model input is ``(context + continuation)[-(max_length + 1):][:-1]``: at most
    ``max_length`` tokens, context dropped from the left when the pair is too long.  The
    logits at the last ``len(continuation)`` input positions predict the continuation tokens;
    their log-softmax (float32) values are summed (float64).  ``is_greedy`` says whether every
    continuation token was the argmax.  A continuation longer than ``max_length`` tokens is an
    error.  Rows are right-padded with an attention mask; causal attention means the padding
    never changes the scored positions, so batching changes results only by float rounding.

Distributed use (training hooks)
    :meth:`LoglikScorer.score` with ``rank``/``world_size`` scores requests ``rank,
    rank + world_size, ...`` on each rank, pads every rank to the same number of forwards (a
    ZeRO-3 forward is collective: all ranks must run it together), and all-gathers the results
    so every rank returns the full list in request order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from megaproc import distributed as dist_utils
from megaproc.eval.rows import right_padded

DEFAULT_MAX_LENGTH = 2048  # lm-eval's default when the model config names no context length

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Request:
    """One encoded ``(context, continuation)`` pair: token ids of each part."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass(frozen=True)
class LoglikResult:
    """Summed log-probability of a continuation, its token count and greedy flag."""

    logprob: float
    num_tokens: int
    is_greedy: bool

    @property
    def mean_logprob(self) -> float:
        """Per-token mean log-probability."""
        return self.logprob / self.num_tokens


def context_length(model) -> int:
    """The model's maximum sequence length (``n_positions``, ``max_position_embeddings`` or
    ``n_ctx`` of its config, else 2048 as in lm-eval)."""
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    return DEFAULT_MAX_LENGTH


def hf_logits_fn(model) -> LogitsFn:
    """``logits_fn`` running a HF causal LM or a DeepSpeed engine wrapping one."""
    def logits_fn(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    return logits_fn


def _prefix_token(tokenizer) -> int:
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition an empty "
                     "context on")


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], add_bos: bool = False) -> list[Request]:
    """Token ids of each ``(context, continuation)``, the two parts encoded separately.

    ``add_special_tokens=False`` for both parts: BOS is this function's decision
    (``add_bos``), never the tokenizer's default (Llama tokenizers would add one to *each*
    part).
    """
    if not pairs:
        return []
    bos = None
    if add_bos:
        if tokenizer.bos_token_id is None:
            raise ValueError("add_bos: the tokenizer defines no BOS token")
        bos = int(tokenizer.bos_token_id)
    texts = [c for c, _ in pairs] + [t for _, t in pairs]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    n = len(pairs)
    requests = []
    for k in range(n):
        context, continuation = list(ids[k]), list(ids[n + k])
        if not continuation:
            raise ValueError(f"request {k}: the continuation {pairs[k][1]!r} has no tokens")
        if bos is not None:
            context = [bos] + context
        elif not context:
            context = [_prefix_token(tokenizer)]
        requests.append(Request(tuple(context), tuple(continuation)))
    return requests


def _model_input(request: Request, max_length: int) -> list[int]:
    # lm-eval: keep the last max_length + 1 tokens of the pair, drop the final token (it is only
    # ever a label), so the context is what gets truncated.
    return list(request.context + request.continuation)[-(max_length + 1):][:-1]


@torch.no_grad()
def score_requests(logits_fn: LogitsFn, requests: Sequence[Request], max_length: int,
                   batch_size: int = 16, pad_id: int = 0, device: torch.device | str = "cpu",
                   num_batches: int | None = None, progress=None) -> list[LoglikResult]:
    """Score encoded requests; results in request order.

    Requests are batched longest first (little padding, as lm-eval).  ``num_batches`` forces
    that many forwards (extra ones on a one-token dummy row) so ranks stay in lock step;
    ``progress`` is an optional tqdm-like object updated with the number of requests done.
    """
    for k, request in enumerate(requests):
        if len(request.continuation) > max_length:
            raise ValueError(f"request {k}: continuation of {len(request.continuation)} tokens "
                             f"is longer than the model's context ({max_length})")
        if not request.context or not request.continuation:
            raise ValueError(f"request {k}: empty context or continuation ids")
    batch_size = max(1, int(batch_size))
    order = sorted(range(len(requests)),
                   key=lambda i: -(len(requests[i].context) + len(requests[i].continuation)))
    needed = math.ceil(len(order) / batch_size)
    total = needed if num_batches is None else int(num_batches)
    if total < needed:
        raise ValueError(f"num_batches={total} cannot hold {len(order)} requests")
    results: list[LoglikResult | None] = [None] * len(requests)
    for b in range(total):
        chunk = order[b * batch_size:(b + 1) * batch_size]
        inputs = [_model_input(requests[i], max_length) for i in chunk] or [[pad_id]]
        ids, mask = right_padded(inputs, pad_id)
        logits = logits_fn(ids.to(device), mask.to(device))
        for row, i in enumerate(chunk):
            continuation = torch.tensor(requests[i].continuation, dtype=torch.long,
                                        device=logits.device)
            end = len(inputs[row])
            # Positions end - len(cont) .. end - 1 predict the continuation tokens.
            logp = torch.log_softmax(logits[row, end - len(continuation):end].float(), dim=-1)
            picked = logp.gather(-1, continuation[:, None]).squeeze(-1)
            greedy = bool((logp.argmax(-1) == continuation).all())
            results[i] = LoglikResult(float(picked.double().sum()), len(continuation), greedy)
        if progress is not None and chunk:
            progress.update(len(chunk))
    return results  # type: ignore[return-value]


class LoglikScorer:
    """Encodes and scores ``(context, continuation)`` text pairs for one model/tokenizer.

    ``max_length`` is the model's context (:func:`context_length`); ``device`` where the
    input tensors go; ``progress`` shows a tqdm bar on stderr (rank 0 only).
    """

    def __init__(self, tokenizer, max_length: int, batch_size: int = 16, add_bos: bool = False,
                 device: torch.device | str = "cpu", progress: bool = False):
        from megaproc.tokenizer import pad_id

        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.batch_size = max(1, int(batch_size))
        self.add_bos = bool(add_bos)
        self.device = device
        self.progress = bool(progress)
        self.pad_id = pad_id(tokenizer)

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list[Request]:
        """See :func:`encode_pairs`."""
        return encode_pairs(self.tokenizer, pairs, add_bos=self.add_bos)

    def score(self, logits_fn: LogitsFn, requests: Sequence[Request], rank: int = 0,
              world_size: int = 1, desc: str = "loglikelihood") -> list[LoglikResult]:
        """Results of all ``requests`` in order; with ``world_size > 1`` this rank scores its
        share and the shares are all-gathered (collective: every rank must call it).

        Identical requests are scored once, so they get bitwise-identical results whatever
        the batching (an EWoK item with two equal contexts is an exact tie).
        """
        unique = list(dict.fromkeys(requests))
        local = unique[rank::world_size]
        per_rank = math.ceil(len(unique) / world_size)  # the largest share
        bar = None
        if self.progress and rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=len(local), desc=desc, unit="req", mininterval=1.0, leave=False)
        try:
            mine = score_requests(logits_fn, local, self.max_length, self.batch_size,
                                  self.pad_id, self.device,
                                  num_batches=math.ceil(per_rank / self.batch_size), progress=bar)
        finally:
            if bar is not None:
                bar.close()
        if world_size == 1:
            scored = mine
        else:
            shares = dist_utils.all_gather_objects(
                [(r.logprob, r.num_tokens, r.is_greedy) for r in mine])
            scored = [None] * len(unique)
            for r, share in enumerate(shares):
                for k, values in enumerate(share):
                    scored[r + k * world_size] = LoglikResult(*values)
        by_request = dict(zip(unique, scored))
        return [by_request[request] for request in requests]

    def score_pairs(self, logits_fn: LogitsFn, pairs: Sequence[tuple[str, str]], rank: int = 0,
                    world_size: int = 1, desc: str = "loglikelihood") -> list[LoglikResult]:
        """Encode then :meth:`score`."""
        return self.score(logits_fn, self.encode(pairs), rank, world_size, desc)
