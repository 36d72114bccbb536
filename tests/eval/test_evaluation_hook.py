"""The evaluation hook (one process, a stand-in trainer): every evaluator's record holds what
``python -m megaproc.evaluate`` prints for the same model, under the same names; cadence, the
eval-mode switch, per-source validation, and the seed's files after a resume."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data_tools.build_splits import build_splits
from data_tools.deepmind_math import convert
from megaproc import evaluate
from megaproc.data.prompt_answer import PromptAnswerDataset
from megaproc.eval.evaluator import flat_metrics
from megaproc.hooks import (EvalRunner, EvaluationHook, benchmark_evaluations,
                            heldout_evaluation, validation_evaluation)
from megaproc.hooks.records import EvalLog
from tests.data.conftest import write_indexed
from tests.data_tools.test_deepmind_math import make_raw
from tests.eval.conftest import CORPUS, EWOK_ROWS, HELLASWAG_ROWS, write_jsonl

SEQ_LEN, BATCH, MAX_BATCHES = 47, 2, 3   # windows of 48 tokens, 2 rows per forward


class FakeTrainer(SimpleNamespace):
    """What the hooks read from the trainer: engine, device, step, exit code, hooks.on_eval."""


def _trainer(model, step: int) -> FakeTrainer:
    seen = []
    return FakeTrainer(engine=model, device="cpu", step=step, exit_code=0, seen=seen,
                       hooks=SimpleNamespace(on_eval=lambda trainer, record: seen.append(record)))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer):
    data = tmp_path_factory.mktemp("inputs")
    encode = lambda texts: [np.asarray(tokenizer.encode(t) + [tokenizer.eos_token_id])  # noqa: E731
                            for t in texts]
    write_indexed(data / "alpha", encode(CORPUS[:24]))
    write_indexed(data / "beta", encode([text.upper() for text in CORPUS[:24]]))
    dm_math = data / "dm_math"
    convert(make_raw(data / "raw", splits=("interpolate", "extrapolate")), dm_math)
    return SimpleNamespace(
        data=data, dm_math=dm_math,
        hellaswag=write_jsonl(data / "hs.jsonl", HELLASWAG_ROWS),
        ewok=write_jsonl(data / "ewok" / "items.jsonl", EWOK_ROWS).parent,
        splits=build_splits(str(data / "splits"), max_input_size=26, max_lookahead=3, seed=7,
                            eval_size=7, test_size=2, mixin_size=2, symbolic=True,
                            progress=False))


def _config(inputs) -> SimpleNamespace:
    """The config sections the evaluations are built from (what a recipe would set)."""
    return SimpleNamespace(
        train=SimpleNamespace(seq_len=SEQ_LEN, micro_batch=BATCH, loss="answer_only",
                              sliced_head=True),
        eval=SimpleNamespace(every=3, max_batches=MAX_BATCHES, at_end=True, batch_size=BATCH,
                             max_examples=0, hellaswag_path=str(inputs.hellaswag),
                             hellaswag_every=2, ewok_path=str(inputs.ewok), ewok_every=3,
                             dm_math_path=str(inputs.dm_math), dm_math_every=4),
        task=SimpleNamespace(splits_dir=inputs.splits, eval_subset_size=0, seed=1,
                             eval_batch_size=BATCH),
        data=SimpleNamespace(valid=[{"prefix": str(inputs.data / "alpha"), "name": "alpha"},
                                    {"prefix": str(inputs.data / "beta"), "name": "beta"},
                                    {"prefix": str(inputs.dm_math / "interpolate.jsonl"),
                                     "name": "interpolate"}]))


def _hook(cfg, run, tokenizer) -> EvaluationHook:
    evaluations = [heldout_evaluation(cfg.task, SEQ_LEN, every=5)]
    evaluations += benchmark_evaluations(cfg.eval, run)
    evaluations.append(validation_evaluation(cfg, tokenizer, None, world_size=1))
    return EvaluationHook(evaluations, EvalRunner(run, tokenizer))


def _cli(capsys, *args) -> dict:
    capsys.readouterr()
    assert evaluate.main([*args, "--device", "cpu", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


def _records(run) -> list[dict]:
    return [json.loads(x) for x in (run / "logs" / "eval.jsonl").read_text().splitlines()]


def test_every_record_equals_the_command_line(tmp_path, capsys, model, model_dir, tokenizer,
                                              inputs):
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)  # the trainer makes the run directory
    hook = _hook(_config(inputs), run, tokenizer)
    model.train()  # dropout on: the hook must switch it off and back
    trainer = _trainer(model, 0)
    hook.on_train_start(trainer)
    for step in range(1, 8):
        trainer.step = step
        hook.on_step_end(trainer)
    hook.on_train_end(trainer)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    records = _records(run)
    assert trainer.seen == records  # every hook's on_eval saw each record
    assert [(r["step"], r["evaluator"], r["event"]) for r in records] == [
        (0, "split", "start"), (2, "hellaswag", "periodic"), (3, "ewok", "periodic"),
        (3, "validation", "periodic"), (4, "hellaswag", "periodic"), (4, "dm_math", "periodic"),
        (5, "split", "periodic"), (6, "hellaswag", "periodic"), (6, "ewok", "periodic"),
        (6, "validation", "periodic"), (7, "hellaswag", "end"), (7, "ewok", "end"),
        (7, "dm_math", "end"), (7, "validation", "end")]

    # The command on the same weights, with the batch size, lengths and batches training uses.
    common = ["--model", str(model_dir), "--batch-size", str(BATCH), "--seq-len",
              str(SEQ_LEN + 1), "--max-batches", str(MAX_BATCHES)]
    cli = _cli(capsys, *common, "--split", f"{inputs.splits}/eval.jsonl", "--hellaswag",
               str(inputs.hellaswag), "--ewok", str(inputs.ewok), "--dm-math", str(inputs.dm_math),
               "--prefix", str(inputs.data / "alpha"))
    cli["beta"] = _cli(capsys, *common, "--prefix", str(inputs.data / "beta"))["prefix"]
    last = {r["evaluator"]: r for r in records if r["step"] == 7}
    last["split"] = records[6]  # step 5 (the stand-in trainer does not change the weights)
    for name in ("split", "hellaswag", "ewok", "dm_math"):
        expected = flat_metrics({k: v for k, v in cli[name].items() if k not in ("path", "source")})
        got = {k: v for k, v in last[name].items()
               if k not in ("step", "evaluator", "event", "timestamp")}
        assert got == expected, name   # same names, same numbers: the same computation
    assert last["split"]["by_lookahead/1/num_examples"] > 0
    assert len([k for k in last["ewok"] if k.startswith("ewok_domain/")]) == 3
    validation = last["validation"]
    for name, section in (("alpha", cli["prefix"]), ("beta", cli["beta"])):
        for key in ("val_loss", "val_ppl", "val_token_acc", "num_tokens"):
            assert validation[f"{key}/{name}"] == section[key], (name, key)
    assert validation["val_loss/alpha"] != validation["val_loss/beta"]

    # The prompt/answer source: answer tokens only (sliced head), against a plain computation.
    examples = PromptAnswerDataset(str(inputs.dm_math / "interpolate.jsonl"), tokenizer, SEQ_LEN)
    loss_sum, tokens = 0.0, 0
    for i in range(len(examples)):  # 5 examples <= 3 batches of 2: each once
        sample = examples[i]
        ids = torch.as_tensor(sample["tokens"])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids[:, :-1]).logits[0].double(), -1)
        answer = np.flatnonzero(np.asarray(sample["answer_mask"])[1:])
        loss_sum -= float(sum(logp[p, int(ids[0, p + 1])] for p in answer))
        tokens += len(answer)
    assert validation["num_tokens/interpolate"] == tokens
    assert validation["val_loss/interpolate"] == pytest.approx(loss_sum / tokens, rel=1e-5)

    items = [json.loads(x) for x in (run / "ewok_items.jsonl").read_text().splitlines()]
    assert [r["step"] for r in items] == [3] * 5 + [6] * 5 + [7] * 5
    metrics = json.loads((run / "step_metrics.json").read_text())  # records of a step merged
    assert metrics["6"]["hellaswag_acc"] == records[7]["hellaswag_acc"]
    assert metrics["6"]["val_loss/alpha"] == records[9]["val_loss/alpha"]
    assert "evaluator" not in metrics["6"] and "timestamp" not in metrics["6"]


def test_seed_files_follow_the_log_after_a_resume(tmp_path, model, tokenizer, inputs):
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    cfg = _config(inputs)
    cfg.eval.hellaswag_every, cfg.eval.ewok_every, cfg.eval.dm_math_every = 2, 2, 0
    model.eval()

    def train(start: int, stop: int) -> None:  # what the trainer does around a (re)start
        hook = EvaluationHook(benchmark_evaluations(cfg.eval, run), EvalRunner(run, tokenizer))
        trainer = _trainer(model, start)
        hook.on_train_start(trainer)
        for step in range(start + 1, stop + 1):
            trainer.step = step
            hook.on_step_end(trainer)

    def hellaswag_lines() -> list[dict]:
        return [json.loads(x) for x in (run / "hellaswag_metrics.jsonl").read_text().splitlines()]

    def expected() -> list[dict]:  # the HellaSwag records of the log, in the seed's shape
        keys = ("step", "hellaswag_acc", "hellaswag_acc_norm", "hellaswag_num_examples")
        return [{k: r[k] for k in keys} for r in _records(run) if r["evaluator"] == "hellaswag"]

    assert not (run / "hellaswag_metrics.jsonl").exists()
    train(0, 6)                      # evaluated at 2, 4, 6; killed before the step-6 checkpoint
    assert [r["step"] for r in hellaswag_lines()] == [2, 4, 6] and hellaswag_lines() == expected()
    train(4, 4)                      # resumed from step 4: the step-6 records are dropped ...
    assert [r["step"] for r in hellaswag_lines()] == [2, 4] and hellaswag_lines() == expected()
    assert {json.loads(x)["step"] for x in (run / "ewok_items.jsonl").read_text().splitlines()} \
        == {2, 4}
    assert set(json.loads((run / "step_metrics.json").read_text())) == {"2", "4"}
    train(4, 8)                      # ... and redone, once
    assert [r["step"] for r in hellaswag_lines()] == [2, 4, 6, 8]
    assert hellaswag_lines() == expected()
    assert [r["step"] for r in _records(run)] == [2, 2, 4, 4, 6, 6, 8, 8]


def test_bad_benchmark_file_fails_when_the_evaluations_are_built(tmp_path):
    bad = write_jsonl(tmp_path / "hs.jsonl", ['{"ind": 1}'])
    cfg = SimpleNamespace(hellaswag_path=str(bad), hellaswag_every=5, ewok_path=None, ewok_every=0,
                          dm_math_path=None, dm_math_every=0, at_end=True, batch_size=4,
                          max_examples=0)
    with pytest.raises(ValueError, match=r"hs.jsonl:1: missing fields"):
        benchmark_evaluations(cfg, tmp_path / "run")


def test_eval_log_rebuilds_nothing_without_hellaswag(tmp_path):
    log = EvalLog(tmp_path)
    log.write(_trainer(None, 3), {"val_loss": 1.0}, evaluator="validation")
    assert not (tmp_path / "hellaswag_metrics.jsonl").exists()
    assert json.loads((tmp_path / "step_metrics.json").read_text()) == {"3": {"val_loss": 1.0}}
