"""``python -m megaproc.plot`` on a real CPU run directory: decodable, non-blank PNGs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megaproc.plot import PlotError, plot_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Six logged steps of the quickstart recipe with the tiny model (the real trainer)."""
    out = tmp_path_factory.mktemp("plot") / "run"
    proc = subprocess.run(
        [sys.executable, "megaproc/train.py", "--config", "configs/quickstart.yaml",
         "model.name=tiny", "train.max_steps=6", "train.seq_len=32", "log.log_every=1",
         "log.progress=false", f"run.out_dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def assert_real_png(path: Path) -> None:
    """The file decodes as an image with more than one colour (something was drawn)."""
    from matplotlib.image import imread

    assert path.stat().st_size > 0
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]).round(3), axis=0)
    assert len(colours) > 10


@pytest.mark.slow  # the fixture trains a run
def test_plot_command_on_a_trainer_run(run_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "megaproc.plot", str(run_dir), "--out",
                           str(tmp_path / "png")], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = [Path(line) for line in proc.stdout.split()]
    # This recipe logs loss (with the per-source curve), lr and validation metrics; there are
    # no benchmark or curriculum metrics, so those plots are skipped.
    assert sorted(p.name for p in written) == ["loss.png", "lr.png", "validation.png"]
    for path in written:
        assert path.parent == tmp_path / "png"
        assert_real_png(path)


@pytest.mark.slow  # the fixture trains a run
def test_benchmark_and_curriculum_plots_when_present(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir / "logs", run / "logs")
    with open(run / "logs" / "eval.jsonl", "a", encoding="utf-8") as handle:
        for step, acc in ((2, 0.25), (4, 0.3), (6, 0.35)):  # records as the benchmark hook writes
            handle.write(json.dumps({"step": step, "hellaswag_acc": acc, "hellaswag_acc_norm": acc + 0.01,
                                     "ewok_sum_accuracy": 0.5, "ewok_mean_accuracy": 0.5}) + "\n")
            handle.write(json.dumps({"step": step, "stage": step // 2, "heldout_acc": acc}) + "\n")
        handle.write('{"step": 7, "hellaswag_acc": 0.4')  # a line cut short by a crash
    with open(run / "logs" / "train.jsonl", "a", encoding="utf-8") as handle:
        for step in (7, 8):
            handle.write(json.dumps({"step": step, "loss": 7.0, "stage": 3, "curr_acc": None}) + "\n")
    written = plot_run(run)
    names = sorted(p.name for p in written)
    assert names == ["benchmarks.png", "curriculum.png", "loss.png", "lr.png", "validation.png"]
    for path in written:
        assert path.parent == run / "plots"
        assert_real_png(path)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(PlotError, match="not a run directory"):
        plot_run(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "megaproc.plot", str(tmp_path / "absent")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error:") and "not a directory" in proc.stderr
