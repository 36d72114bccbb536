"""End to end, real correctness gates the curriculum (one CPU process, ~200 steps).

The tiny CPU pre-pretraining recipe learns the symbolic n=20 task's first stage in about a
hundred steps.  With a 0.7 threshold the window is full (and checked) long before the model is
that good, so the advance must wait for the model: no advance while the logged window accuracy
is below the threshold, an advance once it reaches it, and held-out accuracy rises with it.
"""

from __future__ import annotations

import pytest

from tests.launch import FAST, REPO, read_jsonl, run

pytestmark = pytest.mark.slow

PPTRAIN = str(REPO / "configs" / "pptrain_cpu.yaml")


def test_window_accuracy_gates_the_stage_advance(tmp_path):
    from data_tools.build_splits import build_splits

    splits = build_splits(str(tmp_path / "splits"), max_input_size=20, max_lookahead=2, seed=12345,
                          symbolic=True, eval_size=64, test_size=16, mixin_size=16, progress=False)
    out = tmp_path / "run"
    overrides = [o for o in FAST if not o.startswith(("model.", "optim.", "train.seq_len",
                                                      "train.micro_batch", "train.grad_accum"))]
    proc = run(1, overrides + [
        f"run.out_dir={out}", f"task.splits_dir={splits}", "train.max_steps=200",
        # a smaller setting than the recipe's: two stages of n=20, 2 layers, micro-batch 8
        "task.max_input_size=20", "task.max_lookahead=2", "train.micro_batch=8",
        "train.grad_accum=1", "optim.lr=3e-3",
        "model.config_overrides=num_hidden_layers=2,num_attention_heads=8,rotary_pct=1.0",
        "checkpoint.save_every=0", "curriculum.curr_threshold=0.7", "curriculum.curr_window=64",
        "curriculum.curr_check_every=5", "task.eval_subset_size=64"], config=PPTRAIN)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    train = read_jsonl(out / "logs" / "train.jsonl")
    advanced = [r["step"] for r in train if r["stage"] == 2]
    assert advanced, "the model never reached 0.7 window accuracy on stage 1 in 200 steps"
    first = advanced[0]
    window_full = 64 // 8  # micro batch 8, one rank
    assert first > 3 * window_full  # checked and refused many times before
    # Every check before the advance (window full, every 5th step) saw accuracy below 0.7.
    checks = [r for r in train if window_full <= r["step"] < first - 1 and r["step"] % 5 == 0]
    assert len(checks) >= 3 and all(r["curr_acc"] < 0.7 for r in checks)
    evals = read_jsonl(out / "logs" / "eval.jsonl")
    start, advance = evals[0], next(e for e in evals if e.get("event") == "advance")
    # The advance happens at the end of a check step; that step's train record still shows the
    # stage it trained at, the next one the new stage.
    assert start["stage"] == 1 and advance["stage"] == 2
    assert advance["step"] == first - 1 and advance["step"] % 5 == 0
    assert next(r for r in train if r["step"] == advance["step"])["curr_acc"] >= 0.7
    assert advance["heldout_acc"] > start["heldout_acc"] + 0.2
