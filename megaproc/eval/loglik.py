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
    The model input of a pair is ``(context + continuation)[-(max_length + 1):][:-1]``: at most
    ``max_length`` tokens, context dropped from the left when the pair is too long.  The
    logits predicting the continuation tokens are log-softmaxed (float32) and summed (float64).
    ``is_greedy`` says whether every continuation token was the argmax.  A continuation
    longer than ``max_length`` tokens is an error.

Context reuse
    With a model that takes block masks (:class:`megaproc.eval.forward.ModelForward`) the
    continuations of one context are scored in one packed row - the context is encoded once -
    with the same result as their per-pair rows (:mod:`megaproc.eval.packing`); pairs that
    need truncation keep their per-pair row.  A plain ``logits_fn(input_ids,
    attention_mask)`` callable gets per-pair rows only.  Identical requests are scored once.

Batches and ranks
    Rows are batched ``batch_size`` at a time, longest first, right-padded; the batches are
    shared over ranks by :func:`megaproc.eval.sharding.run_in_lockstep` (every rank runs the
    same number of forwards, results gathered in batch order), so every rank returns all
    results, equal to a single process's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from megaproc.eval.evaluator import BatchSize, rows_per_batch
from megaproc.eval.forward import DEFAULT_MAX_LENGTH, LogitsFn, context_length, hf_logits_fn
from megaproc.eval.packing import build_rows, dummy_forward, score_batch
from megaproc.eval.rows import EvalInputError
from megaproc.eval.sharding import run_in_lockstep
from megaproc.tokenizer import pad_id as tokenizer_pad_id

__all__ = ["DEFAULT_MAX_LENGTH", "LogitsFn", "LoglikResult", "LoglikScorer", "Request",
           "context_length", "encode_pairs", "hf_logits_fn", "score_requests"]


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


def _prefix_token(tokenizer) -> int:
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise EvalInputError("the tokenizer has neither a BOS nor an EOS token to condition an "
                         "empty context on")


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
            raise EvalInputError("add_bos: the tokenizer defines no BOS token")
        bos = int(tokenizer.bos_token_id)
    texts = [c for c, _ in pairs] + [t for _, t in pairs]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    n = len(pairs)
    requests = []
    for k in range(n):
        context, continuation = list(ids[k]), list(ids[n + k])
        if not continuation:
            raise EvalInputError(f"request {k}: the continuation {pairs[k][1]!r} has no tokens")
        if bos is not None:
            context = [bos] + context
        elif not context:
            context = [_prefix_token(tokenizer)]
        requests.append(Request(tuple(context), tuple(continuation)))
    return requests


def _check(requests: Sequence[Request], max_length: int) -> None:
    for k, request in enumerate(requests):
        if len(request.continuation) > max_length:
            raise EvalInputError(f"request {k}: continuation of {len(request.continuation)} "
                                 f"tokens is longer than the model's context ({max_length})")
        if not request.context or not request.continuation:
            raise EvalInputError(f"request {k}: empty context or continuation ids")


@torch.no_grad()
def score_requests(logits_fn: LogitsFn, requests: Sequence[Request], max_length: int,
                   batch_size: BatchSize = 16, pad_id: int = 0, device: torch.device | str = "cpu",
                   rank: int = 0, world_size: int = 1, reuse_context: bool = True,
                   progress: bool = False, desc: str = "loglikelihood") -> list[LoglikResult]:
    """Score encoded requests (each once; results in request order, on every rank).

    Context reuse applies when ``reuse_context`` and ``logits_fn`` takes block masks; with
    ``world_size > 1`` this is collective (see :mod:`megaproc.eval.sharding`).
    """
    _check(requests, max_length)
    pack = reuse_context and bool(getattr(logits_fn, "supports_block_mask", False))
    rows = build_rows([(r.context, r.continuation) for r in requests], max_length, pack)
    size = rows_per_batch(batch_size, len(rows[0].tokens) if rows else 1, pack)
    batches = [rows[start:start + size] for start in range(0, len(rows), size)]

    def run(batch):
        if batch is None:
            return dummy_forward(logits_fn, pad_id, device)
        return score_batch(logits_fn, batch, pad_id, device)

    results: list[LoglikResult | None] = [None] * len(requests)
    for scored in run_in_lockstep(batches, run, rank, world_size, progress, desc):
        for request, logprob, num_tokens, greedy in scored:
            results[request] = LoglikResult(logprob, num_tokens, greedy)
    return results  # type: ignore[return-value]


class LoglikScorer:
    """Encodes and scores ``(context, continuation)`` text pairs for one model/tokenizer.

    ``max_length`` is the model's context (:func:`context_length`); ``batch_size`` rows per
    forward (or a rule, see :func:`~megaproc.eval.evaluator.rows_per_batch`); ``device`` where
    the input tensors go; ``progress`` shows a tqdm bar on stderr
    (rank 0 only); ``reuse_context`` packs the continuations of a context into one row when
    the model allows it.
    """

    def __init__(self, tokenizer, max_length: int, batch_size: BatchSize = 16,
                 add_bos: bool = False,
                 device: torch.device | str = "cpu", progress: bool = False,
                 reuse_context: bool = True):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.batch_size = batch_size if callable(batch_size) else max(1, int(batch_size))
        self.add_bos = bool(add_bos)
        self.device = device
        self.progress = bool(progress)
        self.reuse_context = bool(reuse_context)
        self.pad_id = tokenizer_pad_id(tokenizer)

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list[Request]:
        """See :func:`encode_pairs`."""
        return encode_pairs(self.tokenizer, pairs, add_bos=self.add_bos)

    def score(self, logits_fn: LogitsFn, requests: Sequence[Request], rank: int = 0,
              world_size: int = 1, desc: str = "loglikelihood") -> list[LoglikResult]:
        """Results of all ``requests`` in order; with ``world_size > 1`` the batches are shared
        over the ranks and gathered (collective: every rank must call it).

        Identical requests are scored once, so they get bitwise-identical results whatever
        the batching (an EWoK item with two equal contexts is an exact tie).
        """
        unique = list(dict.fromkeys(requests))
        scored = score_requests(logits_fn, unique, self.max_length, self.batch_size,
                                self.pad_id, self.device, rank, world_size,
                                self.reuse_context, self.progress, desc)
        by_request = dict(zip(unique, scored))
        return [by_request[request] for request in requests]

    def score_pairs(self, logits_fn: LogitsFn, pairs: Sequence[tuple[str, str]], rank: int = 0,
                    world_size: int = 1, desc: str = "loglikelihood") -> list[LoglikResult]:
        """Encode then :meth:`score`."""
        return self.score(logits_fn, self.encode(pairs), rank, world_size, desc)
