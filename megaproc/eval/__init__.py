"""Evaluation metrics shared by the command line (``python -m megaproc.evaluate``) and the hooks.

- :mod:`megaproc.eval.lm`: language-model loss, perplexity and token accuracy;
- :mod:`megaproc.eval.task_accuracy`: held-out accuracy on synthetic split files;
- :mod:`megaproc.eval.answer_correctness`: greedy full-word answer correctness (also used by the
  curriculum's training window);
- :mod:`megaproc.eval.loglik`: continuation log-likelihoods (lm-eval's ``loglikelihood``), sharded
  over ranks;
- :mod:`megaproc.eval.hellaswag`: HellaSwag ``acc``/``acc_norm`` exactly as lm-eval's task;
- :mod:`megaproc.eval.ewok`: EWoK context-comparison accuracy from a directory or (encrypted) zip;
- :mod:`megaproc.eval.exact_match`: greedy exact-match accuracy per module (DeepMind Mathematics).
"""
