"""python -m data_tools.build_boolean: files, meta, same data as the trainer's cache, errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from data_tools.build_boolean import main
from megaproc.synthetic.boolean_data import load_or_make_splits

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["--target-func", "fn_c", "--sequence-length", "24", "--train-set-size", "20",
        "--test-set-size", "30", "--seed", "3"]


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_writes_balanced_splits_and_meta(tmp_path, capsys):
    assert main(ARGS + ["--out-dir", str(tmp_path)]) == 0
    assert "train 20, test 30" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["meta.json", "test.jsonl", "train.jsonl"]
    train, test = read_jsonl(tmp_path / "train.jsonl"), read_jsonl(tmp_path / "test.jsonl")
    assert len(train) == 20 and len(test) == 30
    for rows in (train, test):
        assert all(set(r) == {"sequence", "label"} and r["label"] in (0, 1) for r in rows)
        assert sum(r["label"] for r in rows) * 2 == len(rows)
        # label 1 iff the pattern occurs (the definition of fn_c)
        assert all(r["label"] == int("10101010" in r["sequence"]) for r in rows)
    sequences = [r["sequence"] for r in train + test]
    assert len(set(sequences)) == 50 and all(len(s) == 24 for s in sequences)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["target_func"] == "fn_c" and meta["sequence_length"] == 24 and meta["seed"] == 3
    assert meta["counts"] == {"train": {"0": 10, "1": 10}, "test": {"0": 15, "1": 15}}
    for name in ("train", "test"):
        data = (tmp_path / f"{name}.jsonl").read_bytes()
        assert meta["sha256"][name] == hashlib.sha256(data).hexdigest()


def test_same_files_as_the_training_cache(tmp_path):
    assert main(ARGS + ["--out-dir", str(tmp_path / "cli")]) == 0
    cached = load_or_make_splits("fn_c", 24, 20, 30, seed=3, cache_dir=tmp_path / "cache")
    for name in ("train.jsonl", "test.jsonl", "meta.json"):
        assert (tmp_path / "cli" / name).read_bytes() == \
            open(os.path.join(cached.cache_path, name), "rb").read()


@pytest.mark.parametrize("bad,message", [
    (["--train-set-size", "21"], "train_set_size must be even"),
    (["--sequence-length", "18", "--target-func", "fn_h"], "multiple of 4"),
    (["--sequence-length", "8", "--target-func", "fn_d"],
     "only 1 distinct sequence with label 1 exists"),
    (["--target-func", "fn_z"], "invalid choice: 'fn_z'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, bad, message):
    args = ARGS + bad + ["--out-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "error:" in err
    assert not (tmp_path / "out").exists()


def test_more_than_exist_is_sampled_with_replacement_and_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(ARGS + ["--sequence-length", "10", "--target-func", "fn_g", "--test-set-size", "60",
                        "--out-dir", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "label 1: 32 distinct of 40 needed" in err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["notes"]["1"]["with_replacement"] and meta["notes"]["1"]["distinct"] == 32
    rows = {name: [json.loads(x) for x in (out / f"{name}.jsonl").read_text().splitlines()]
            for name in ("train", "test")}
    train_pos = {r["sequence"] for r in rows["train"] if r["label"] == 1}
    test_pos = {r["sequence"] for r in rows["test"] if r["label"] == 1}
    assert not train_pos & test_pos and len(train_pos | test_pos) == 32


def test_module_entry_point_and_help(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-m", "data_tools.build_boolean", "--help"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0 and "--target-func" in done.stdout and "fn_l" in done.stdout
    done = subprocess.run([sys.executable, "-m", "data_tools.build_boolean", *ARGS,
                           "--out-dir", "out"], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "meta.json").is_file()
    # data_tools never imports deepspeed or the trainer
    check = ("import sys, data_tools.build_boolean; "
             "bad = [m for m in sys.modules if m == 'deepspeed' or m.startswith('megaproc.trainer')]; "
             "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", check], env=env, cwd=tmp_path).returncode == 0
