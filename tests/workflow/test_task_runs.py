"""Real trainer runs of the task workflow (single CPU process each, reused across tests).

- pre-pretraining with the curriculum: a straight run, and the same run stopped in the middle
  of stage 2 (window half full) and resumed, give bitwise identical per-step losses,
  ``curr_acc``/``stage``/``alpha`` fields and held-out evaluations; the curriculum advances on
  schedule, ends the run after the last stage, and too-long examples are dropped and counted;
- pretraining from the pre-pretrained weights with the mixin: the consumed mixin samples match
  ``mixin_percent`` and ``loss/mixin`` is logged; the held-out task eval runs periodically;
- ``python -m megaproc.evaluate`` on the exported model and on the checkpoint.

``curriculum.curr_threshold=0`` makes every check with a full window advance, so the stage
timeline is known in advance: 4 examples per step (micro 2 x accum 2), a window of 12, a check
every 2 steps -> advances at steps 4 and 8, completion at step 12.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch import FAST, REPO, read_jsonl, run

pytestmark = pytest.mark.slow

PPTRAIN = str(REPO / "configs" / "pptrain_cpu.yaml")
PRETRAIN = str(REPO / "configs" / "pretrain_cpu.yaml")
SEQ_LEN = 23  # drops the longest ~4% (stage 1) to ~15% (stage 3) of the n=26 symbolic examples


def pptrain_overrides(out: Path, splits: str, max_steps: int) -> list[str]:
    return FAST + [f"run.out_dir={out}", "model.config_overrides=", f"train.seq_len={SEQ_LEN}",
                   f"train.max_steps={max_steps}", "checkpoint.save_every=0",
                   "checkpoint.keep_last_k=0", "task.max_input_size=26", "task.max_lookahead=3",
                   f"task.splits_dir={splits}", "curriculum.curr_window=12",
                   "curriculum.curr_check_every=2", "curriculum.curr_threshold=0.0",
                   "task.eval_subset_size=16", "schedule.kind=warmup_constant"]


def train(overrides: list[str], config: str) -> subprocess.CompletedProcess:
    proc = run(1, overrides, config=config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def state(run_dir: Path) -> dict:
    from megaproc.checkpoint import latest_checkpoint, read_trainer_state

    return read_trainer_state(latest_checkpoint(run_dir))


def without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("timestamp", "tokens_per_s", "data_wait_frac")}
            for r in records]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, symbolic_splits):
    tmp = tmp_path_factory.mktemp("task_runs")
    straight = tmp / "straight"
    out = {"straight_proc": train(pptrain_overrides(straight, symbolic_splits, 30), PPTRAIN)}
    resumed = tmp / "resumed"
    out["part1_proc"] = train(pptrain_overrides(resumed, symbolic_splits, 6), PPTRAIN)
    out["part2_proc"] = train(pptrain_overrides(resumed, symbolic_splits, 30), PPTRAIN)
    pretrain = tmp / "pretrain"
    out["pretrain_proc"] = train(FAST + [
        f"run.out_dir={pretrain}", "model.config_overrides=", f"model.init_from=latest:{straight}",
        f"data.mixin={symbolic_splits}/mixin.jsonl", "data.mixin_percent=0.1",
        f"task.splits_dir={symbolic_splits}", "task.eval_every=5", "task.eval_subset_size=16",
        "train.max_steps=10", "checkpoint.save_every=0"], PRETRAIN)
    out.update(straight=straight, resumed=resumed, pretrain=pretrain, tmp=tmp, splits=symbolic_splits)
    return out


def test_curriculum_advances_on_schedule_and_ends_after_the_last_stage(runs):
    records = read_jsonl(runs["straight"] / "logs" / "train.jsonl")
    assert [r["step"] for r in records] == list(range(1, 13))   # stopped by the curriculum
    stages = [r["stage"] for r in records]
    assert stages == [1] * 4 + [2] * 4 + [3] * 4
    assert [r["alpha"] for r in records] == pytest.approx([s / 3 for s in stages])
    assert all(r["curr_acc"] is None or 0.0 <= r["curr_acc"] <= 1.0 for r in records)
    assert all("loss/graph_search" in r for r in records)
    evals = read_jsonl(runs["straight"] / "logs" / "eval.jsonl")
    assert [(e["step"], e["stage"], e["event"]) for e in evals] == \
        [(0, 1, "start"), (4, 2, "advance"), (8, 3, "advance"), (12, 3, "completed")]
    assert [e.get("passed_stage") for e in evals] == [None, 1, 2, 3]     # all three stages passed
    for e in evals:
        assert e["num_examples"] + e["num_dropped"] == 16 and 0.0 <= e["heldout_acc"] <= 1.0
        assert e["heldout_loss"] > 0 and e["alpha"] == pytest.approx(e["stage"] / 3)
    final = state(runs["straight"])
    assert final["step"] == 12 and final["consumed_samples"] == 48
    assert final["hooks"]["curriculum"] == {"stage": 3, "window": "", "completed": True, "max_stage": 3}
    assert final["data"]["stage"] == 3


def test_too_long_examples_are_dropped_counted_and_reported(runs):
    data = state(runs["straight"])["data"]
    assert data["dropped_too_long"] > 0
    assert sum(data["positions"]) == data["consumed_samples"] + sum(data["skip_counts"].values())
    log = runs["straight_proc"].stdout
    assert "dropping task examples longer than train.seq_len + 1 = 24 tokens" in log
    assert f"{data['dropped_too_long']} task examples longer than" in log


def test_resume_in_the_middle_of_a_stage_is_bitwise_identical(runs):
    part1 = state(runs["resumed"])  # the final state after the resumed part
    assert "resumed from" in runs["part2_proc"].stdout and "step_00000006" in runs["part2_proc"].stdout
    straight_log = without_time(read_jsonl(runs["straight"] / "logs" / "train.jsonl"))
    resumed_log = without_time(read_jsonl(runs["resumed"] / "logs" / "train.jsonl"))
    assert resumed_log == straight_log                        # losses, curr_acc, stage, alpha
    assert without_time(read_jsonl(runs["resumed"] / "logs" / "eval.jsonl")) == \
        without_time(read_jsonl(runs["straight"] / "logs" / "eval.jsonl"))
    assert part1["data"] == state(runs["straight"])["data"]  # generator index, counts


def test_checkpoint_in_the_middle_of_a_stage_holds_window_and_generator_index(runs):
    mid = json.loads((runs["resumed"] / "checkpoints" / "step_00000006" / "trainer_state.json").read_text())
    assert mid["hooks"]["curriculum"]["stage"] == 2
    assert len(mid["hooks"]["curriculum"]["window"]) == 8       # steps 5 and 6 since the advance
    assert mid["data"]["stage"] == 2 and mid["data"]["positions"][0] >= 24


def test_pretraining_mixin_ratio_and_per_source_loss(runs):
    final = state(runs["pretrain"])
    counts = final["consumed_per_source"]
    consumed = final["consumed_samples"]
    assert consumed == 40 and len(counts) == 2 and "mixin" in counts
    assert sum(counts.values()) == consumed
    assert abs(counts["mixin"] - 0.1 * consumed) <= 1
    records = read_jsonl(runs["pretrain"] / "logs" / "train.jsonl")
    assert any("loss/mixin" in r for r in records)
    assert "initialised model weights from" in runs["pretrain_proc"].stdout
    evals = [e for e in read_jsonl(runs["pretrain"] / "logs" / "eval.jsonl") if "heldout_acc" in e]
    assert [e["step"] for e in evals] == [0, 5, 10]


def test_evaluate_cli_on_exported_model_and_checkpoint(runs, tokenizer):
    from transformers import AutoModelForCausalLM

    from megaproc.checkpoint import latest_checkpoint
    from megaproc.eval.task_accuracy import HeldoutEvaluator, load_eval_records

    ckpt = latest_checkpoint(runs["pretrain"])
    export_dir = runs["tmp"] / "export"
    proc = module("megaproc.export", str(ckpt), str(export_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    test_split = f"{runs['splits']}/test.jsonl"
    by_model = module("megaproc.evaluate", "--model", str(export_dir), "--split", test_split,
                      "--max-examples", "24")
    by_ckpt = module("megaproc.evaluate", "--checkpoint", f"latest:{runs['pretrain']}", "--split",
                     test_split, "--max-examples", "24")
    assert by_model.returncode == 0 and by_ckpt.returncode == 0, by_model.stderr[-2000:]
    result = json.loads(by_model.stdout)["split"]
    result_ckpt = json.loads(by_ckpt.stdout)["split"]
    assert result["num_examples"] + result["num_dropped"] == 24
    for key in ("heldout_acc", "heldout_loss", "num_examples"):
        assert result_ckpt[key] == pytest.approx(result[key], rel=1e-5)
    model = AutoModelForCausalLM.from_pretrained(export_dir).eval()
    evaluator = HeldoutEvaluator(load_eval_records(test_split, 24), tokenizer, 1024)
    expected = evaluator.run(lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits)
    assert result["heldout_acc"] == pytest.approx(expected["heldout_acc"])
    assert result["heldout_loss"] == pytest.approx(expected["heldout_loss"], rel=1e-5)

    bad = module("megaproc.evaluate", "--model", str(export_dir), "--split", str(REPO / "setup.py"))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith("error:") and "invalid JSON" in bad.stderr


def module(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", name, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def zero3_run(out: Path, splits: str, max_steps: int) -> subprocess.CompletedProcess:
    proc = run(2, pptrain_overrides(out, splits, max_steps) +
               ["deepspeed.config=ds_configs/zero3.json"], config=PPTRAIN)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_rank_zero3_curriculum_run(runs):
    """On 2 ranks with ZeRO-3 (GPT-2's tied head, sliced, on the task
    vocabulary): the window gathers both ranks' examples (8 per step), every held-out evaluation
    runs in lock step, the run completes, and a run stopped in the middle of stage 2 (step 3)
    and resumed on 2 ranks reproduces it bitwise."""
    out, resumed = runs["tmp"] / "zero3", runs["tmp"] / "zero3_resumed"
    zero3_run(out, runs["splits"], 30)
    zero3_run(resumed, runs["splits"], 3)
    assert "resumed from" in zero3_run(resumed, runs["splits"], 30).stdout
    for name in ("train.jsonl", "eval.jsonl"):
        assert without_time(read_jsonl(resumed / "logs" / name)) == \
            without_time(read_jsonl(out / "logs" / name)), name
    assert state(resumed)["data"] == state(out)["data"]
    records = read_jsonl(out / "logs" / "train.jsonl")
    # window 12 fills in 2 steps of 8 examples: advances at steps 2 and 4, completion at 6
    assert [r["stage"] for r in records] == [1, 1, 2, 2, 3, 3]
    evals = read_jsonl(out / "logs" / "eval.jsonl")
    assert [(e["step"], e["event"]) for e in evals] == \
        [(0, "start"), (2, "advance"), (4, "advance"), (6, "completed")]
    assert all(e["num_examples"] + e["num_dropped"] == 16 for e in evals)
    final = state(out)
    assert final["consumed_samples"] == 48 and final["hooks"]["curriculum"]["completed"]
    data = final["data"]
    assert len(data["positions"]) == 2 and len(data["rank_skip_counts"]) == 2
    assert sum(data["positions"]) == 48 + sum(data["skip_counts"].values())
