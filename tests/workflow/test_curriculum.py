"""Curriculum hook: window, check cadence, advancing, completion, state; 2 gloo ranks agree.

The distributed test runs the hook's real gather/advance code in two processes joined by a gloo
process group (``torch.multiprocessing.spawn``) and feeds each rank *different* correctness
flags: only the combined window decides, so both ranks must hold the same window and advance
at the same steps (a rank deciding on its own flags would advance at other steps).
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megaproc.distributed import free_port
from megaproc.hooks import Hooks
from megaproc.hooks.curriculum import CurriculumHook

MICRO, ACCUM = 2, 2


class FakeSource:
    """Records the stages the hook sets."""

    def __init__(self):
        self.stages = []

    def set_stage(self, stage):
        self.stages.append(stage)


def rank_flags(rank: int, step: int) -> list[list[int]]:
    """Per micro-step flags: rank 0 is always right; rank 1 only from step 5 on."""
    value = 1 if rank == 0 or step >= 5 else 0
    return [[value] * MICRO for _ in range(ACCUM)]


def drive(hook: CurriculumHook, rank: int, steps: int) -> list[dict]:
    """Feed ``steps`` optimizer steps of flags; returns per-step observations."""
    stops = []
    metrics = {}
    trainer = SimpleNamespace(step=0, hooks=Hooks(), request_stop=lambda reason, code=0: stops.append(reason),
                              record_metric=metrics.__setitem__)
    seen = []
    for step in range(1, steps + 1):
        for flags in rank_flags(rank, step):
            hook.record(torch.tensor(flags, dtype=torch.bool))
        trainer.step = step
        metrics.clear()
        hook.on_step_end(trainer)
        seen.append({"step": step, "stage": hook.stage, "completed": hook.completed,
                     "logged": [metrics["stage"], metrics["curr_acc"]], "window": "".join(map(str, hook.window))})
        if stops:
            break
    return seen


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        source = FakeSource()
        hook = CurriculumHook(max_stage=2, curr_window=8, curr_check_every=2, curr_threshold=0.75,
                              source=source)
        seen = drive(hook, rank, 20)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump({"seen": seen, "source": source.stages, "state": hook.state_dict()}, handle)
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_one_window_and_advance_together(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]
    seen = results[0]["seen"]
    # each step adds 2 micro-steps x 2 ranks x 2 examples = 8 flags: rank 0's then rank 1's
    assert seen[0]["window"] == "11001100"
    # steps 1-4: half the window is wrong (0.5 < 0.75): no advance although rank 0 is perfect
    assert [s["stage"] for s in seen[:4]] == [1, 1, 1, 1]
    # step 5 fills the window with correct flags, but 5 is not a check step; step 6 advances
    assert seen[4]["stage"] == 1 and seen[4]["window"] == "11111111"
    assert seen[5]["stage"] == 2 and seen[5]["logged"] == [1, 1.0] and seen[5]["window"] == ""
    # the window refills at step 7 and the last stage is passed at the step-8 check
    assert seen[-1]["step"] == 8 and seen[-1]["completed"] and seen[-1]["stage"] == 2
    assert results[0]["source"] == [2]
    assert results[0]["state"] == {"stage": 2, "window": "", "completed": True, "max_stage": 2}


def test_window_needs_to_be_full_and_checked_and_state_round_trips():
    hook = CurriculumHook(max_stage=3, curr_window=6, curr_check_every=3, curr_threshold=0.5)
    hook.record(torch.tensor([True, True, True, True]))
    assert not hook.should_advance(3)                  # window not full yet
    hook.record(torch.tensor([False, True]))
    assert hook.window_accuracy() == pytest.approx(5 / 6)
    assert not hook.should_advance(4) and hook.should_advance(6)
    hook.record(torch.tensor([False, False, False, False]))  # only the last 6 flags stay
    assert list(hook.window) == [0, 1, 0, 0, 0, 0] and not hook.should_advance(6)
    state = hook.state_dict()
    restored = CurriculumHook(max_stage=3, curr_window=6, curr_check_every=3, curr_threshold=0.5)
    restored.load_state_dict(json.loads(json.dumps(state)))
    assert restored.state_dict() == state and restored.alpha == pytest.approx(1 / 3)


def test_resumed_completed_curriculum_does_not_train_again():
    hook = CurriculumHook(max_stage=1, curr_window=2, curr_check_every=1, curr_threshold=0.0)
    hook.load_state_dict({"stage": 1, "window": "", "completed": True})
    stops = []
    trainer = SimpleNamespace(step=10, hooks=[], request_stop=lambda reason, code=0: stops.append(reason))
    hook.on_train_start(trainer)
    assert stops == ["curriculum completed"]
