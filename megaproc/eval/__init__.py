"""Evaluation shared by the command line (``python -m megaproc.evaluate``) and training.

- :mod:`megaproc.eval.evaluator`: the one Evaluator protocol (``EvalContext`` in,
  ``EvalResult`` out), the metric names and ``flat_metrics``;
- :mod:`megaproc.eval.sharding`: the one rule that shares batches over ranks with every rank at
  the same number of forwards (ZeRO-3), results gathered in batch order;
- :mod:`megaproc.eval.forward`: ``ModelForward`` (a HF model or DeepSpeed engine as "score these
  token batches"), ``context_length`` and ``eval_mode``;
- evaluators: :mod:`~megaproc.eval.task_accuracy` (``split``: held-out synthetic accuracy,
  ``by_lookahead``), :mod:`~megaproc.eval.lm_windows` (``prefix``, ``hf_dataset``: LM loss and
  perplexity), :mod:`~megaproc.eval.hellaswag`, :mod:`~megaproc.eval.ewok`,
  :mod:`~megaproc.eval.exact_match` (``dm_math``);
- :mod:`megaproc.eval.loglik` and :mod:`megaproc.eval.packing`: continuation log-likelihoods
  (lm-eval's ``loglikelihood``) with context reuse;
- :mod:`megaproc.eval.lm`: the one LM loss computation (``prefix``, ``hf_dataset`` and
  training validation, :mod:`megaproc.eval.validation`: the blend or each named source);
  :mod:`megaproc.eval.answer_correctness`: greedy full-word answer correctness (also the
  curriculum's training window);
- :mod:`megaproc.eval.batch_size` (``--batch-size auto``), :mod:`megaproc.eval.model_loading`
  (device, dtype, checked checkpoint / model loading), :mod:`megaproc.eval.rows` (jsonl rows,
  ``EvalInputError``).
"""
