"""What megaproc writes and accepts only so the group's original scripts' habits keep working.

The core artifacts of a run are ``config.yaml``, ``logs/train.jsonl``, ``logs/eval.jsonl`` and the
checkpoints (DESIGN.md).  The seeds' own files and flags live here, apart from them:

* :mod:`megaproc.seed_compat.classify_flags` - the classification script's flat flags
  (``--lr``, ``--target_func``, ...) translated into dotted megaproc keys;
* :mod:`megaproc.seed_compat.outputs` - the classification run folder's ``metrics.json``,
  ``logs.log`` and ``config.json``, and the FineWeb prototype's ``step_metrics.json``, all
  derived from ``logs/eval.jsonl`` so a resume keeps them consistent.
"""
