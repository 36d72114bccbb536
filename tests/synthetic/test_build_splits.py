"""data_tools.build_splits: sizes, disjointness, meta.json, atomic replace, CLI errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings

import pytest

from data_tools.build_splits import build_splits, main, split_dir_name
from megaproc.synthetic import GraphSearchGenerator, ReservedPrompts, load_split

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = dict(eval_size=30, test_size=40, mixin_size=80)


def build(tmp_path, **kwargs):
    settings = dict(max_input_size=32, max_lookahead=6, seed=12345, progress=False, **SIZES)
    settings.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_splits(str(tmp_path), **settings)


def test_sizes_disjoint_and_meta(tmp_path):
    split_dir = build(tmp_path)
    assert os.path.basename(split_dir) == "mis32_look6_seed12345"
    assert sorted(os.listdir(tmp_path)) == ["mis32_look6_seed12345"]      # temp dir renamed away
    splits = {name: load_split(os.path.join(split_dir, f"{name}.jsonl")) for name in ("eval", "test", "mixin")}
    assert {k: len(v) for k, v in splits.items()} == {"eval": 30, "test": 40, "mixin": 80}
    prompt_sets = {k: [r["prompt"] for r in v] for k, v in splits.items()}
    for name, prompts in prompt_sets.items():
        assert len(set(prompts)) == len(prompts), f"duplicate prompt within {name}"
    assert not set(prompt_sets["eval"]) & set(prompt_sets["test"])
    assert not set(prompt_sets["eval"]) & set(prompt_sets["mixin"])
    assert not set(prompt_sets["test"]) & set(prompt_sets["mixin"])
    assert len(ReservedPrompts.from_split_dir(split_dir)) == 150

    meta = json.load(open(os.path.join(split_dir, "meta.json")))
    assert meta["counts"] == {"eval": 30, "test": 40, "mixin": 80}
    assert meta["generator"]["max_input_size"] == 32 and meta["generator"]["seed"] == 12345
    assert meta["stage"] == 6 and meta["alpha"] == 1.0
    for name in ("eval", "test", "mixin"):
        data = open(os.path.join(split_dir, f"{name}.jsonl"), "rb").read()
        assert meta["sha256"][name] == hashlib.sha256(data).hexdigest()
        assert sum(meta["lookahead_histogram"][name].values()) == len(splits[name])
    # examples are drawn at alpha = 1.0: every lookahead up to the cap shows up
    cap = meta["max_lookahead_drawn"]
    lookaheads = {r["lookahead"] for v in splits.values() for r in v}
    assert lookaheads == set(range(cap + 1))
    record = splits["eval"][0]
    assert {"prompt", "output_texts", "lookahead", "edges", "start", "goal", "path", "answers"} <= set(record)


def test_duplicates_are_skipped_in_small_symbolic_space(tmp_path):
    split_dir = build(tmp_path, max_input_size=14, max_lookahead=1, symbolic=True,
                      eval_size=15, test_size=15, mixin_size=40)
    assert split_dir.endswith("mis14_look1_seed12345_symbolic")
    prompts = [r["prompt"] for name in ("eval", "test", "mixin")
               for r in load_split(os.path.join(split_dir, f"{name}.jsonl"))]
    assert len(prompts) == 70 and len(set(prompts)) == 70
    meta = json.load(open(os.path.join(split_dir, "meta.json")))
    assert meta["skipped"]["duplicate_prompt"] > 0
    assert meta["form"] == "symbolic"
    assert all(len(r["tokens"]) == 14 for r in load_split(os.path.join(split_dir, "eval.jsonl")))


def test_too_few_distinct_examples_is_an_error_not_a_hang(tmp_path):
    # n=14 symbolic, lookahead <= 1, has only ~90 distinct prompts (generator v2)
    with pytest.raises(RuntimeError, match="distinct"):
        build(tmp_path, max_input_size=14, max_lookahead=1, symbolic=True,
              eval_size=100, test_size=100, mixin_size=100, max_stall=3000)
    assert os.listdir(tmp_path) == []


def test_splits_use_the_final_stage_of_the_held_out_stream(tmp_path):
    split_dir = build(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gen = GraphSearchGenerator(32, 6, 12345, stream_id=1)
    first = load_split(os.path.join(split_dir, "eval.jsonl"))[0]
    expected = next(e for e in (gen.example(i, 6) for i in range(10)) if e is not None)
    assert first == expected.to_json()


def test_refuses_to_overwrite_unless_asked(tmp_path):
    split_dir = build(tmp_path)
    before = open(os.path.join(split_dir, "meta.json")).read()
    with pytest.raises(FileExistsError):
        build(tmp_path)
    assert open(os.path.join(split_dir, "meta.json")).read() == before
    build(tmp_path, overwrite=True, eval_size=5)
    assert len(load_split(os.path.join(split_dir, "eval.jsonl"))) == 5
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(split_dir)]


def test_workers_give_identical_files(tmp_path):
    one = build(tmp_path / "one")
    two = build(tmp_path / "two", workers=2)
    for name in ("eval.jsonl", "test.jsonl", "mixin.jsonl"):
        assert open(os.path.join(one, name)).read() == open(os.path.join(two, name)).read()


def test_cli_writes_splits_and_rejects_bad_arguments(tmp_path, capsys):
    args = ["--out-dir", str(tmp_path), "--max-input-size", "32", "--max-lookahead", "4",
            "--seed", "1", "--eval-size", "3", "--test-size", "3", "--mixin-size", "3", "--no-progress"]
    assert main(args) == 0
    assert os.path.exists(tmp_path / split_dir_name(32, 4, 1, False) / "meta.json")
    with pytest.raises(SystemExit) as exit_info:
        main(args)                                            # exists already
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["--out-dir", str(tmp_path), "--max-input-size", "10"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "max-input-size" in err


def test_module_help_runs():
    result = subprocess.run([sys.executable, "-m", "data_tools.build_splits", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "--max-input-size" in result.stdout and "--symbolic" in result.stdout
