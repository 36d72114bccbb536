"""``python -m megaproc.evaluate``: every evaluator, whole splits, per-item rows (``by_lookahead``
from them), checkpoints, dtypes, ``--batch-size auto``, and one-line errors before the model
loads."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import pyzipper
import torch
import torch.nn.functional as F

from data_tools.build_splits import build_splits
from data_tools.deepmind_math import convert
from megaproc.evaluate import main
from tests.data_tools.test_deepmind_math import make_raw
from tests.eval.conftest import CORPUS, EWOK_ROWS, HELLASWAG_ROWS, make_model, write_jsonl

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main([*args, "--no-progress"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else None, captured.err


def test_all_benchmarks_in_one_object_with_items(tmp_path, model_dir, capsys, monkeypatch):
    hellaswag = write_jsonl(tmp_path / "hs.jsonl", HELLASWAG_ROWS)
    ewok = tmp_path / "ewok.zip"
    with zipfile.ZipFile(ewok, "w") as zf:
        zf.writestr("ewok.jsonl", "".join(json.dumps(r) + "\n" for r in EWOK_ROWS))
    convert(make_raw(tmp_path / "raw", splits=("interpolate", "extrapolate")), tmp_path / "dm")
    items = tmp_path / "out" / "items.jsonl"
    monkeypatch.delenv("EWOK_ZIP_PASSWORD", raising=False)
    code, result, err = _run(capsys, "--model", str(model_dir), "--hellaswag", str(hellaswag),
                             "--ewok", str(ewok), "--dm-math", str(tmp_path / "dm"),
                             "--items-out", str(items), "--max-examples", "4")
    assert code == 0, err
    assert torch.is_grad_enabled()  # main() leaves the caller's autograd state alone
    assert set(result["hellaswag"]) == {"path", "hellaswag_acc", "hellaswag_acc_norm",
                                        "hellaswag_num_examples"}
    assert result["hellaswag"]["hellaswag_num_examples"] == 4
    assert result["ewok"]["ewok_num_items"] == 4
    assert set(result["ewok"]) == {
        "source", "ewok_num_items", "ewok_domain", "ewok_mean_domain",
        *(f"ewok_{r}_accuracy{t}" for r in ("sum", "mean") for t in ("", "_t1", "_t2"))}
    dm = result["dm_math"]
    assert dm["dm_math_num_examples"] == 10
    assert set(dm["dm_math_by_split"]) == {"interpolate", "extrapolate"}
    assert result["run"] == {"device": "cpu", "dtype": "float32", "world_size": 1,
                             "batch_size": 16}
    rows = [json.loads(line) for line in items.read_text().splitlines()]
    assert [r["task"] for r in rows] == ["hellaswag"] * 4 + ["ewok"] * 4 + ["dm_math"] * 10
    assert len(rows[0]["loglik"]) == 4 and "logp_t2_c1" in rows[4] and "generated" in rows[-1]
    # --ewok without a path takes $EWOK_SRC
    monkeypatch.setenv("EWOK_SRC", str(ewok))
    code, by_env, err = _run(capsys, "--model", str(model_dir), "--ewok", "--max-examples", "4")
    assert code == 0, err
    assert by_env["ewok"] == result["ewok"]


def _reference_lm_metrics(model, tokenizer, texts, seq_len: int, windows: int) -> dict:
    stream = []
    for text in texts:
        stream += tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    loss_sum = correct = tokens = 0
    for k in range(windows):
        window = torch.tensor(stream[k * seq_len:k * seq_len + seq_len + 1])
        with torch.no_grad():
            logits = model(input_ids=window[None, :-1]).logits[0]
        loss_sum += float(F.cross_entropy(logits, window[1:], reduction="sum"))
        correct += int((logits.argmax(-1) == window[1:]).sum())
        tokens += seq_len
    return {"val_loss": loss_sum / tokens, "val_token_acc": correct / tokens, "num_tokens": tokens}


def test_hf_dataset_on_disk(tmp_path, model_dir, model, tokenizer, capsys):
    from datasets import Dataset, DatasetDict

    texts = sorted(set(CORPUS))
    DatasetDict({"train": Dataset.from_dict({"text": texts[::-1]}),
                 "validation": Dataset.from_dict({"text": texts, "id": list(range(len(texts)))})}
                ).save_to_disk(str(tmp_path / "c4"))
    code, result, err = _run(capsys, "--model", str(model_dir), "--hf-dataset", str(tmp_path / "c4"),
                             "--seq-len", "17", "--max-batches", "2", "--batch-size", "2")
    assert code == 0, err
    got = result["hf_dataset"]
    expected = _reference_lm_metrics(model, tokenizer, texts, 16, 4)
    assert got["column"] == "text" and got["split"] == "validation" and got["seq_len"] == 17
    assert got["num_tokens"] == expected["num_tokens"] == 64
    assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-5)
    assert got["val_token_acc"] == pytest.approx(expected["val_token_acc"])
    # A pre-tokenized dataset (input_ids column) is used as it is.
    stream = [t for text in texts for t in tokenizer.encode(text) + [tokenizer.eos_token_id]]
    Dataset.from_dict({"input_ids": [stream[i:i + 20] for i in range(0, 80, 20)]}).save_to_disk(
        str(tmp_path / "tok"))
    code, tokenized, err = _run(capsys, "--model", str(model_dir), "--hf-dataset",
                                str(tmp_path / "tok"), "--seq-len", "17", "--max-batches", "2",
                                "--batch-size", "2")
    assert code == 0, err
    assert tokenized["hf_dataset"]["column"] == "input_ids"
    assert tokenized["hf_dataset"]["val_loss"] == pytest.approx(got["val_loss"], rel=1e-5)


def test_bad_input_is_one_line_and_exit_2(tmp_path, model_dir, capsys, monkeypatch):
    bad = dict(HELLASWAG_ROWS[0])
    del bad["endings"]
    hellaswag = write_jsonl(tmp_path / "hs.jsonl", [HELLASWAG_ROWS[1], bad])
    monkeypatch.delenv("EWOK_SRC", raising=False)
    (tmp_path / "notds").mkdir()
    cases = [
        (["--hellaswag", str(hellaswag)], f"{hellaswag}:2: missing field 'endings'"),
        (["--ewok"], "no EWoK source"),
        (["--ewok", str(tmp_path / "nowhere.zip")], "EWoK source not found"),
        (["--dm-math", str(tmp_path / "nowhere")], "DeepMind Mathematics data not found"),
        (["--hf-dataset", str(tmp_path / "notds")], "not a dataset saved with save_to_disk"),
        (["--split", str(tmp_path / "absent.jsonl")], "file not found"),
        (["--split", str(hellaswag)], f"{hellaswag}:1: expected an object with 'prompt'"),
        (["--items-out", str(tmp_path / "i.jsonl"), "--hf-dataset", str(tmp_path / "notds")],
         "--items-out needs"),
        (["--prefix", str(tmp_path / "nowhere")], "indexed data not found"),
        (["--hellaswag", str(hellaswag), "--batch-size", "0"], "--batch-size: must be > 0"),
        ([], "nothing to evaluate"),
    ]
    for args, message in cases:
        code, _, err = _run(capsys, "--model", str(model_dir), *args)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (args, err)
    proc = subprocess.run([sys.executable, "-m", "megaproc.evaluate", "--model", str(model_dir),
                           "--hellaswag", str(hellaswag)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "hs.jsonl:2: missing field" in proc.stderr


def test_hf_dataset_whole_split(tmp_path, model_dir, model, tokenizer, capsys):
    from datasets import Dataset

    texts = sorted(set(CORPUS))
    Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "valid"))
    stream = sum((tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id]
                  for t in texts), [])
    windows = (len(stream) - 1) // 16
    assert windows > 2 * 3  # more than --max-batches 2 x --batch-size 3 would take
    code, result, err = _run(capsys, "--model", str(model_dir), "--hf-dataset",
                             str(tmp_path / "valid"), "--seq-len", "17", "--max-batches", "0",
                             "--batch-size", "3")
    assert code == 0, err
    expected = _reference_lm_metrics(model, tokenizer, texts, 16, windows)
    assert result["hf_dataset"]["num_tokens"] == expected["num_tokens"] == 16 * windows
    assert result["hf_dataset"]["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-5)


def test_prefix_whole_split(tmp_path, model_dir, model, tokenizer, capsys):
    from megaproc.data.gpt_dataset import GPTDataset
    from megaproc.data.indexed import IndexedDataset
    from tests.data.conftest import write_indexed

    prefix = tmp_path / "valid_text"
    write_indexed(prefix, [np.asarray(tokenizer.encode(t) + [tokenizer.eos_token_id])
                           for t in CORPUS])
    samples = GPTDataset(IndexedDataset(str(prefix)), 16, None, seed=0, name="valid")
    assert len(samples) > 20 * 2  # the default --max-batches 20 x --batch-size 2 stops early
    code, some, err = _run(capsys, "--model", str(model_dir), "--prefix", str(prefix),
                           "--seq-len", "17", "--batch-size", "2")
    assert code == 0, err
    assert some["prefix"]["num_tokens"] == 20 * 2 * 16
    code, result, err = _run(capsys, "--model", str(model_dir), "--prefix", str(prefix),
                             "--seq-len", "17", "--batch-size", "5", "--max-batches", "0")
    assert code == 0, err
    loss_sum = 0.0
    for i in range(len(samples)):  # every sample, one unbatched forward each
        window = torch.as_tensor(np.asarray(samples[i]["tokens"], dtype=np.int64))
        with torch.no_grad():
            logits = model(input_ids=window[None, :-1]).logits[0]
        loss_sum += float(F.cross_entropy(logits, window[1:], reduction="sum"))
    assert result["prefix"]["num_tokens"] == 16 * len(samples)
    assert result["prefix"]["val_loss"] == pytest.approx(loss_sum / (16 * len(samples)), rel=1e-5)
    assert result["prefix"]["seq_len"] == 17


@pytest.fixture(scope="module")
def long_model_dir(tmp_path_factory, tokenizer):
    """The tiny GPT-2 with 512 positions, for the long graph-search prompts."""
    out = tmp_path_factory.mktemp("tiny_gpt2_512")
    make_model(tokenizer, seed=3, n_positions=512).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_split_by_lookahead_from_the_rows(tmp_path, long_model_dir, capsys):
    split_dir = build_splits(str(tmp_path / "splits"), max_input_size=26, max_lookahead=3,
                             seed=3, eval_size=2, test_size=40, mixin_size=2, progress=False)
    test_file = Path(split_dir) / "test.jsonl"
    records = [json.loads(line) for line in test_file.read_text().splitlines()]
    items = tmp_path / "rows.jsonl"
    code, result, err = _run(capsys, "--model", str(long_model_dir), "--split", str(test_file),
                             "--seq-len", "230", "--items-out", str(items), "--batch-size", "4")
    assert code == 0, err
    split = result["split"]
    rows = [json.loads(line) for line in items.read_text().splitlines()]
    assert split["num_examples"] == len(rows) and split["num_dropped"] > 0
    assert split["num_examples"] + split["num_dropped"] == len(records)
    assert split["heldout_acc"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
    # by_lookahead, recomputed here from the rows and the records' own lookahead.
    groups: dict[str, list[bool]] = {}
    for row in rows:
        groups.setdefault(str(records[row["example"]]["lookahead"]), []).append(row["correct"])
    assert len(groups) > 1
    assert split["by_lookahead"] == {
        look: {"heldout_acc": pytest.approx(sum(v) / len(v)), "num_examples": len(v)}
        for look, v in sorted(groups.items(), key=lambda kv: int(kv[0]))}
    assert list(split["by_lookahead"]) == sorted(groups, key=int)
    # The answer loss of the rows is the token-weighted heldout_loss.
    total = sum(r["answer_loss"] * r["answer_tokens"] for r in rows)
    assert split["heldout_loss"] == pytest.approx(total / sum(r["answer_tokens"] for r in rows))


def write_checkpoint(root: Path, model, tokenizer, hf_config=None) -> Path:
    """A ZeRO-0 checkpoint in the trainer's layout (``ds/mp_rank_00_model_states.pt`` holding
    the module) without running DeepSpeed; ``hf_config`` replaces the model's own config."""
    root.mkdir(parents=True)
    (root / "ds").mkdir()
    torch.save({"module": model.state_dict(), "param_shapes": None},
               root / "ds" / "mp_rank_00_model_states.pt")
    (hf_config or model.config).save_pretrained(root / "hf_config")
    tokenizer.save_pretrained(root / "tokenizer")
    (root / "COMPLETE").write_text("ok\n")
    return root


def test_checkpoint_equals_its_exported_model_and_dtypes(tmp_path, model, model_dir, tokenizer,
                                                         capsys):
    ckpt = write_checkpoint(tmp_path / "step_00000002", model, tokenizer)
    hellaswag = write_jsonl(tmp_path / "hs.jsonl", HELLASWAG_ROWS)
    before = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in ckpt.rglob("*"))
    code, from_ckpt, err = _run(capsys, "--checkpoint", str(ckpt), "--hellaswag", str(hellaswag))
    assert code == 0, err
    code, from_dir, err = _run(capsys, "--model", str(model_dir), "--hellaswag", str(hellaswag))
    assert code == 0, err
    assert from_ckpt["hellaswag"] == from_dir["hellaswag"]
    assert sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in ckpt.rglob("*")) == \
        before  # nothing consolidated or written next to the checkpoint
    for dtype in ("bfloat16", "float16"):
        code, result, err = _run(capsys, "--model", str(model_dir), "--hellaswag",
                                 str(hellaswag), "--dtype", dtype, "--device", "cpu")
        assert code == 0, err
        assert result["run"]["dtype"] == dtype
        assert result["hellaswag"]["hellaswag_num_examples"] == len(HELLASWAG_ROWS)
    code, result, err = _run(capsys, "--model", str(model_dir), "--hellaswag", str(hellaswag),
                             "--batch-size", "auto")
    assert code == 0, err
    assert result["hellaswag"] == from_dir["hellaswag"]
    assert set(result["run"]["batch_size"]["auto"]) and \
        all(1 <= v for v in result["run"]["batch_size"]["auto"].values())


def test_bad_model_input_fails_before_any_model_loads(tmp_path, model, model_dir, tokenizer,
                                                      capsys, monkeypatch):
    import megaproc.evaluate as evaluate
    from transformers import T5Config

    from megaproc.models import model_config

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(evaluate, "load_eval_model", no_load)
    hellaswag = write_jsonl(tmp_path / "hs.jsonl", HELLASWAG_ROWS)
    other = write_checkpoint(tmp_path / "other_arch", model, tokenizer,
                             hf_config=model_config("pythia-14m", len(tokenizer)))
    wider = write_checkpoint(tmp_path / "wider", model, tokenizer, hf_config=model_config(
        "tiny", len(tokenizer), "n_embd=128", max_position_embeddings=128))
    t5_dir = tmp_path / "t5"
    T5Config(vocab_size=len(tokenizer)).save_pretrained(t5_dir)
    source = tmp_path / "ewok_src"
    write_jsonl(source / "items.jsonl", EWOK_ROWS)
    aes = tmp_path / "ewok_aes.zip"
    with pyzipper.AESZipFile(aes, "w", encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(b"right")
        zf.write(source / "items.jsonl", "items.jsonl")
    bad_split = write_jsonl(tmp_path / "split.jsonl", [{"prompt": "p", "output_texts": [" a"]},
                                                       {"prompt": "q"}])
    monkeypatch.setenv("EWOK_ZIP_PASSWORD", "wrong")
    cases = [
        (["--checkpoint", str(other), "--hellaswag", str(hellaswag)],
         "holds another architecture than its hf_config"),
        (["--checkpoint", str(wider), "--hellaswag", str(hellaswag)], "of another shape"),
        (["--checkpoint", str(tmp_path / "absent"), "--hellaswag", str(hellaswag)],
         "is not a complete checkpoint"),
        (["--model", str(t5_dir), "--hellaswag", str(hellaswag)],
         "is not a causal language model"),
        (["--model", str(model_dir), "--ewok", str(aes)],
         f"{aes}:items.jsonl: wrong zip password (EWOK_ZIP_PASSWORD)"),
        (["--model", str(model_dir), "--split", str(bad_split)],
         f"{bad_split}:2: expected an object with 'prompt'"),
        (["--model", str(model_dir), "--hellaswag", str(tmp_path / "absent.jsonl")],
         "HellaSwag file not found"),
        (["--model", str(model_dir), "--hellaswag", str(hellaswag), "--device", "tpu"],
         "--device tpu: expected cpu, cuda, cuda:N or mps"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--model", str(model_dir), "--hellaswag", str(hellaswag), "--device",
                       "cuda"], "--device cuda: CUDA is not available on this machine"))
    for args, message in cases:
        code, _, err = _run(capsys, *args)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (args, err)
