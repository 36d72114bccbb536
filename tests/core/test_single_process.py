"""The trainer as one plain ``python megaproc/train.py`` process: logging outputs, preemption,
and bad input that must stop with one clear line and write nothing."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.launch import FAST, losses, read_jsonl, run, start, wait_for

pytestmark = pytest.mark.slow  # every test starts the trainer

PREEMPTED_EXIT_CODE = 75


def test_sigusr1_finishes_step_saves_and_exits_for_requeue(tmp_path):
    out = tmp_path / "run"
    job = start(1, FAST + [f"run.out_dir={out}", "train.max_steps=100000", "log.tensorboard=true",
                           "log.wandb=true", "log.wandb_mode=offline"], tmp_path / "job.log",
                WANDB_SILENT="true")
    train_log = out / "logs" / "train.jsonl"
    wait_for(lambda: train_log.is_file() and len(train_log.read_text().splitlines()) >= 3, job,
             what="three logged steps")
    job.send_signal(signal.SIGUSR1)
    assert job.wait(timeout=300) == PREEMPTED_EXIT_CODE, (tmp_path / "job.log").read_text()[-3000:]
    last_step = read_jsonl(train_log)[-1]["step"]
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == [f"step_{last_step:08d}"]
    assert (ckpts[0] / "COMPLETE").is_file()
    assert json.loads((ckpts[0] / "trainer_state.json").read_text())["step"] == last_step
    # Optional sinks were written: TensorBoard events and an offline wandb run.
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert list((out / "wandb").glob("offline-run-*"))
    # A requeued job continues from that checkpoint to the end.
    proc = run(1, FAST + [f"run.out_dir={out}", f"train.max_steps={last_step + 2}",
                          "log.tensorboard=true"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(losses(out)) == list(range(1, last_step + 3))


def _one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return errors[0]


def test_missing_tokenizer_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = run(1, FAST + [f"run.out_dir={out}", f"data.tokenizer={tmp_path / 'no_such_tok'}"])
    assert "tokenizer not found" in _one_error_line(proc)
    assert not (out / "checkpoints").exists() and not (out / "logs").exists()


@pytest.mark.parametrize("override, needle", [
    ("train.max_steps=ten", "'train.max_steps'"),
    ("data.train=[/no/such/prefix]", "data.tokenizer"),
])
def test_bad_values_are_one_line(tmp_path, override, needle):
    proc = run(1, FAST + [f"run.out_dir={tmp_path / 'run'}", override])
    assert needle in _one_error_line(proc)


def test_fresh_start_refuses_to_overwrite_a_run(tmp_path):
    out = tmp_path / "run"
    assert run(1, FAST + [f"run.out_dir={out}", "train.max_steps=2"]).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in Path(out).rglob("*") if p.is_file()}
    proc = run(1, FAST + [f"run.out_dir={out}", "train.max_steps=4", "checkpoint.resume=none"])
    assert "already holds checkpoints" in _one_error_line(proc)
    assert {p: p.stat().st_mtime_ns for p in Path(out).rglob("*") if p.is_file()} == before


def test_resume_on_changed_data_is_refused(tmp_path):
    mixin = tmp_path / "mixin.jsonl"
    rows = [{"prompt": f"Alex is {i}. Alex is", "output_texts": [f" x{i}."]} for i in range(50)]
    mixin.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    common = FAST + [f"run.out_dir={out}", f"data.mixin={mixin}", "data.mixin_percent=0.1"]
    assert run(1, common + ["train.max_steps=2"]).returncode == 0
    rows[0]["prompt"] = "Bob is 0. Bob is"
    mixin.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = {p: p.stat().st_mtime_ns for p in Path(out).rglob("*") if p.is_file()}
    proc = run(1, common + ["train.max_steps=4"])
    assert "data_fingerprint" in _one_error_line(proc)
    assert {p: p.stat().st_mtime_ns for p in Path(out).rglob("*") if p.is_file()} == before


def test_restart_before_first_checkpoint_starts_over_and_keeps_old_logs(tmp_path):
    out = tmp_path / "run"
    settings = FAST + [f"run.out_dir={out}", "checkpoint.save_final=false", "train.max_steps=2"]
    assert run(1, settings).returncode == 0
    first = (out / "logs" / "train.jsonl").read_text()
    proc = run(1, settings)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept = list(out.glob("logs.before_restart_*"))
    assert len(kept) == 1 and (kept[0] / "train.jsonl").read_text() == first
    assert sorted(losses(out)) == [1, 2]


def test_total_batch_tokens_mfu_plots_and_step_metrics(tmp_path):
    out = tmp_path / "run"
    base = [o for o in FAST if not o.startswith("train.grad_accum")]
    proc = run(1, base + [f"run.out_dir={out}", "train.max_steps=4", "eval.every=2",
                          "train.total_batch_tokens=192",  # 192 = micro 2 x seq 32 x accum 3
                          "train.peak_flops=1e12", "log.plot_at_end=true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_jsonl(out / "logs" / "train.jsonl")
    assert records[-1]["samples"] == 4 * 2 * 3
    # mfu = model FLOP/s over the configured peak (6 x matmul params + attention, per token)
    from transformers import AutoConfig

    from megaproc.flops import model_flops_per_token

    config = AutoConfig.from_pretrained(out / "checkpoints" / "step_00000004" / "hf_config")
    for r in records:
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * model_flops_per_token(config, 32) / 1e12)
    assert sorted(p.name for p in (out / "plots").iterdir()) >= ["loss.png", "lr.png"]
    assert "grad_accum: 3" in (out / "config.yaml").read_text()
    step_metrics = json.loads((out / "step_metrics.json").read_text())
    evals = read_jsonl(out / "logs" / "eval.jsonl")
    assert sorted(step_metrics, key=int) == [str(e["step"]) for e in evals] == ["2", "4"]
    assert all(step_metrics[str(e["step"])]["val_loss"] == e["val_loss"] for e in evals)
    bad = run(1, base + [f"run.out_dir={tmp_path / 'bad'}", "train.total_batch_tokens=100"])
    assert "'train.total_batch_tokens'" in _one_error_line(bad)


def test_two_rank_run_leaves_no_shared_memory_behind(tmp_path):
    import glob
    import os
    import subprocess
    import sys

    from megaproc.distributed import free_port
    from tests.launch import QUICKSTART, REPO, TRAIN, env

    port = free_port()
    pattern = f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"
    proc = subprocess.run([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
                           "--master_port", str(port), TRAIN, "--config", QUICKSTART, *FAST,
                           f"run.out_dir={tmp_path / 'run'}", "train.max_steps=2"],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert glob.glob(pattern) == []  # DeepSpeed's CPU all-reduce buffers were unlinked
