"""resolve(cfg, world_size): derived values before the run, and the same refusals for --dry-run,
for the training entry point and for a Trainer built from an unresolved config."""

from __future__ import annotations

import pytest
import yaml

from megaproc.config import ConfigError, load_config
from megaproc.runs import kind_name, resolve
from megaproc.train import run
from megaproc.trainer import Trainer
from tests.launch import REPO

CLASSIFY = str(REPO / "configs" / "classify" / "base.yaml")
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


def refusals(tmp_path):
    """(recipe, overrides, key the one-line message must name, words it must contain)."""
    missing = tmp_path / "absent"
    return [
        (QUICKSTART, ["model.name=gpt3-huge"], "model.name", "gpt3-huge"),
        (QUICKSTART, ["model.weights_to_transfer=[attn]"], "model.weights_to_transfer",
         "needs model.init_from"),
        (QUICKSTART, ["model.weights_to_train=[ffn]"], "model.weights_to_train",
         "needs model.init_from"),
        (CLASSIFY, ["train.max_steps=5"], "train.max_steps", "classify.n_epochs decides"),
        (QUICKSTART, [f"data.train=[{missing}]", f"data.tokenizer={tmp_path}"], "data.train[0]",
         "not found"),
        (QUICKSTART, [f"data.train=[{missing}.jsonl]"], "data.train[0]", "not found"),
        (QUICKSTART, [f"data.tokenizer={missing}/tok", f"data.train=[{tmp_path}/x.jsonl]"],
         "data.tokenizer", "not found"),
        (QUICKSTART, ["task.kind=graph_search", f"task.splits_dir={missing}"], "task.splits_dir",
         "not found"),
        (QUICKSTART, [f"data.mixin={missing}.jsonl", "data.mixin_percent=0.1"], "data.mixin",
         "not found"),
    ]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_every_refusal_is_one_line_through_dry_run_training_and_the_trainer(tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    (tmp_path / "x.jsonl").write_text('{"prompt": "a", "answer": "b"}\n')
    for recipe, overrides, key, words in refusals(tmp_path):
        out_dir = tmp_path / "run"
        argv = ["--config", recipe, *overrides, f"run.out_dir={out_dir}"]
        from megaproc.errors import run_cli

        lines = []
        for args in (["--dry-run", *argv], argv):
            assert run_cli(run, args) == 2, (overrides, args)
            lines.append(_error_line(capsys))
        with pytest.raises(ConfigError) as err:
            Trainer(load_config(recipe, [*overrides, f"run.out_dir={out_dir}"]))
        lines.append(f"error: {' '.join(str(err.value).split())}")
        assert lines[0] == lines[1] == lines[2], lines
        assert f"'{key}'" in lines[0] and words in lines[0], lines[0]
        assert not out_dir.exists(), overrides  # refused before anything was written


def test_dry_run_prints_grad_accum_derived_for_the_launchers_world_size(capsys, monkeypatch):
    argv = ["--config", QUICKSTART, "--dry-run", "train.seq_len=32", "train.micro_batch=2",
            "train.total_batch_tokens=256"]
    for world_size, grad_accum in (("2", 2), ("1", 4)):
        monkeypatch.setenv("WORLD_SIZE", world_size)   # what a launcher sets
        assert run(argv) == 0
        resolved = yaml.safe_load(capsys.readouterr().out)
        assert resolved["train"]["grad_accum"] == grad_accum  # 256 / (2 * 32 * world size)
        assert resolved["run"]["kind"] == "lm"
        assert resolved["data"]["train"][0]["prefix"].endswith("corpus")  # the built-in corpus


def test_dry_run_prints_the_classification_plan(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run(["--config", CLASSIFY, "--dry-run", "classify.n_epochs=3",
                "classify.train_set_size=200", "train.micro_batch=20"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    # 3 epochs of 200 examples, 20 per rank on 2 ranks: ceil(600 / 40) = 15 optimizer steps.
    assert resolved["train"]["max_steps"] == 15
    assert resolved["schedule"]["kind"] == "cosine" and resolved["schedule"]["warmup_steps"] == 0
    assert resolved["schedule"]["min_lr_ratio"] == pytest.approx(1e-6 / 1e-5)
    assert resolved["run"]["kind"] == "classify"


def test_the_kind_is_chosen_in_one_place_and_run_kind_must_agree():
    assert kind_name(load_config(None)) == "lm"
    assert kind_name(load_config(None, ["task.kind=graph_search"])) == "graph_search"
    assert kind_name(load_config(None, ["run.kind=graph_search"])) == "graph_search"
    assert kind_name(load_config(CLASSIFY)) == "classify"
    with pytest.raises(ConfigError, match="'run.kind'"):
        resolve(load_config(CLASSIFY, ["run.kind=lm"]))
    with pytest.raises(ConfigError, match="'run.kind'"):
        resolve(load_config(None, ["run.kind=classify"]))


def test_resolve_is_idempotent_and_keeps_the_given_keys():
    cfg = load_config(CLASSIFY, ["classify.n_epochs=2"])
    once = resolve(cfg, 1)
    twice = resolve(once, 1)
    assert once.train.max_steps == twice.train.max_steps == 20
    assert cfg.train.max_steps == 100  # the input is left untouched


def test_optional_package_missing_is_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"'log.wandb'.*pip install 'megaproc\[logging\]'"):
        resolve(load_config(QUICKSTART, ["log.wandb=true"]))
    resolve(load_config(QUICKSTART, ["log.wandb=true", "log.wandb_mode=disabled"]))
