"""The seeds' per-run files, rebuilt from ``logs/eval.jsonl`` (rank 0 writes them).

* classification (seed ``sequence_classification.md``): ``metrics.json`` - arrays per evaluation
  point ``{"step": [...], "epoch": [...], "train_loss": [...], "train_acc": [...],
  "test_loss": [...], "test_acc": [...]}`` (plus ``"data"``: notes on how the data set was drawn,
  e.g. sampling with replacement); ``logs.log`` - one line per evaluation point; ``config.json``
  - the resolved config, unless the run's launcher already wrote its own;
* FineWeb prototype (seed ``gpt_prototype_fineweb.md``): ``step_metrics.json`` -
  ``{"<step>": {metric: value, ...}}`` with the records of one step merged, so validation,
  held-out task accuracy and benchmarks of a step sit side by side (without the record's
  ``timestamp``, ``evaluator`` and ``event``, which differ between the merged records); and
  ``hellaswag_metrics.jsonl`` beside it - one line per HellaSwag evaluation, ``{"step",
  "hellaswag_acc", "hellaswag_acc_norm", "hellaswag_num_examples"}`` - once a run has
  evaluated HellaSwag.

Both are rebuilt from the whole log after every record, so a resume, which drops the records
past the resumed step, leaves them consistent with ``logs/eval.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path

from megaproc.files import atomic_write_json, atomic_write_text, iter_jsonl

CLASSIFY_METRIC_KEYS = ("step", "epoch", "train_loss", "train_acc", "test_loss", "test_acc")
CLASSIFY_EVENT = "classify"
# Fields of a record that describe it rather than measure (left out of step_metrics.json).
RECORD_FIELDS = ("step", "timestamp", "evaluator", "event")
HELLASWAG_KEYS = ("hellaswag_acc", "hellaswag_acc_norm", "hellaswag_num_examples")


def write_classify_files(run_dir: Path, eval_log: Path, data_notes: dict | None = None) -> None:
    """``metrics.json`` and ``logs.log`` of a classification run from its eval records."""
    records = [r for r in iter_jsonl(eval_log) if r.get("event") == CLASSIFY_EVENT]
    arrays: dict = {key: [r.get(key) for r in records] for key in CLASSIFY_METRIC_KEYS}
    if data_notes:
        arrays["data"] = data_notes
    atomic_write_json(Path(run_dir) / "metrics.json", arrays, indent=1)
    lines = [" ".join(f"{k}={r[k]:.6g}" if isinstance(r.get(k), float) else f"{k}={r.get(k)}"
                      for k in CLASSIFY_METRIC_KEYS if k in r) for r in records]
    atomic_write_text(Path(run_dir) / "logs.log", "".join(line + "\n" for line in lines))


def write_config_json(run_dir: Path, config_dict: dict) -> None:
    """``config.json`` (the resolved config) unless a launcher already wrote one."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        atomic_write_json(path, config_dict)


def write_step_metrics(run_dir: Path, eval_log: Path) -> None:
    """``step_metrics.json``: every eval record merged per step."""
    merged: dict[str, dict] = {}
    for record in iter_jsonl(eval_log):
        merged.setdefault(str(record.get("step", 0)), {}).update(
            {k: v for k, v in record.items() if k not in RECORD_FIELDS})
    atomic_write_json(Path(run_dir) / "step_metrics.json", merged, indent=1, default=float)


def write_hellaswag_metrics(run_dir: Path, eval_log: Path) -> None:
    """``hellaswag_metrics.jsonl``: ``step`` and the HellaSwag metrics of every record holding
    them (not written while a run has none, emptied when a resume dropped them all)."""
    path = Path(run_dir) / "hellaswag_metrics.jsonl"
    lines = [json.dumps({"step": r.get("step", 0), **{k: r.get(k) for k in HELLASWAG_KEYS}})
             for r in iter_jsonl(eval_log) if HELLASWAG_KEYS[0] in r]
    if lines or path.exists():
        atomic_write_text(path, "".join(line + "\n" for line in lines))


def write_seed_metrics(run_dir: Path, eval_log: Path) -> None:
    """The files of the FineWeb prototype rebuilt from the eval log (rank 0)."""
    write_step_metrics(run_dir, eval_log)
    write_hellaswag_metrics(run_dir, eval_log)
