"""PNG plots of a run's logs.

    python -m megaproc.plot RUN_DIR [--out DIR]        # default DIR: RUN_DIR/plots

Reads ``RUN_DIR/logs/train.jsonl`` and ``RUN_DIR/logs/eval.jsonl`` and writes, for the data
present (a plot without data is skipped):

``loss.png``        training ``loss`` and the per-source ``loss/<name>`` curves
``lr.png``          learning rate ``lr``
``validation.png``  ``val_loss``, ``val_ppl``, ``val_token_acc`` (one panel each), with a
                    curve per named validation source (``val_loss/<name>``, ...)
``benchmarks.png``  ``hellaswag_acc``, ``hellaswag_acc_norm``, ``ewok_sum_accuracy``,
                    ``ewok_mean_accuracy``, ``dm_math_acc``
``curriculum.png``  curriculum ``stage`` (train.jsonl, else eval.jsonl) and the accuracies
                    ``curr_acc`` (training window) and ``heldout_acc`` (held-out evaluation)

x is the optimizer step.  Non-numeric values (``None`` while a window is empty) and lines that
do not parse (a line cut short by a crash) are skipped.  :func:`plot_run` is what the trainer
calls at the end of a run (``log.plot_at_end``); it uses matplotlib's Agg canvas directly, never
pyplot's global state, so it is safe inside a training process.  A directory that is not a run
(no ``logs/train.jsonl`` or ``logs/eval.jsonl``) is a one-line error, exit code 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from megaproc.errors import UserError, run_cli
from megaproc.files import atomic_output, read_jsonl

VALIDATION_KEYS = ("val_loss", "val_ppl", "val_token_acc")
BENCHMARK_KEYS = ("hellaswag_acc", "hellaswag_acc_norm", "ewok_sum_accuracy", "ewok_mean_accuracy",
                  "dm_math_acc")


class PlotError(UserError, ValueError):
    """The directory is not a run directory (reported as one line)."""


def series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of the records holding a finite number under ``key``."""
    steps, values = [], []
    for record in records:
        value, step = record.get(key), record.get("step")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not isinstance(step, (int, float)) or not math.isfinite(value):
            continue
        steps.append(step)
        values.append(value)
    return steps, values


def _axes_plot(ax, steps, values, label: str) -> None:
    style = {"marker": "o", "markersize": 3} if len(steps) <= 50 else {}
    ax.plot(steps, values, label=label, linewidth=1.2, **style)


def _save(fig, path: Path) -> Path:
    with atomic_output(path) as temp:
        fig.savefig(temp, dpi=110, bbox_inches="tight", format="png")
    return path


def _figure(panels: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2 * panels), layout="constrained")
    return fig, fig.subplots(panels, 1, squeeze=False, sharex=True)[:, 0]


def _lines_plot(path: Path, title: str, ylabel: str, curves: list[tuple[str, tuple]]) -> Path | None:
    curves = [(label, data) for label, data in curves if data[0]]
    if not curves:
        return None
    fig, (ax,) = _figure(1)
    for label, (steps, values) in curves:
        _axes_plot(ax, steps, values, label)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _panels_plot(path: Path, title: str, panels: list[tuple[str, list[tuple[str, tuple]]]]) -> Path | None:
    panels = [(name, [(label, data) for label, data in curves if data[0]])
              for name, curves in panels]
    panels = [(name, curves) for name, curves in panels if curves]
    if not panels:
        return None
    fig, axes = _figure(len(panels))
    for ax, (name, curves) in zip(axes, panels):
        for label, (steps, values) in curves:
            _axes_plot(ax, steps, values, label)
        ax.set(xlabel="step", ylabel=name)
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=8)
    axes[0].set_title(title)
    return _save(fig, path)


def plot_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write the run's PNGs into ``out_dir`` (default ``RUN_DIR/plots``); returns their paths."""
    run = Path(run_dir)
    logs = run / "logs"
    if not run.is_dir():
        raise PlotError(f"{run}: not a directory")
    if not (logs / "train.jsonl").is_file() and not (logs / "eval.jsonl").is_file():
        raise PlotError(f"{run}: not a run directory (no logs/train.jsonl or logs/eval.jsonl)")
    train, evals = read_jsonl(logs / "train.jsonl"), read_jsonl(logs / "eval.jsonl")
    out = Path(out_dir) if out_dir is not None else run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted({k for r in train for k in r if k.startswith("loss/")})

    def with_sources(key: str) -> list[tuple[str, tuple]]:
        """``key`` and its per-source ``key/<name>`` curves of the eval records."""
        named = sorted({k for r in evals for k in r if k.startswith(f"{key}/")})
        return [(k, series(evals, k)) for k in (key, *named)]

    written = [
        _lines_plot(out / "loss.png", f"training loss - {run.name}", "loss",
                    [("loss", series(train, "loss"))] + [(k, series(train, k)) for k in sources]),
        _lines_plot(out / "lr.png", f"learning rate - {run.name}", "lr", [("lr", series(train, "lr"))]),
        _panels_plot(out / "validation.png", f"validation - {run.name}",
                     [(key, with_sources(key)) for key in VALIDATION_KEYS]),
        _lines_plot(out / "benchmarks.png", f"benchmarks - {run.name}", "accuracy",
                    [(key, series(evals, key)) for key in BENCHMARK_KEYS]),
        _panels_plot(out / "curriculum.png", f"curriculum - {run.name}",
                     [("stage", [("stage", series(train, "stage") if series(train, "stage")[0]
                                          else series(evals, "stage"))]),
                      ("accuracy", [("curr_acc (window)", series(train, "curr_acc")),
                                    ("heldout_acc", series(evals, "heldout_acc"))])]),
    ]
    return [path for path in written if path is not None]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prints the written files; one-line error and exit code 2 on bad input."""
    parser = argparse.ArgumentParser(prog="python -m megaproc.plot",
                                     description="Write PNG plots of a run's logs (loss, LR, "
                                                 "validation, HellaSwag/EWoK/DeepMind-Math, "
                                                 "curriculum).")
    parser.add_argument("run_dir", help="run directory (run.out_dir)")
    parser.add_argument("--out", help="output directory (default RUN_DIR/plots)")
    args = parser.parse_args(argv)

    def plot() -> int:
        written = plot_run(args.run_dir, args.out)
        if not written:
            print(f"no plottable metrics in {args.run_dir}/logs", file=sys.stderr)
        for path in written:
            print(path)
        return 0

    return run_cli(plot, also=(OSError,))


if __name__ == "__main__":
    sys.exit(main())
