"""Every evaluator during training (2 CPU ranks, ZeRO-3: each rank scores its share of every
evaluation in lock step) gives exactly what ``python -m megaproc.evaluate`` reports on the
checkpoint of the same step: held-out split, validation per named source (= ``--prefix`` on
each source), HellaSwag, EWoK and DeepMind Mathematics, under the same names."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from data_tools.build_splits import build_splits
from data_tools.deepmind_math import convert
from megaproc.data.default_corpus import ensure_default_corpus
from megaproc.eval.evaluator import flat_metrics
from megaproc.tokenizer import load_tokenizer
from tests.data.conftest import write_indexed
from tests.data_tools.test_deepmind_math import make_raw
from tests.eval.conftest import CORPUS, EWOK_ROWS, HELLASWAG_ROWS, write_jsonl
from tests.launch import FAST, REPO, env, read_jsonl, run

pytestmark = pytest.mark.slow

SEQ_LEN, BATCH, MAX_BATCHES, RANKS = 32, 2, 2, 2  # FAST: train.seq_len 32, micro_batch 2


def test_training_evaluations_equal_the_evaluate_cli(tmp_path):
    tokenizer = load_tokenizer(ensure_default_corpus(2048, log=lambda *a: None)[0])
    data = tmp_path / "data"
    encode = lambda texts: [np.asarray(tokenizer.encode(t) + [tokenizer.eos_token_id])  # noqa: E731
                            for t in texts]
    write_indexed(data / "alpha", encode(CORPUS[:40]))
    write_indexed(data / "beta", encode([text.upper() for text in CORPUS[:40]]))
    hellaswag = write_jsonl(data / "hs.jsonl", HELLASWAG_ROWS + HELLASWAG_ROWS[:3])  # odd shares
    ewok = write_jsonl(data / "ewok" / "items.jsonl", EWOK_ROWS).parent
    splits = build_splits(str(data / "splits"), max_input_size=26, max_lookahead=3, seed=5,
                          eval_size=7, test_size=2, mixin_size=2, symbolic=True, progress=False)
    dm_math = data / "dm_math"
    convert(make_raw(data / "raw", splits=("interpolate", "extrapolate")), dm_math)
    out = tmp_path / "run"
    valid = f"[{{prefix: {data / 'alpha'}, name: alpha}}, {{prefix: {data / 'beta'}, name: beta}}]"
    proc = run(RANKS, FAST + [
        f"run.out_dir={out}", "train.max_steps=2", "checkpoint.save_every=2",
        "deepspeed.config=ds_configs/zero3.json", "model.max_position_embeddings=128",
        f"data.valid={valid}", "eval.every=2", f"eval.max_batches={MAX_BATCHES}",
        f"eval.batch_size={BATCH}", f"eval.hellaswag_path={hellaswag}", "eval.hellaswag_every=2",
        f"eval.ewok_path={ewok}", "eval.ewok_every=2", f"eval.dm_math_path={dm_math}",
        "eval.dm_math_every=2", f"task.splits_dir={splits}", "task.eval_every=2",
        "task.eval_subset_size=0", f"task.eval_batch_size={BATCH}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = out / "checkpoints" / "step_00000002"
    assert json.loads((ckpt / "trainer_state.json").read_text())["geometry"]["world_size"] == RANKS
    assert (ckpt / "ds" / "zero_pp_rank_1_mp_rank_00_model_states.pt").is_file()  # ZeRO-3
    records = read_jsonl(out / "logs" / "eval.jsonl")
    assert [(r["step"], r["evaluator"]) for r in records] == [
        (0, "split"), (2, "split"), (2, "hellaswag"), (2, "ewok"), (2, "dm_math"),
        (2, "validation")]
    trained = {r["evaluator"]: r for r in records if r["step"] == 2}

    # One process on the checkpoint of step 2, with the lengths, batch size and batches the
    # run used (validation: MAX_BATCHES global batches = MAX_BATCHES * RANKS of BATCH rows).
    def evaluate(*args: str) -> dict:
        cli = subprocess.run([sys.executable, "-m", "megaproc.evaluate", "--checkpoint",
                              str(ckpt), "--seq-len",
                              str(SEQ_LEN + 1), "--batch-size", str(BATCH), "--max-batches",
                              str(MAX_BATCHES * RANKS), "--no-progress", *args],
                             cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
        assert cli.returncode == 0, cli.stderr[-2000:]
        return json.loads(cli.stdout)

    result = evaluate("--split", f"{splits}/eval.jsonl", "--hellaswag", str(hellaswag),
                      "--ewok", str(ewok), "--dm-math", str(dm_math), "--prefix",
                      str(data / "alpha"))
    beta = evaluate("--prefix", str(data / "beta"))["prefix"]
    # Exactly equal: the same batches, fp32 weights and one intra-op thread on both sides.
    for name in ("split", "hellaswag", "ewok", "dm_math"):
        expected = flat_metrics({k: v for k, v in result[name].items()
                                 if k not in ("path", "source")})
        got = {k: v for k, v in trained[name].items()
               if k not in ("step", "evaluator", "event", "timestamp")}
        assert got == expected, name
    assert result["hellaswag"]["hellaswag_num_examples"] == 9
    assert result["dm_math"]["dm_math_num_examples"] == 10
    for source, section in (("alpha", result["prefix"]), ("beta", beta)):
        assert section["num_tokens"] == MAX_BATCHES * RANKS * BATCH * SEQ_LEN
        for key in ("val_loss", "val_ppl", "val_token_acc", "num_tokens"):
            assert trained["validation"][f"{key}/{source}"] == section[key], (source, key)

    # The seed's files beside step_metrics.json.
    step_metrics = json.loads((out / "step_metrics.json").read_text())
    assert step_metrics["2"]["hellaswag_acc"] == trained["hellaswag"]["hellaswag_acc"]
    assert step_metrics["2"]["val_loss/beta"] == beta["val_loss"]
    lines = [json.loads(x) for x in (out / "hellaswag_metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 2, **{k: trained["hellaswag"][k] for k in (
        "hellaswag_acc", "hellaswag_acc_norm", "hellaswag_num_examples")}}]
    assert len((out / "ewok_items.jsonl").read_text().splitlines()) == len(EWOK_ROWS)
