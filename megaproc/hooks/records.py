"""The run's JSON-lines logs (``logs/train.jsonl``, ``logs/eval.jsonl``), written by rank 0.

After a resume, records past the resumed step are dropped first (those steps are redone), so a
log never holds a step twice.  ``logs/eval.jsonl`` is shared by the hooks that evaluate (the
evaluation hook, the curriculum's held-out evaluation, classification): :class:`EvalLog` opens
it for each record, since a long-lived handle would point at the file that start-up replaced.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from megaproc import distributed as dist_utils
from megaproc.files import atomic_write_text, iter_jsonl
from megaproc.seed_compat.outputs import write_seed_metrics


class JsonlWriter:
    """Append-only JSON-lines file, flushed after every record."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        """Append one record."""
        self._fh.write(json.dumps(record, default=float) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


def drop_records_after(path: str | Path, step: int) -> None:
    """Remove records with ``step`` greater than ``step`` (they are redone after a resume)."""
    path = Path(path)
    if not path.is_file():
        return
    # A line torn by a kill during the write is dropped with the rest of the unreadable ones.
    kept = [json.dumps(r, default=float) for r in iter_jsonl(path) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


class EvalLog:
    """Appends evaluation records to ``RUN_DIR/logs/eval.jsonl`` and tells every hook.

    The seed prototype's ``RUN_DIR/step_metrics.json`` and ``RUN_DIR/hellaswag_metrics.jsonl``
    are rebuilt from the log after every record and after the resume truncation
    (:func:`megaproc.seed_compat.outputs.write_seed_metrics`).
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "logs" / "eval.jsonl"

    def open(self, step: int) -> None:
        """Drop records after ``step`` (rank 0; idempotent, so every eval hook may call it)."""
        if dist_utils.is_main():
            drop_records_after(self.path, step)
            write_seed_metrics(self.run_dir, self.path)

    def write(self, trainer, metrics: dict, **fields) -> dict:
        """Write ``{step, **fields, **metrics, timestamp}`` (rank 0), call ``on_eval`` of every
        hook on every rank, and return the record."""
        record = {"step": trainer.step, **fields, **metrics, "timestamp": time.time()}
        if dist_utils.is_main():
            writer = JsonlWriter(self.path)
            writer.write(record)
            writer.close()
            write_seed_metrics(self.run_dir, self.path)
        trainer.hooks.on_eval(trainer, record)
        return record
