"""Training validation as evaluators: the validation blend, or every named ``data.valid`` source.

:class:`SampleLMEvaluator` (name ``validation``)
    LM metrics of the first samples of a map-style dataset of token samples (the run's
    validation blend, or a prompt/answer ``.jsonl``), ``pad_to`` tokens per row; with a
    ``mask_key`` only those tokens count (``train.loss: answer_only`` -> ``answer_mask``), with
    ``sliced`` the LM head runs only there (the same numbers, :func:`~megaproc.eval.lm.
    batch_lm_sums`).
:class:`SourcesEvaluator` (name ``validation``)
    One evaluator per named source; its metrics are nested per source, ``{"val_loss":
    {"pubmed": x, "uspto": y}, ...}``, so a training record holds ``val_loss/pubmed``,
    ``val_ppl/pubmed``, ``val_token_acc/pubmed``, ``num_tokens/pubmed``
    (:func:`~megaproc.eval.evaluator.flat_metrics`).  An indexed source is evaluated by the
    command line's own :class:`~megaproc.eval.lm_windows.PrefixEvaluator`, so its numbers are
    those of ``python -m megaproc.evaluate --prefix`` (see docs/evaluation.md for the flags).

Both evaluate ``max_batches`` batches of ``ctx.batch_size`` rows (0: every sample), shared over
the ranks in lock step (:func:`~megaproc.eval.lm.lm_metrics_in_lockstep`).
"""

from __future__ import annotations

from typing import Sequence

from megaproc.eval.evaluator import EvalContext, EvalResult, Evaluator, rows_per_batch
from megaproc.eval.lm import lm_metrics_in_lockstep
from megaproc.eval.lm_windows import window_count


class SampleLMEvaluator:
    """LM metrics on the first samples of a dataset (``dataset[i]``: ``tokens`` + masks)."""

    name = "validation"

    def __init__(self, dataset, max_batches: int, pad_to: int, mask_key: str | None = None,
                 sliced: bool = False, info: dict | None = None, documents=None):
        self.dataset = dataset
        self.documents = documents  # the run's DocumentMasking (data.reset_* / eod_mask_loss)
        self.max_batches = int(max_batches)
        self.pad_to = int(pad_to)
        self.mask_key = mask_key
        self.sliced = bool(sliced and mask_key)
        self.info = dict(info or {})

    def run(self, ctx: EvalContext) -> EvalResult:
        """Evaluate (collective over ``ctx``'s ranks)."""
        rows = rows_per_batch(ctx.batch_size, self.pad_to)
        count = window_count(len(self.dataset), self.max_batches, rows)
        batches = [range(start, min(start + rows, count)) for start in range(0, count, rows)]
        metrics = lm_metrics_in_lockstep(ctx, self.dataset.__getitem__, batches, self.pad_to,
                                         "validation", self.mask_key, self.sliced,
                                         self.documents)
        return EvalResult(metrics, [], {**self.info, "num_samples": count})


class SourcesEvaluator:
    """The evaluators of named sources, their metrics nested under each source's name."""

    name = "validation"

    def __init__(self, sources: Sequence[tuple[str, Evaluator]]):
        self.sources = list(sources)
        names = [name for name, _ in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"validation source names must be unique, got {names}")

    def run(self, ctx: EvalContext) -> EvalResult:
        """Evaluate every source in turn (collective over ``ctx``'s ranks)."""
        metrics: dict = {}
        info: dict = {}
        for name, evaluator in self.sources:
            result = evaluator.run(ctx)
            for key, value in result.metrics.items():
                metrics.setdefault(key, {})[name] = value
            info[name] = result.info
        return EvalResult(metrics, [], {"sources": info})
