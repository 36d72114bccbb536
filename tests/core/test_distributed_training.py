"""Real multi-process training (2 CPU ranks, gloo; the deepspeed launcher and torchrun).

One module-scoped set of runs serves several checks, because each launch costs ~30 s:
- ZeRO-0, ZeRO-2 and ZeRO-3 straight runs of 2N steps give the same loss curve;
- ZeRO-2: a job killed -9 *while writing* checkpoint 2N resumes from checkpoint N and then
  reproduces the straight run's losses bitwise;
- ZeRO-3 with the model built under ``zero.Init``: a job killed -9 right after checkpoint N
  resumes bitwise identically;
- the run directory holds the documented files, and the loss falls;
- a resume with a changed micro batch is refused in one line, leaving the run untouched;
- the exported ZeRO-3 checkpoint reproduces the trainer's validation loss.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tests.launch import FAST, kill_job, losses, read_jsonl, run, start, wait_for

pytestmark = pytest.mark.slow

N = 4  # checkpoint interval; straight runs train 2N steps


ZERO3_INIT = ["model.zero3_init=always"]


def settings(stage: int, out: Path, extra: list[str] = ()) -> list[str]:
    return FAST + [f"deepspeed.config=ds_configs/zero{stage}.json", f"run.out_dir={out}",
                   f"train.max_steps={2 * N}", f"checkpoint.save_every={N}",
                   "checkpoint.keep_last_k=0", "eval.every=4", *extra]


def straight(out: Path, stage: int, extra: list[str] = (), launcher: str = "torchrun") -> Path:
    proc = run(2, settings(stage, out, extra), launcher=launcher)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    # The ZeRO-2 run is the deepspeed launcher's: the torchrun runs below must reproduce it.
    out = {stage: straight(tmp / f"straight_zero{stage}", stage,
                           launcher="deepspeed" if stage == 2 else "torchrun")
           for stage in (0, 2, 3)}
    out["zero3_init"] = straight(tmp / "straight_zero3_init", 3, ZERO3_INIT)
    return out | {"tmp": tmp}


def test_run_directory_layout_and_loss_falls(runs):
    out = runs[2]
    assert (out / "config.yaml").is_file()
    records = read_jsonl(out / "logs" / "train.jsonl")
    assert [r["step"] for r in records] == list(range(1, 2 * N + 1))
    for field in ("step", "loss", "lr", "tokens", "samples", "tokens_per_s", "grad_norm", "timestamp"):
        assert field in records[-1], field
    assert records[-1]["samples"] == 2 * N * 2 * 2 * 2  # steps * micro * accum * ranks
    assert records[-1]["loss"] < records[0]["loss"] - 0.5
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000004", "step_00000008"]
    state = json.loads((out / "checkpoints" / "step_00000008" / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["consumed_samples"] == 64
    geometry = dict(state["geometry"])
    assert len(geometry.pop("data_fingerprint")) == 16
    assert geometry == {"train.micro_batch": 2, "train.grad_accum": 2, "world_size": 2,
                        "train.seq_len": 32}
    assert sorted(os.listdir(out / "checkpoints" / "step_00000008" / "rng")) == \
        ["rank_00000.pt", "rank_00001.pt"]
    evals = read_jsonl(out / "logs" / "eval.jsonl")
    assert [e["step"] for e in evals] == [4, 8] and all(math.isfinite(e["val_loss"]) for e in evals)


def test_zero_stages_give_the_same_loss_curve(runs):
    curves = {stage: losses(runs[stage]) for stage in (0, 2, 3)}
    for step, value in curves[0].items():
        assert curves[2][step] == pytest.approx(value, rel=1e-4, abs=1e-4), step
        assert curves[3][step] == pytest.approx(value, rel=1e-4, abs=1e-4), step


def resume(out: Path, stage: int, extra: list[str] = ()) -> dict[int, float]:
    """Restart a killed job with the same settings; return its per-step losses."""
    proc = run(2, settings(stage, out, extra))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / f'step_{N:08d}'}" in proc.stdout + proc.stderr
    assert not list((out / "checkpoints").glob(".tmp_*"))
    return losses(out)


def test_zero2_kill_during_checkpoint_write_then_resume_is_bitwise(runs):
    out = runs["tmp"] / "killed_in_write_zero2"
    job = start(2, settings(2, out), runs["tmp"] / "zero2_killed.log",
                MEGAPROC_FAULT_PAUSE_IN_SAVE=f"{2 * N}:60")
    tmp_dir = out / "checkpoints" / f".tmp_step_{2 * N:08d}"
    wait_for(lambda: (tmp_dir / "rng" / "rank_00001.pt").exists(), job, what="checkpoint 8 write")
    kill_job(job)
    assert not (out / "checkpoints" / f"step_{2 * N:08d}").exists()
    assert resume(out, 2) == losses(runs[2])


def test_zero3_kill_right_after_checkpoint_then_resume_is_bitwise(runs):
    out = runs["tmp"] / "killed_after_ckpt_zero3"
    job = start(2, settings(3, out, ZERO3_INIT), runs["tmp"] / "zero3_killed.log")
    wait_for(lambda: (out / "checkpoints" / f"step_{N:08d}" / "COMPLETE").exists(), job,
             what="checkpoint 4")
    kill_job(job)
    assert resume(out, 3, ZERO3_INIT) == losses(runs["zero3_init"])


def test_resume_with_changed_micro_batch_is_refused(runs):
    out = runs[2]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    proc = run(2, FAST + ["deepspeed.config=ds_configs/zero2.json", f"run.out_dir={out}",
                          "train.max_steps=12", "train.micro_batch=4"])
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train.micro_batch: 2 -> 4" in errors[0], proc.stderr[-2000:]
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_export_of_zero3_checkpoint_reproduces_validation_loss(runs, tmp_path):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megaproc.config import load_config
    from megaproc.data.batch import collate, rank_sample_indices

    out = runs["zero3_init"]
    export_dir = tmp_path / "hf"
    proc = run_module("megaproc.export", str(out / "checkpoints" / "step_00000008"), str(export_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = AutoModelForCausalLM.from_pretrained(export_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    cfg = load_config(out / "config.yaml")
    valid = _valid_dataset(cfg, tokenizer)
    total, count = 0.0, 0
    for b in range(cfg.eval.max_batches):
        for rank in range(2):
            idx = rank_sample_indices(0, b, cfg.train.micro_batch, 2, rank)
            batch = collate([valid[int(i)] for i in idx], tokenizer.pad_token_id, cfg.train.seq_len + 1)
            with torch.no_grad():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"].reshape(-1),
                                     ignore_index=-100, reduction="sum").item()
            count += int((batch["labels"] != -100).sum())
    logged = read_jsonl(out / "logs" / "eval.jsonl")[-1]
    assert logged["step"] == 8
    assert total / count == pytest.approx(logged["val_loss"], rel=1e-5)


def run_module(module: str, *args: str):
    import subprocess
    import sys

    from tests.launch import REPO

    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True)


def _valid_dataset(cfg, tokenizer):
    from megaproc.data.build import build_train_valid
    from megaproc.runs import resolve

    data_cfg = resolve(cfg, 2).data
    _, valid, _ = build_train_valid(data_cfg, tokenizer, cfg.train.seq_len, cfg.run.seed,
                                    cfg.train.max_steps * 8, cfg.eval.max_batches * cfg.train.micro_batch * 2)
    return valid


def test_torchrun_runs_the_same_program_with_the_same_losses(runs):
    import subprocess
    import sys

    from megaproc.distributed import free_port
    from tests.launch import QUICKSTART, REPO, TRAIN, env

    out = runs["tmp"] / "torchrun_zero2"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), TRAIN, "--config", QUICKSTART, *settings(2, out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(out) == losses(runs[2])
