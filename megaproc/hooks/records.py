"""The run's JSON-lines logs (``logs/train.jsonl``, ``logs/eval.jsonl``), written by rank 0.

After a resume, records past the resumed step are dropped first (those steps are redone), so a
log never holds a step twice.  ``logs/eval.jsonl`` is shared by several hooks (validation,
held-out task accuracy, benchmarks): :class:`EvalLog` opens it for each record, since a
long-lived handle would point at the file that start-up replaced.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from megaproc import distributed as dist_utils


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
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill during the write
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


class EvalLog:
    """Appends evaluation records to ``RUN_DIR/logs/eval.jsonl`` and tells every hook.

    ``RUN_DIR/step_metrics.json`` (the seed prototype's file) is rewritten after every record:
    ``{"<step>": {metric: value, ...}}`` with the records of one step merged, so validation,
    held-out task accuracy and benchmarks of a step sit side by side.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "logs" / "eval.jsonl"
        self.step_metrics = Path(run_dir) / "step_metrics.json"

    def open(self, step: int) -> None:
        """Drop records after ``step`` (rank 0; idempotent, so every eval hook may call it)."""
        if dist_utils.is_main():
            drop_records_after(self.path, step)
            self._write_step_metrics()

    def _write_step_metrics(self) -> None:
        merged: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                merged.setdefault(str(record.get("step", 0)), {}).update(
                    {k: v for k, v in record.items() if k not in ("step", "timestamp")})
        tmp = self.step_metrics.with_suffix(".tmp")
        tmp.write_text(json.dumps(merged, indent=1, default=float))
        os.replace(tmp, self.step_metrics)

    def write(self, trainer, metrics: dict, **fields) -> dict:
        """Write ``{step, **fields, **metrics, timestamp}`` (rank 0), call ``on_eval`` of every
        hook on every rank, and return the record."""
        record = {"step": trainer.step, **fields, **metrics, "timestamp": time.time()}
        if dist_utils.is_main():
            writer = JsonlWriter(self.path)
            writer.write(record)
            writer.close()
            self._write_step_metrics()
        trainer.hooks.on_eval(trainer, record)
        return record
