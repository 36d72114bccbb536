"""The benchmark-eval hook: records under the plot's key names, cadence, resume truncation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from megaproc.eval.ewok import evaluate_ewok, load_ewok
from megaproc.eval.hellaswag import evaluate_hellaswag, load_hellaswag
from megaproc.eval.loglik import LoglikScorer, hf_logits_fn
from megaproc.hooks.benchmark_eval import BenchmarkEvalHook
from tests.eval.conftest import EWOK_ROWS, HELLASWAG_ROWS, write_jsonl


class FakeTrainer(SimpleNamespace):
    """What the hook reads from the trainer: engine, device, step, exit code, hooks.on_eval."""


def _trainer(model, step: int) -> FakeTrainer:
    seen = []
    return FakeTrainer(engine=model, device="cpu", step=step, exit_code=0, seen=seen,
                       hooks=SimpleNamespace(on_eval=lambda trainer, record: seen.append(record)))


def test_periodic_records_match_the_evaluators(tmp_path, model, tokenizer):
    hs = write_jsonl(tmp_path / "hs.jsonl", HELLASWAG_ROWS)
    ewok = write_jsonl(tmp_path / "ewok" / "items.jsonl", EWOK_ROWS).parent
    cfg = SimpleNamespace(hellaswag_path=str(hs), hellaswag_every=2, ewok_path=str(ewok),
                          ewok_every=3, at_end=True)
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)  # the trainer makes the run directory
    hook = BenchmarkEvalHook(cfg, run, tokenizer, 128, rank=0, world_size=1, batch_size=4)
    model.train()
    trainer = _trainer(model, 0)
    hook.on_train_start(trainer)
    for step in range(1, 8):
        trainer.step = step
        hook.on_step_end(trainer)
    hook.on_train_end(trainer)  # step 7 was not an evaluation step: both run once more
    assert model.training  # back in train mode
    records = [json.loads(x) for x in (run / "logs" / "eval.jsonl").read_text().splitlines()]
    assert [(r["step"], "hellaswag_acc" in r, "ewok_sum_accuracy" in r) for r in records] == [
        (2, True, False), (3, False, True), (4, True, False), (6, True, True), (7, True, True)]
    assert trainer.seen == records  # every hook's on_eval saw each record
    model.eval()
    scorer = LoglikScorer(tokenizer, 128, batch_size=4)
    hs_summary, _ = evaluate_hellaswag(scorer, hf_logits_fn(model), load_hellaswag(hs))
    ewok_summary, _ = evaluate_ewok(scorer, hf_logits_fn(model), load_ewok(ewok))
    last = records[-1]
    assert last["hellaswag_acc"] == hs_summary["acc"]
    assert last["hellaswag_acc_norm"] == hs_summary["acc_norm"]
    assert last["ewok_sum_accuracy"] == ewok_summary["sum"]["accuracy"]
    assert last["ewok_mean_accuracy"] == ewok_summary["mean"]["accuracy"]
    for domain, value in ewok_summary["sum"]["by_domain"].items():
        assert last[f"ewok_domain/{domain}"] == value
    items = [json.loads(x) for x in (run / "ewok_items.jsonl").read_text().splitlines()]
    assert [r["step"] for r in items] == [3] * 5 + [6] * 5 + [7] * 5
    metrics = json.loads((run / "step_metrics.json").read_text())
    assert metrics["6"]["hellaswag_acc"] == records[3]["hellaswag_acc"]

    # A resume from step 4 drops the later records; they are redone.
    resumed = BenchmarkEvalHook(cfg, run, tokenizer, 128, rank=0, world_size=1)
    resumed.on_train_start(_trainer(model, 4))
    steps = [json.loads(x)["step"] for x in (run / "logs" / "eval.jsonl").read_text().splitlines()]
    assert steps == [2, 3, 4]
    assert {json.loads(x)["step"] for x in (run / "ewok_items.jsonl").read_text().splitlines()} == {3}


def test_bad_benchmark_file_fails_at_build(tmp_path, tokenizer):
    bad = write_jsonl(tmp_path / "hs.jsonl", ['{"ind": 1}'])
    cfg = SimpleNamespace(hellaswag_path=str(bad), hellaswag_every=5, ewok_path=None, ewok_every=0,
                          at_end=True)
    with pytest.raises(ValueError, match=r"hs.jsonl:1: missing fields"):
        BenchmarkEvalHook(cfg, tmp_path / "run", tokenizer, 128, rank=0, world_size=1)
