"""Evaluation metrics shared by the command line (``python -m megaproc.evaluate``) and the hooks.

- :mod:`megaproc.eval.lm`: language-model loss, perplexity and token accuracy;
- :mod:`megaproc.eval.task_accuracy`: held-out accuracy on synthetic split files;
- :mod:`megaproc.eval.answer_correctness`: greedy full-word answer correctness (also used by the
  curriculum's training window).
"""
