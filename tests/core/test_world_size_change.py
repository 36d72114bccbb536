"""Resume on another world size (``checkpoint.allow_world_size_change``): ZeRO-2 and ZeRO-3,
2 -> 1 and 1 -> 2 ranks.

For each ZeRO stage, an uninterrupted 2-rank run and an uninterrupted 1-rank run (twice the
gradient accumulation, so the same global batch of 8 samples) train ``2N`` steps and checkpoint
at step ``N``; then each checkpoint resumes on the *other* world size.  Shown:

- right after loading, the consolidated fp32 weights, Adam ``exp_avg``/``exp_avg_sq``/``step``
  and every param group's hyper-parameters equal the saved ones (the resumed run saves its
  engine state from a test hook before its first step; both sides are consolidated with
  :func:`megaproc.checkpoint.reshard.consolidated_zero_state`, whose fp32 weights are checked
  against DeepSpeed's own ``get_fp32_state_dict_from_zero_checkpoint``);
- the next global batches hold the same sample indices and tokens as the uninterrupted run's;
- the loss continues: per-step losses equal the uninterrupted runs' within ``LOSS_RTOL``;
- ZeRO-0 (whole states) resumes 2 -> 1 through DeepSpeed's usual loader;
- without the flag, or with a global batch that changes, the resume is refused in one line, as
  is a world-size change of a graph-search task run.

The runs use ``model.dropout=0.1``: each micro-batch's dropout masks come from a generator
seeded by the run seed and the micro-batch's global sample offset (never by the rank, see
:func:`megaproc.trainer.micro_batch_seed`), so a sample draws the same masks wherever it runs
and the losses compare step by step with dropout on.

This module is also the training script of its runs (``__main__`` below): the trainer with a
test hook that records every micro-batch and dumps the engine state right after a resume.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

if __package__ in (None, ""):  # run as a training script by a launcher
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tests.launch as launch  # noqa: E402
from tests.launch import FAST, losses, read_jsonl, run  # noqa: E402

pytestmark = pytest.mark.slow

N = 2  # checkpoint step; uninterrupted runs train 2N steps
GLOBAL_BATCH = 8  # micro_batch 2 x grad_accum (2 on 2 ranks, 4 on 1 rank) x ranks
RECORD_ENV = "MEGAPROC_TEST_RECORD_DIR"
# Same weights, optimizer state and samples, but the gradient of a global batch is summed in
# another order (4 local micro-steps on 1 rank; 2 per rank plus an all-reduce on 2), so fp32
# rounding differs: measured <= 5e-9 relative on these machines over the resumed steps.  1e-6
# leaves 200x room and is still 16x below the smallest real error seen (the ZeRO-3 universal
# loader's shared Adam step counter moved the loss by 1.6e-5 relative after one step).
LOSS_RTOL = 1e-6


def settings(stage: int, out: Path, nproc: int, extra: list[str] = ()) -> list[str]:
    return FAST + [f"deepspeed.config=ds_configs/zero{stage}.json", f"run.out_dir={out}",
                   "model.dropout=0.1", f"train.grad_accum={GLOBAL_BATCH // (2 * nproc)}",
                   f"train.max_steps={2 * N}", f"checkpoint.save_every={N}",
                   "checkpoint.keep_last_k=0", "eval.every=0", *extra]


def drive(nproc: int, overrides: list[str], record: Path):
    """Run this module as the training script (trainer + recording hook) on ``nproc`` ranks."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(launch, "TRAIN", str(Path(__file__).resolve()))
        return run(nproc, overrides, **{RECORD_ENV: str(record)})


def checkpoint(out: Path, step: int = N) -> Path:
    return out / "checkpoints" / f"step_{step:08d}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Uninterrupted runs on 1 and 2 ranks, then each stage's checkpoints resumed on the other."""
    tmp = tmp_path_factory.mktemp("world_size_change")
    out = {}
    for stage in (2, 3):
        for nproc in (2, 1):
            run_dir = tmp / f"straight_z{stage}_{nproc}rank"
            proc = drive(nproc, settings(stage, run_dir, nproc), run_dir / "record")
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            out[stage, nproc] = run_dir
        for saved, target in ((2, 1), (1, 2)):
            run_dir = tmp / f"resumed_z{stage}_{saved}to{target}"
            proc = drive(target, settings(stage, run_dir, target, [
                f"checkpoint.resume={checkpoint(out[stage, saved])}",
                "checkpoint.allow_world_size_change=true"]), run_dir / "record")
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            out[stage, saved, target] = run_dir, proc.stdout + proc.stderr
    return out | {"tmp": tmp}


CASES = [(stage, saved, target) for stage in (2, 3) for saved, target in ((2, 1), (1, 2))]


def _param_groups(ds_dir: Path) -> list[dict]:
    """The base optimizer's param-group hyper-parameters saved in a ZeRO checkpoint."""
    import torch

    path = sorted(ds_dir.glob("*zero_pp_rank_0_*optim_states.pt"))[0]
    sd = torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]
    groups = (sd["base_optimizer_state"] if "base_optimizer_state" in sd
              else sd["optimizer_state_dict"])["param_groups"]
    return [{k: v for k, v in g.items() if k != "params"} for g in groups]


@pytest.mark.parametrize("stage,saved,target", CASES)
def test_state_right_after_loading_equals_the_saved_state(runs, stage, saved, target):
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from megaproc.checkpoint.reshard import consolidated_zero_state

    run_dir, output = runs[stage, saved, target]
    rank_word = "rank" if target == 1 else "ranks"
    assert (f"resuming a {saved}-rank checkpoint on {target} {rank_word} (ZeRO-{stage}, "
            "re-sharded via") in output
    before_dir, after_dir = checkpoint(runs[stage, saved]) / "ds", run_dir / "record" / "after_load" / "ds"
    assert len(list(before_dir.glob("*optim_states.pt"))) == saved
    assert len(list(after_dir.glob("*optim_states.pt"))) == target
    before, after = consolidated_zero_state(before_dir), consolidated_zero_state(after_dir)
    assert sorted(after) == sorted(before) and len(before) == 28
    for name, state in before.items():
        assert sorted(after[name]) == ["exp_avg", "exp_avg_sq", "fp32", "step"], name
        for key, value in state.items():
            assert torch.equal(after[name][key], value), (name, key)
        assert float(state["step"]) == N
        assert state["exp_avg_sq"].abs().sum() > 0, name  # a real, trained Adam state
    # The consolidation agrees with DeepSpeed's own fp32 consolidation, on both world sizes.
    for ds_dir, consolidated in ((before_dir, before), (after_dir, after)):
        reference = get_fp32_state_dict_from_zero_checkpoint(str(ds_dir.parent), tag="ds")
        for name, state in consolidated.items():
            assert torch.equal(reference[name].float(), state["fp32"]), name
    # Every group keeps its own hyper-parameters (the no-decay group has weight_decay 0).
    groups = _param_groups(after_dir)
    assert groups == _param_groups(before_dir)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]


def _global_batches(run_dir: Path) -> dict[int, tuple[list[int], list[list[int]]]]:
    """Per step: the global batch's sample indices and token rows, in global order."""
    records = [r for path in sorted((run_dir / "record").glob("batches_rank*.jsonl"))
               for r in read_jsonl(path)]
    out = {}
    for step in sorted({r["step"] for r in records}):
        parts = sorted((r for r in records if r["step"] == step), key=lambda r: (r["micro"], r["rank"]))
        out[step] = ([i for r in parts for i in r["indices"]], [row for r in parts for row in r["rows"]])
    return out


@pytest.mark.parametrize("stage,saved,target", CASES)
def test_next_global_batches_hold_the_uninterrupted_samples(runs, stage, saved, target):
    run_dir, _ = runs[stage, saved, target]
    resumed = _global_batches(run_dir)
    assert sorted(resumed) == list(range(N + 1, 2 * N + 1))
    for reference in (runs[stage, saved], runs[stage, target]):
        straight = _global_batches(reference)
        for step, (indices, rows) in resumed.items():
            assert indices == list(range((step - 1) * GLOBAL_BATCH, step * GLOBAL_BATCH))
            assert (indices, rows) == straight[step], (reference.name, step)
    state = json.loads((checkpoint(run_dir, 2 * N) / "trainer_state.json").read_text())
    assert state["consumed_samples"] == 2 * N * GLOBAL_BATCH
    assert state["geometry"]["world_size"] == target


@pytest.mark.parametrize("stage,saved,target", CASES)
def test_loss_continues_where_it_was(runs, stage, saved, target):
    from megaproc.checkpoint.reshard import consolidated_zero_state

    run_dir, _ = runs[stage, saved, target]
    resumed = losses(run_dir)
    assert sorted(resumed) == list(range(N + 1, 2 * N + 1))
    for reference in (runs[stage, saved], runs[stage, target]):
        straight = losses(reference)
        for step, value in resumed.items():
            assert value == pytest.approx(straight[step], rel=LOSS_RTOL), (reference.name, step)
    # Every parameter's Adam step kept counting one per optimizer step after the resume.
    final = consolidated_zero_state(checkpoint(run_dir, 2 * N) / "ds")
    assert {float(state["step"]) for state in final.values()} == {2 * N}


def test_zero0_resumes_on_fewer_ranks_without_re_sharding(runs):
    """ZeRO-0 saves whole states: DeepSpeed's usual loader serves any world size (a universal
    load would skip the weights, so none is configured)."""
    tmp = runs["tmp"]
    straight = tmp / "straight_z0_2rank"
    proc = run(2, settings(0, straight, 2))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    resumed = tmp / "resumed_z0_2to1"
    proc = run(1, settings(0, resumed, 1, [f"checkpoint.resume={checkpoint(straight)}",
                                           "checkpoint.allow_world_size_change=true"]))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ("resuming a 2-rank checkpoint on 1 rank (ZeRO-0, whole states, nothing to re-shard)"
            in proc.stdout + proc.stderr)
    after = losses(resumed)
    assert sorted(after) == list(range(N + 1, 2 * N + 1))
    for step, value in after.items():
        assert value == pytest.approx(losses(straight)[step], rel=LOSS_RTOL), step


def _error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def test_world_size_change_without_the_flag_is_refused(runs, tmp_path):
    source = checkpoint(runs[2, 2])
    proc = run(1, settings(2, tmp_path / "refused", 1, [f"checkpoint.resume={source}"]))
    assert proc.returncode != 0
    errors = _error_lines(proc)
    assert len(errors) == 1 and "world_size: 2 -> 1" in errors[0], proc.stderr[-2000:]
    assert "checkpoint.allow_world_size_change=true" in errors[0]
    assert not (tmp_path / "refused").exists()


def test_world_size_change_that_changes_the_global_batch_is_refused(runs, tmp_path):
    source = checkpoint(runs[2, 2])
    proc = run(1, settings(2, tmp_path / "refused", 1, [
        f"checkpoint.resume={source}", "checkpoint.allow_world_size_change=true",
        "train.grad_accum=2"]))
    assert proc.returncode != 0
    errors = _error_lines(proc)
    assert len(errors) == 1 and "global batch" in errors[0] and "8 -> 4" in errors[0], \
        proc.stderr[-2000:]
    assert "train.grad_accum=4 keeps it" in errors[0]


def test_graph_search_task_refuses_a_world_size_change(tmp_path):
    from megaproc.checkpoint import Checkpointer, ResumeError

    ckpt = tmp_path / "checkpoints" / "step_00000002"
    ckpt.mkdir(parents=True)
    geometry = {"train.micro_batch": 2, "train.grad_accum": 2, "world_size": 2,
                "train.seq_len": 32, "data_fingerprint": "x"}
    (ckpt / "trainer_state.json").write_text(json.dumps(
        {"step": 2, "geometry": geometry, "settings": {"task.kind": "none"}}))
    moved = dict(geometry, world_size=1, **{"train.grad_accum": 4})
    checkpointer = Checkpointer(tmp_path, allow_world_size_change=True)
    with pytest.raises(ResumeError, match=r"task.kind: graph_search.*per-rank lanes") as info:
        checkpointer.check_resume(ckpt, moved, {"task.kind": "graph_search"})
    assert "\n" not in str(info.value)
    # The same change of an indexed-data run is accepted (grad_accum keeps the global batch).
    assert checkpointer.check_resume(ckpt, moved, {"task.kind": "none"}) == []


# ----------------------------------------------------------------------------- training script
def _main() -> int:
    """The trainer (as ``megaproc/train.py``) plus :class:`Recorder`."""
    from megaproc.errors import run_cli

    def train(argv):
        from megaproc import distributed as dist_utils
        from megaproc.config import load_config
        from megaproc.console_log import setup_console_log
        from megaproc.train import parse_args
        from megaproc.trainer import Trainer

        args = parse_args(argv)
        setup_console_log()
        cfg = load_config(args.config, args.overrides)
        dist_utils.init_distributed(args.local_rank)
        trainer = Trainer(cfg, extra_hooks=[_recorder(Path(os.environ[RECORD_ENV]))])
        try:
            return trainer.train()
        finally:
            trainer.close()

    return run_cli(train, sys.argv[1:])


def _recorder(record: Path):
    """A hook that writes every micro-batch (global sample indices and token rows) per rank and,
    on a resume, saves the engine state right after loading, before the first step."""
    from megaproc.data.batch import rank_sample_indices
    from megaproc.hooks import Hook

    class Recorder(Hook):
        name = "test_recorder"
        priority = 5

        def __init__(self):
            self.step, self.micro, self.file = -1, 0, None

        def on_train_start(self, trainer):
            record.mkdir(parents=True, exist_ok=True)
            self.file = open(record / f"batches_rank{trainer.rank}.jsonl", "a")
            if trainer.step > 0:  # resumed: the state the loop will start from
                trainer.engine.save_checkpoint(str(record / "after_load"), tag="ds")

        def on_batch(self, trainer, batch):
            if trainer.step != self.step:
                self.step, self.micro = trainer.step, 0
            src = trainer.source  # indices from the restored position and the new geometry
            indices = rank_sample_indices(src.consumed, self.micro, src.micro_batch,
                                          src.world_size, src.rank)
            self.file.write(json.dumps({"step": trainer.step + 1, "micro": self.micro,
                                        "rank": trainer.rank, "indices": indices.tolist(),
                                        "rows": batch["input_ids"].tolist()}) + "\n")
            self.file.flush()
            self.micro += 1
            return batch

        def close(self):
            if self.file is not None:
                self.file.close()
                self.file = None

    return Recorder()


if __name__ == "__main__":
    sys.exit(_main())
