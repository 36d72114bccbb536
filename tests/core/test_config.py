"""Config tree: recipes, extends, overrides, validation errors that name the key."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megaproc.config import ConfigError, fingerprint, load_config, to_yaml
from megaproc import train
from megaproc.errors import run_cli
from megaproc.runs import resolve

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_and_overrides_parsed_as_yaml():
    cfg = load_config(None, ["train.max_steps=20", "run.out_dir=runs/demo", "optim.lr=1e-3",
                             "optim.betas=[0.9, 0.95]", "checkpoint.resume=none"])
    assert cfg.train.max_steps == 20 and cfg.run.out_dir == "runs/demo"
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.optim.betas == [0.9, 0.95]
    assert cfg.checkpoint.resume == "none"


def test_extends_merges_parent_then_child(tmp_path):
    write(tmp_path / "base.yaml", {"train": {"max_steps": 7, "seq_len": 64}, "optim": {"lr": 0.1}})
    child = write(tmp_path / "child.yaml", {"extends": "base.yaml", "train": {"seq_len": 32}})
    cfg = load_config(child, ["optim.lr=0.5"])
    assert (cfg.train.max_steps, cfg.train.seq_len, cfg.optim.lr) == (7, 32, 0.5)


@pytest.mark.parametrize("override, key", [
    ("train.max_stepz=3", "train.max_stepz"),
    ("trian.max_steps=3", "trian"),
    ("train.max_steps=abc", "train.max_steps"),
    ("train.micro_batch=1.5", "train.micro_batch"),
    ("train.precision=fp8", "train.precision"),
    ("train.grad_accum=0", "train.grad_accum"),
])
def test_bad_keys_and_types_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert f"'{key}'" in str(err.value)


def test_unknown_key_in_recipe_names_it(tmp_path):
    path = write(tmp_path / "bad.yaml", {"log": {"log_evrey": 5}})
    with pytest.raises(ConfigError, match="'log.log_evrey'"):
        load_config(path)


def test_fingerprint_ignores_paths_and_length_but_not_hyperparameters():
    a = load_config(None, ["run.out_dir=a", "train.max_steps=10"])
    b = load_config(None, ["run.out_dir=b", "train.max_steps=99"])
    c = load_config(None, ["optim.lr=0.123"])
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_dry_run_prints_resolved_config_and_shipped_recipes_load():
    out = subprocess.run([sys.executable, "megaproc/train.py", "--config", "configs/quickstart.yaml",
                          "--dry-run", "train.max_steps=3"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["train"]["max_steps"] == 3
    assert resolved["model"]["name"] == load_config(REPO / "configs/quickstart.yaml").model.name
    for recipe in sorted((REPO / "configs").glob("*.yaml")):
        assert to_yaml(load_config(recipe))


def test_cli_unknown_key_is_one_line_error():
    out = subprocess.run([sys.executable, "megaproc/train.py", "--config", "configs/quickstart.yaml",
                          "train.bogus=1"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "unknown config key 'train.bogus'" in out.stderr


@pytest.mark.parametrize("override, key", [
    ("curriculum.curr_threshold=5", "curriculum.curr_threshold"),
    ("curriculum.enabled=true", "curriculum.enabled"),          # needs task.kind graph_search
    ("task.kind=graph_serch", "task.kind"),
    ("task.max_lookahead=0", "task.max_lookahead"),
    ("extra.anything=1", "extra"),                              # unknown top-level section
    ("eval.ewok_every=10", "eval.ewok_every"),                  # needs eval.ewok_path
    ("model.weights_to_train=[attn, mlp]", "model.weights_to_train"),
    ("schedule.kind=cosin", "schedule.kind"),
])
def test_dry_run_rejects_exactly_what_training_rejects(override, key, capsys, monkeypatch):
    with pytest.raises(ConfigError) as err:
        resolve(load_config(None, [override]))
    assert f"'{key}'" in str(err.value)
    # train.py's own entry in this process (a subprocess per case cost ~7 s of imports; the
    # command line itself is checked by test_cli_unknown_key_is_one_line_error).
    logger = logging.getLogger("megaproc")
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))  # --dry-run moves the handler
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = run_cli(train.run, ["--dry-run", override])
    out = capsys.readouterr()
    assert code == 2 and f"'{key}'" in out.err and out.out == ""
    assert out.err.strip().splitlines() == [out.err.strip()]


def test_workflow_sections_are_typed_parts_of_the_config():
    cfg = load_config(None, ["task.kind=graph_search", "curriculum.enabled=true",
                             "curriculum.curr_threshold=0.9", "classify.n_epochs=3"])
    assert cfg.task.kind == "graph_search" and cfg.curriculum.curr_threshold == 0.9
    assert cfg.classify.n_epochs == 3 and cfg.classify.target_func is None
    assert yaml.safe_load(to_yaml(cfg))["curriculum"]["enabled"] is True


def test_config_module_imports_nothing_of_megaproc_but_errors_and_its_parser():
    import ast

    tree = ast.parse((REPO / "megaproc" / "config.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert {m for m in imported if m and m.startswith("megaproc")} == {"megaproc.errors",
                                                                       "megaproc.config_parsing"}


def test_renamed_key_is_still_accepted_under_its_old_name(tmp_path):
    # curriculum.eval_subset_size sized the held-out evaluation of non-curriculum runs too.
    assert load_config(None, ["curriculum.eval_subset_size=64"]).task.eval_subset_size == 64
    recipe = write(tmp_path / "r.yaml", {"task": {"eval_subset_size": 200}})
    assert load_config(recipe, ["curriculum.eval_subset_size=16"]).task.eval_subset_size == 16
