"""A study's results: ``results.csv`` (one row per run), ``results.md`` (mean ± std over seeds
per stage, arms as rows) and ``plots/`` (validation loss against tokens, final metrics).

Columns of ``results.csv``: ``run``, ``stage``, ``arm``, ``run_dir``, ``seed``, ``status``, one
column per varied key (what the spec's arms and grids change, and ``from``, the parent run),
one column per number in the run's ``eval.json`` named by its dotted key path
(``accuracy``, ``hellaswag.acc_norm``, ``deepmind_math.by_split.interpolate``; booleans, strings
and lists are left out), then, from the run's own logs, ``final.<key>``: the last logged value
of every number in ``logs/eval.jsonl`` (``final.val_loss``, ``final.heldout_acc``,
``final.test_acc``, ...; not ``step``/``timestamp``) and, where a target validation loss is
set, ``tokens_to_target``.

``tokens_to_target``: the eval records are taken in step order and the first whose
``val_loss`` is at or below the target gives its step; the token count at that step comes from
``logs/train.jsonl`` (``tokens``, cumulative over the run, this run only: a transfer arm's
count does not include its parent's pre-pretraining).  When no train record has exactly that
step (``log.log_every`` does not divide the eval step), the count is interpolated linearly
between the records around it (tokens grow linearly in steps at a fixed batch), or scaled from
the nearest record.  Empty when the target was never reached.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import statistics
from pathlib import Path
from typing import Optional

from megaproc.seed_compat.classify_flags import format_value
from megaproc.files import atomic_output, atomic_write_text, read_jsonl
from megaproc.plot import series
from megaproc.study_graph import StudyGraph
from megaproc.study_runner import EVAL_FILE, with_skipped

BASE_COLUMNS = ("run", "stage", "arm", "run_dir", "seed", "status")
# Curves plotted against tokens, one figure per stage and key present in the logs.
CURVES = ("val_loss", "heldout_acc", "test_acc")
NOT_METRICS = ("step", "timestamp")
# Logged bookkeeping left out of results.md and the bar charts (still in results.csv).
NOT_SUMMARISED = ("stage", "alpha", "epoch", "passed_stage", "completed")


# ----------------------------------------------------------------------------- per run
def flatten_numbers(obj, prefix: str = "") -> dict:
    """The numbers of a JSON object by dotted key path (booleans, strings, lists left out)."""
    out = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flatten_numbers(value, f"{prefix}{key}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix[:-1]] = obj
    return out


class TokenClock:
    """Cumulative ``tokens`` at any step, from a run's train.jsonl records."""

    def __init__(self, train_records: list):
        steps, tokens = series(train_records, "tokens")
        pairs = sorted(dict(zip(steps, tokens)).items())   # a step logged twice: the last
        self.steps = [s for s, _ in pairs]
        self.tokens = [t for _, t in pairs]

    def at(self, step: float) -> Optional[float]:
        """Tokens after ``step`` optimizer steps (None without any train record)."""
        if not self.steps:
            return None
        if step <= 0:
            return 0.0
        i = bisect.bisect_left(self.steps, step)
        if i < len(self.steps) and self.steps[i] == step:
            return float(self.tokens[i])
        if 0 < i < len(self.steps):
            s0, s1, t0, t1 = self.steps[i - 1], self.steps[i], self.tokens[i - 1], self.tokens[i]
            return t0 + (t1 - t0) * (step - s0) / (s1 - s0)
        s, t = (self.steps[0], self.tokens[0]) if i == 0 else (self.steps[-1], self.tokens[-1])
        return t * step / s if s > 0 else None


def logged_curve(run_dir: Path, key: str = "val_loss") -> tuple[list, list]:
    """``(tokens, values)`` of ``key`` in a run's eval records, in step order."""
    logs = Path(run_dir) / "logs"
    clock = TokenClock(read_jsonl(logs / "train.jsonl"))
    steps, values = series(read_jsonl(logs / "eval.jsonl"), key)
    pairs = sorted(dict(zip(steps, values)).items())
    tokens = [clock.at(s) for s, _ in pairs]
    return ([t for t in tokens if t is not None],
            [v for (_, v), t in zip(pairs, tokens) if t is not None])


def tokens_to_target(run_dir: Path, target: float) -> Optional[int]:
    """The first logged token count at which ``val_loss`` <= ``target`` (module docstring)."""
    for tokens, loss in zip(*logged_curve(run_dir)):
        if loss <= target:
            return int(round(tokens))
    return None


def final_logged(run_dir: Path) -> dict:
    """``final.<key>``: the last logged value of every number in logs/eval.jsonl."""
    out = {}
    for record in read_jsonl(Path(run_dir) / "logs" / "eval.jsonl"):
        for key, value in record.items():
            if key not in NOT_METRICS and isinstance(value, (int, float)) \
                    and not isinstance(value, bool) and math.isfinite(value):
                out[f"final.{key}"] = value
    return out


def read_eval(run_dir: Path) -> dict:
    """The numbers of ``RUN_DIR/eval.json`` by dotted key ({} when it is missing)."""
    try:
        return flatten_numbers(json.loads((Path(run_dir) / EVAL_FILE).read_text()))
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------- the table
def result_rows(graph: StudyGraph, status: dict) -> tuple[list, list]:
    """``(rows, columns)`` of results.csv, one row per training run in graph order."""
    status = with_skipped(graph, status)
    varied = graph.varied_keys()
    rows, metric_keys, logged_keys = [], [], []
    for node in graph.nodes:
        if node.kind != "train":
            continue
        row = {"run": node.node_id, "stage": node.stage, "arm": node.label or "run",
               "run_dir": str(node.directory), "seed": node.seed, "status": status[node.node_id]}
        row.update({k: _cell(node.point[k]) for k in varied if k in node.point})
        metrics, logged = read_eval(node.directory), final_logged(node.directory)
        metric_keys += [k for k in metrics if k not in metric_keys]
        logged_keys += [k for k in logged if k not in logged_keys]
        row.update(metrics)
        row.update(logged)
        if node.target_val_loss is not None:
            row["tokens_to_target"] = tokens_to_target(node.directory, node.target_val_loss)
        rows.append(row)
    targets = ["tokens_to_target"] if any("tokens_to_target" in r for r in rows) else []
    columns = [*BASE_COLUMNS, *varied, *sorted(metric_keys), *sorted(logged_keys), *targets]
    return rows, columns


def _cell(value) -> str:
    return value if isinstance(value, str) else format_value(value)


def write_csv(rows: list, columns: list, path: Path) -> Path:
    """``results.csv`` (empty cells for values a run does not have)."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="",
                                    extrasaction="ignore")
            writer.writeheader()
            writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    return path


# ----------------------------------------------------------------------------- summary
def summary_metrics(graph: StudyGraph, rows: list, columns: list) -> list:
    """The metric columns summarised in results.md and the bar chart: every number column but
    the varied keys, counts (``num_*``) and curriculum/epoch bookkeeping."""
    skip = {*BASE_COLUMNS, *graph.varied_keys()}
    def summarised(column: str) -> bool:
        last = column.rsplit(".", 1)[-1]
        return column not in skip and not last.startswith("num_") and last not in NOT_SUMMARISED

    return [c for c in columns if summarised(c)
            and any(isinstance(r.get(c), (int, float)) for r in rows)]


def arm_groups(rows: list) -> dict:
    """``{stage: {arm: [rows of its seeds]}}`` in row order."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(row["stage"], {}).setdefault(row["arm"], []).append(row)
    return groups


def mean_std(values: list) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _format(mean: float, std: float, integer: bool, count: int) -> str:
    """``mean ± std`` (the mean alone for one value)."""
    text = f"{mean:,.0f}" if integer else f"{mean:.4g}"
    if count > 1:
        text += f" ± {std:,.0f}" if integer else f" ± {std:.2g}"
    return text


def markdown(graph: StudyGraph, rows: list, columns: list) -> str:
    """results.md: per stage, one row per arm, mean ± std over its seeds of every metric."""
    metrics = summary_metrics(graph, rows, columns)
    lines = [f"# Study {graph.spec.name}", ""]
    if graph.spec.description:
        lines += [graph.spec.description.strip(), ""]
    lines += ["Mean ± sample standard deviation over an arm's seeds; n: finished runs of the "
              "arm / its runs.", ""]
    for stage, arms in arm_groups(rows).items():
        used = [m for m in metrics if any(isinstance(r.get(m), (int, float))
                                          for group in arms.values() for r in group)]
        lines += [f"## {stage}", "", "| arm | n | " + " | ".join(used) + " |",
                  "|---|---|" + "---|" * len(used)]
        for arm, group in arms.items():
            done = sum(r["status"] == "done" for r in group)
            cells = []
            for metric in used:
                values = [r[metric] for r in group if isinstance(r.get(metric), (int, float))]
                reach = metric == "tokens_to_target"
                if not values:
                    cells.append(f"not reached (0/{done})" if reach and done else "—")
                    continue
                text = _format(*mean_std(values), reach, len(values))
                if reach and len(values) < len(group):
                    text += f" ({len(values)}/{len(group)} reached)"
                cells.append(text)
            lines.append(f"| {arm} | {done}/{len(group)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def _figure(rows: int, cols: int = 1, width: float = 7.0, height: float = 3.4):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height * rows), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, path: Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def plot_curve(graph: StudyGraph, stage: str, arms: dict, key: str,
               path: Path) -> Optional[Path]:
    """A logged metric (``val_loss``, ``heldout_acc``, ...) against tokens, one line per arm
    (the mean over its seeds at each eval step, the seeds' range shaded); the target
    validation loss as a dashed line."""
    fig, axes = _figure(1)
    ax, drawn = axes[0][0], False
    for arm, group in arms.items():
        curves = [logged_curve(Path(r["run_dir"]), key) for r in group]
        curves = [c for c in curves if c[0]]
        if not curves:
            continue
        length = min(len(c[0]) for c in curves)
        tokens = [statistics.fmean(c[0][i] for c in curves) for i in range(length)]
        losses = [[c[1][i] for c in curves] for i in range(length)]
        line, = ax.plot(tokens, [statistics.fmean(v) for v in losses], label=arm, linewidth=1.4)
        if len(curves) > 1:
            ax.fill_between(tokens, [min(v) for v in losses], [max(v) for v in losses],
                            color=line.get_color(), alpha=0.15)
        drawn = True
    if not drawn:
        return None
    targets = {n.target_val_loss for n in graph.nodes if n.stage == stage} - {None}
    for target in targets if key == "val_loss" else ():
        ax.axhline(target, linestyle="--", color="grey", linewidth=1, label=f"target {target:g}")
    ax.set(title=f"{graph.spec.name}: {stage} {key}", xlabel="tokens", ylabel=key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_metrics(graph: StudyGraph, stage: str, arms: dict, metrics: list,
                 path: Path) -> Optional[Path]:
    """One bar chart per final metric: a bar per arm (mean over seeds, std as error bar)."""
    panels = []
    for metric in metrics:
        bars = []
        for arm, group in arms.items():
            values = [r[metric] for r in group if isinstance(r.get(metric), (int, float))
                      and math.isfinite(r[metric])]
            if values:
                bars.append((arm, *mean_std(values)))
        if bars:
            panels.append((metric, bars))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    panel_width = max(3.0, 0.6 * max(len(b) for _, b in panels) + 1.5)
    fig, axes = _figure(rows, cols, width=panel_width * cols, height=2.8)
    flat = [ax for row in axes for ax in row]
    for (metric, bars), ax in zip(panels, flat):
        ax.bar(range(len(bars)), [b[1] for b in bars], yerr=[b[2] for b in bars], capsize=4,
               color=[f"C{list(arms).index(b[0]) % 10}" for b in bars])   # one colour per arm
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=20, ha="right",
                      fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    for ax in flat[len(panels):]:
        ax.set_axis_off()
    fig.suptitle(f"{graph.spec.name}: {stage} final metrics (mean ± std over seeds)")
    return _save(fig, path)


def write_results(graph: StudyGraph, status: dict, plots: bool = True) -> tuple:
    """Write results.csv, results.md and plots/ into the study folder; returns
    ``(paths, rows, columns)``."""
    out = graph.out_dir
    rows, columns = result_rows(graph, status)
    written = [write_csv(rows, columns, out / "results.csv"),
               atomic_write_text(out / "results.md", markdown(graph, rows, columns))]
    if plots:
        metrics = summary_metrics(graph, rows, columns)
        for stage, arms in arm_groups(rows).items():
            figures = [plot_curve(graph, stage, arms, key, out / "plots" / f"{stage}_{key}.png")
                       for key in CURVES]
            figures.append(plot_metrics(graph, stage, arms, metrics,
                                        out / "plots" / f"{stage}_metrics.png"))
            written += [p for p in figures if p is not None]
    return written, rows, columns
