"""python -m megaproc.sweep and python -m megaproc.classify.

Most tests sweep a real recipe (validated by load_config) with a tiny stand-in training program
written here, which takes the trainer's command line, writes metrics and counts its runs; the
last tests run real megaproc jobs.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from megaproc import sweep_jobs
from megaproc.classify import main as classify_main
from megaproc.classify import classify_command
from megaproc.errors import ConfigError
from megaproc.seed_compat.classify_flags import translate
from megaproc.sweep import main as sweep_main

REPO = Path(__file__).resolve().parent.parent

FAKE_PROGRAM = textwrap.dedent("""
    # Stand-in for megaproc/train.py: same command line, metrics from the overrides.
    import json, os, sys
    args = sys.argv[1:]
    assert args[0] == "--config" and os.path.isfile(args[1]), args
    values = dict(a.split("=", 1) for a in args[2:])
    out = values["run.out_dir"]
    with open(os.environ["SWEEP_TEST_COUNTER"], "a") as counter:
        counter.write(os.path.basename(out) + "\\n")
    print("training", out, flush=True)
    if os.path.exists(os.environ.get("SWEEP_TEST_FAIL", "/nonexistent")) and \\
            values.get("optim.lr") == "0.2" and values.get("train.max_steps") == "2":
        print("boom", file=sys.stderr)
        sys.exit(3)
    if os.path.exists(os.environ.get("SWEEP_TEST_FAIL", "/nonexistent") + ".sigint"):
        sys.exit(130)                                      # as a Ctrl-C'ed trainer does
    steps, lr = int(values["train.max_steps"]), float(values["optim.lr"])
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    with open(os.path.join(out, "logs", "train.jsonl"), "w") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\\n")
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"epoch": [0, steps], "train_acc": [0.5, 1.0], "test_acc": [0.5, lr * steps]}, f)
""")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A recipe, the fake program, a run counter and a failure switch (all in tmp)."""
    program = tmp_path / "fake_train.py"
    program.write_text(FAKE_PROGRAM)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"train": {"max_steps": 5, "micro_batch": 2},
                                      "optim": {"lr": 0.01}}))
    counter = tmp_path / "runs.txt"
    counter.write_text("")
    monkeypatch.setenv("SWEEP_TEST_COUNTER", str(counter))
    monkeypatch.setenv("SWEEP_TEST_FAIL", str(tmp_path / "FAIL"))
    return {"root": tmp_path, "program": program, "recipe": recipe, "counter": counter,
            "fail": tmp_path / "FAIL"}


def write_sweep(env, grid=None, name="exp", **extra) -> Path:
    data = {"experiment_name": name, "results_root": str(env["root"] / "results"),
            "recipe": str(env["recipe"]), "program": str(env["program"]),
            "base_args": {"train.micro_batch": 4},
            "grid": grid or {"train.max_steps": [1, 2], "optim.lr": [0.1, 0.2]}, **extra}
    path = env["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def runs(env) -> list[str]:
    return env["counter"].read_text().split()


def test_grid_creates_one_folder_per_job_with_metrics(env, capsys):
    assert sweep_main([str(write_sweep(env)), "--no-progress"]) == 0
    exp = env["root"] / "results" / "exp"
    folders = sorted(p.name for p in exp.iterdir() if p.is_dir())
    assert folders == ["optim.lr=0.1__train.max_steps=1", "optim.lr=0.1__train.max_steps=2",
                       "optim.lr=0.2__train.max_steps=1", "optim.lr=0.2__train.max_steps=2"]
    for folder in folders:
        job = exp / folder
        assert {"config.json", "stdout.log", "DONE", "metrics.json"} <= set(os.listdir(job))
        config = json.loads((job / "config.json").read_text())
        assert config["args"]["train.micro_batch"] == 4
        assert config["command"][-1] == f"run.out_dir={job}"
        assert "training" in (job / "stdout.log").read_text()
    with open(exp / "summary.csv") as handle:
        rows = {r["job_id"]: r for r in csv.DictReader(handle)}
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows.values())
    row = rows["optim.lr=0.2__train.max_steps=2"]
    assert float(row["test_acc"]) == pytest.approx(0.4) and float(row["train_acc"]) == 1.0
    assert row["step"] == "2" and float(row["loss"]) == 0.5          # last train.jsonl record
    printed = capsys.readouterr().out
    assert "optim.lr=0.2__train.max_steps=2" in printed and "test_acc" in printed
    assert sorted(runs(env)) == folders


def test_rerun_runs_nothing(env, capsys):
    sweep = write_sweep(env)
    assert sweep_main([str(sweep), "--no-progress"]) == 0
    assert len(runs(env)) == 4
    assert sweep_main([str(sweep), "--no-progress"]) == 0
    assert len(runs(env)) == 4
    assert "0 jobs to run, 4 already done" in capsys.readouterr().out


def test_failed_job_is_reported_and_rerun(env, capsys):
    sweep = write_sweep(env)
    env["fail"].write_text("")
    assert sweep_main([str(sweep), "--no-progress"]) == 1
    out = capsys.readouterr().out
    bad = "optim.lr=0.2__train.max_steps=2"
    assert "1 failed" in out and bad in out.split("1 failed")[1]
    job = env["root"] / "results" / "exp" / bad
    failed = json.loads((job / "FAILED").read_text())
    assert failed["exit_code"] == 3 and not (job / "DONE").exists()
    assert "boom" in (job / "stdout.log").read_text()
    with open(env["root"] / "results" / "exp" / "summary.csv") as handle:
        assert {r["job_id"]: r["status"] for r in csv.DictReader(handle)}[bad] == "failed"
    env["fail"].unlink()
    before = len(runs(env))
    assert sweep_main([str(sweep), "--no-progress"]) == 0
    assert runs(env)[before:] == [bad]                                 # only the failed one
    assert (job / "DONE").exists() and not (job / "FAILED").exists()
    assert (job / "stdout.log").read_text().count("=== ") == 2         # both attempts logged


def test_interrupted_job_runs_again(env):
    sweep = write_sweep(env)
    assert sweep_main([str(sweep), "--no-progress"]) == 0
    job = env["root"] / "results" / "exp" / "optim.lr=0.1__train.max_steps=1"
    (job / "DONE").unlink()
    (job / "RUNNING").write_text("{}")                                 # killed mid-run
    jobs = sweep_jobs.expand_jobs(sweep_jobs.load_sweep(sweep))
    assert [sweep_jobs.job_status(j) for j in jobs].count("interrupted") == 1
    before = len(runs(env))
    assert sweep_main([str(sweep), "--no-progress", "--parallel", "2"]) == 0
    assert runs(env)[before:] == [job.name]
    assert not (job / "RUNNING").exists()


def test_job_stopped_by_a_signal_counts_as_interrupted(env, capsys):
    sweep = write_sweep(env, grid={"train.max_steps": [1], "optim.lr": [0.1]})
    (env["root"] / "FAIL.sigint").write_text("")
    assert sweep_main([str(sweep), "--no-progress"]) == 1
    assert "1 interrupted" in capsys.readouterr().out
    job = env["root"] / "results" / "exp" / "optim.lr=0.1__train.max_steps=1"
    assert (job / "RUNNING").is_file() and not (job / "FAILED").exists()
    (env["root"] / "FAIL.sigint").unlink()
    assert sweep_main([str(sweep), "--no-progress"]) == 0 and (job / "DONE").is_file()


@pytest.mark.parametrize("grid,key", [
    ({"train.max_stepz": [1, 2], "optim.lr": [0.1]}, "train.max_stepz"),
    ({"train.max_steps": [1, "many"]}, "train.max_steps"),
    ({"train.precision": ["fp32", "bf32"]}, "train.precision"),
    ({"model.name": ["tiny", "gpt3"]}, "model.name"),
])
def test_bad_grid_key_is_refused_before_anything_runs(env, capsys, grid, key):
    assert sweep_main([str(write_sweep(env, grid=grid)), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"'{key}'" in err and err.startswith("error: ")
    assert runs(env) == [] and not (env["root"] / "results").exists()


def test_seed_style_bad_flag_is_refused(env, capsys):
    sweep = env["root"] / "seed.yaml"
    sweep.write_text(yaml.safe_dump({"experiment_name": "s", "results_root": str(env["root"]),
                                     "program": str(env["program"]),
                                     "base_args": {"model": "qwen0.6B-cpu"},
                                     "grid": {"lrr": [1e-3], "target_func": ["fn_a"]}}))
    assert sweep_main([str(sweep)]) == 2
    assert "unknown seed flag 'lrr'" in capsys.readouterr().err
    sweep.write_text(yaml.safe_dump({"experiment_name": "s", "results_root": str(env["root"]),
                                     "program": str(env["program"]),
                                     "base_args": {"model": "qwen0.6B-cpu"},
                                     "grid": {"target_func": ["fn_a", "fn_q"]}}))
    assert sweep_main([str(sweep)]) == 2
    assert "'classify.target_func'" in capsys.readouterr().err
    assert runs(env) == []


def test_dry_run_lists_and_runs_nothing(env, capsys):
    assert sweep_main([str(write_sweep(env)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 jobs, 4 to run" in out and out.count("[    pending]") == 4
    assert "optim.lr=0.2__train.max_steps=2: train.micro_batch=4 train.max_steps=2 optim.lr=0.2" in out
    assert runs(env) == []


def test_seed_style_sweep_translates_flags(env):
    jobs = sweep_jobs.expand_jobs(sweep_jobs.load_sweep(REPO / "configs/classify/sweep_paper.yaml"))
    assert len(jobs) == 20
    first = jobs[0]
    assert first.job_id == "sequence_length=100__target_func=fn_g"
    assert first.command[2:4] == ["--config", str(REPO / "configs/classify/base.yaml")]
    assert first.command[1] == str(REPO / "megaproc/train.py")
    for override in ("model.name=qwen1.7B", "classify.train_set_size=200", "train.micro_batch=20",
                     "optim.lr=1e-5", "classify.eta_min=1e-6", "classify.n_epochs=200",
                     "optim.weight_decay=1e-5", "train.precision=bf16", "run.seed=42",
                     "classify.sequence_length=100", "classify.target_func=fn_g"):
        assert override in first.overrides
    assert not any(o.startswith("device") for o in first.overrides)   # device maps to nothing
    with pytest.raises(ConfigError, match="device"):
        translate({"device": "tpu"})


def test_slurm_array_script_and_job_index(env, tmp_path):
    sweep = write_sweep(env, slurm={"partition": "gpu", "gres": "gpu:1"})
    assert sweep_main([str(sweep), "--job-index", "1"]) == 0           # one array task
    assert len(runs(env)) == 1
    script = tmp_path / "sweep.sbatch"
    assert sweep_main([str(sweep), "--slurm-array", str(script), "--parallel", "2"]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0,2,3%2" in text                            # job 1 is done
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --gres=gpu:1" in text
    assert f"-m megaproc.sweep {sweep} --job-index \"${{SLURM_ARRAY_TASK_ID}}\"" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert runs(env) == ["optim.lr=0.2__train.max_steps=1"]            # nothing else ran


def test_final_metrics_sources(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "eval.jsonl").write_text('{"step": 3, "heldout_acc": 0.7, '
                                                  '"timestamp": 1.0}\n')
    assert sweep_jobs.final_metrics(tmp_path) == {"step": 3, "heldout_acc": 0.7}
    (tmp_path / "metrics.json").write_text(json.dumps([{"epoch": 1, "test_acc": 0.6},
                                                       {"epoch": 2, "test_acc": 0.8}]))
    assert sweep_jobs.final_metrics(tmp_path) == {"epoch": 2, "test_acc": 0.8}


def test_classify_cli_translates_and_validates(tmp_path, capsys, monkeypatch):
    def no_exec(*args):
        raise AssertionError(f"the CLI must not start the trainer here: {args}")

    monkeypatch.setattr(os, "execv", no_exec)
    argv = ["--results-path", str(tmp_path / "r"), "--model", "qwen0.6B-cpu", "--target_func",
            "fn_c", "--sequence_length", "24", "--train_set_size", "20", "--test_set_size", "10",
            "--batch_size", "5", "--lr", "1e-3", "--eta_min", "1e-5", "--n_epochs", "2",
            "--weight_decay", "0", "--precision", "fp32", "--device", "cpu", "--seed", "1",
            "log.log_every=1"]
    command, results, flags, overrides, dry = classify_command(argv)
    assert results == tmp_path / "r" and not dry and flags["results_path"] == str(results)
    assert command[1:4] == [str(REPO / "megaproc/train.py"), "--config",
                            str(REPO / "configs/classify/base.yaml")]
    assert "classify.sequence_length=24" in overrides and "log.log_every=1" in overrides
    assert classify_main(argv + ["--dry-run"]) == 0
    assert capsys.readouterr().out.strip().endswith("log.log_every=1")
    for bad, message in ((["--lrr", "1"], "unknown seed flag 'lrr'"),
                         (["--target_func", "fn_h", "--sequence_length", "22"], "multiple of 4"),
                         (["--train_set_size", "21"], "'classify.train_set_size' must be even"),
                         (["--model", "gpt2"], "'model.name'")):
        assert classify_main(argv + bad) == 2
        assert message in capsys.readouterr().err
    assert classify_main(argv[2:]) == 2
    assert "--results-path is required" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real jobs
@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    """A seed-style 2-job sweep of real megaproc classification runs (tiny model and data)."""
    root = tmp_path_factory.mktemp("real_sweep")
    sweep = root / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "experiment_name": "real", "results_root": str(root),
        "base_args": {"model": "qwen0.6B-cpu", "train_set_size": 20, "test_set_size": 10,
                      "batch_size": 5, "lr": 1e-3, "eta_min": 1e-5, "n_epochs": 2,
                      "precision": "fp32", "device": "cpu", "seed": 3,
                      "sequence_length": 16, "classify.cache_dir": str(root / "cache"),
                      "log.log_every": 2},
        "grid": {"target_func": ["fn_a", "fn_c"]}}))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "megaproc.sweep", str(sweep), "--no-progress"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    return root / "real", done


@pytest.mark.slow
def test_real_jobs_run_to_completion(real_sweep):
    exp, done = real_sweep
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for target in ("fn_a", "fn_c"):
        job = exp / f"target_func={target}"
        assert (job / "DONE").is_file() and (job / "config.yaml").is_file()
        metrics = json.loads((job / "DONE").read_text())["metrics"]
        assert metrics["step"] >= 1 and metrics["loss"] > 0
    rerun = subprocess.run([sys.executable, "-m", "megaproc.sweep", str(exp.parent / "sweep.yaml"),
                            "--no-progress"], capture_output=True, text=True, cwd=REPO,
                           timeout=300)
    assert rerun.returncode == 0 and "0 jobs to run, 2 already done" in rerun.stdout


@pytest.mark.slow
def test_real_jobs_report_train_and_test_accuracy(real_sweep):
    exp, done = real_sweep
    metrics = json.loads((exp / "target_func=fn_a" / "metrics.json").read_text())
    assert len(metrics["train_acc"]) == len(metrics["test_acc"]) >= 2   # start + end at least
    with open(exp / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        assert 0.0 <= float(row["train_acc"]) <= 1.0 and 0.0 <= float(row["test_acc"]) <= 1.0


@pytest.mark.slow
def test_classify_cli_runs_the_trainer(tmp_path):
    results = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "megaproc.classify", "--results-path", str(results), "--model",
         "llama3-cpu", "--target_func", "fn_b", "--sequence_length", "12", "--train_set_size",
         "20", "--test_set_size", "10", "--batch_size", "5", "--n_epochs", "1", "--lr", "1e-3",
         "--precision", "fp32", "--device", "cpu", f"classify.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    config = json.loads((results / "config.json").read_text())
    assert config["args"]["target_func"] == "fn_b" and "model.name=llama3-cpu" in config["overrides"]
    resolved = yaml.safe_load((results / "config.yaml").read_text())   # written by the trainer
    assert resolved["classify"]["target_func"] == "fn_b" and resolved["model"]["name"] == "llama3-cpu"
    assert (results / "logs" / "train.jsonl").is_file()
