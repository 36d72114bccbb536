"""The study spec and its graph: expansion, shared parents, references, and refusals before
anything runs; ``--dry-run`` of every shipped study."""

from __future__ import annotations

from pathlib import Path

import pytest

from megaproc.errors import run_cli
from megaproc.study import main as study_main
from megaproc.study_graph import expand, validate
from megaproc.study_spec import StudyError, load_spec
from tests.study import QUICKSTART, REPO, TINY, two_arm_spec, write_spec

SHIPPED = sorted((REPO / "configs" / "study").glob("*.yaml"))


def graph_of(tmp_path: Path, spec: dict):
    """The checked graph of ``spec`` in tmp_path/out."""
    graph = expand(load_spec(write_spec(tmp_path / "study.yaml", spec)), tmp_path / "out")
    validate(graph)
    return graph


def overrides_of(node) -> dict:
    """A node's trainer overrides as a mapping (the last value of a repeated key)."""
    return dict(item.split("=", 1) for item in node.overrides)


def test_two_arms_two_seeds_share_one_parent(tmp_path):
    graph = graph_of(tmp_path, two_arm_spec())
    ids = [n.node_id for n in graph.nodes]
    assert ids == ["splits", "base/run", "arms/everything__seed1", "arms/everything__seed2",
                   "arms/attn__seed1", "arms/attn__seed2"]
    base = graph.node("base/run")
    assert base.parents == ["splits"]          # it reads ${splits} in its evaluate flags
    assert overrides_of(base)["model.init_from"] == "null"
    for node in graph.nodes[2:]:
        settings = overrides_of(node)
        assert node.parents == ["base/run", "splits"]
        assert settings["model.init_from"] == f"latest:{base.directory}"
        assert settings["run.seed"] == str(node.seed)
        assert settings["run.out_dir"] == str(tmp_path / "out" / node.node_id)
        assert node.evaluate[""][:2] == ["--split",
                                         str(graph.node("splits").output / "test.jsonl")]
    assert overrides_of(graph.node("arms/attn__seed2"))["model.weights_to_transfer"] == "[attn]"
    assert graph.varied_keys() == ["model.weights_to_transfer", "from"]


def test_grids_arm_grids_and_parent_variants(tmp_path):
    spec = {"name": "g", "stages": [
        {"name": "pre", "recipe": QUICKSTART, "overrides": dict(TINY),
         "grid": {"optim.lr": [0.001, 0.002]}},
        {"name": "post", "recipe": QUICKSTART, "from": "pre", "overrides": dict(TINY),
         "grid": {"data.mixin_percent": [0]},
         "arms": {"scratch": {"from": None},
                  "transfer": {"grid": {"model.weights_to_transfer": [["attn"], ["ffn"]]}}}}]}
    graph = graph_of(tmp_path, spec)
    ids = [n.node_id for n in graph.nodes]
    assert ids == ["pre/lr=0.001", "pre/lr=0.002", "post/scratch__mixin_percent=0",
                   "post/transfer__mixin_percent=0__weights_to_transfer=attn__from-lr=0.001",
                   "post/transfer__mixin_percent=0__weights_to_transfer=attn__from-lr=0.002",
                   "post/transfer__mixin_percent=0__weights_to_transfer=ffn__from-lr=0.001",
                   "post/transfer__mixin_percent=0__weights_to_transfer=ffn__from-lr=0.002"]
    scratch = graph.node("post/scratch__mixin_percent=0")
    assert scratch.parents == [] and overrides_of(scratch)["model.init_from"] == "null"
    # A scratch arm never inherits the recipe's own init_from.
    assert "from" not in scratch.point
    run = graph.node(ids[4])
    assert run.parents == ["pre/lr=0.002"]
    assert overrides_of(run)["model.init_from"] == f"latest:{graph.node('pre/lr=0.002').output}"
    # a key some runs do not set counts as varied (its column is empty for them)
    assert set(graph.varied_keys()) == {"optim.lr", "data.mixin_percent",
                                        "model.weights_to_transfer", "from"}


def refusal(tmp_path, spec: dict, capsys) -> str:
    """Run the command on ``spec`` (not a dry run): it must refuse with exit code 2 and start
    nothing; returns the error line."""
    out = tmp_path / "out"
    code = run_cli(study_main, [str(write_spec(tmp_path / "study.yaml", spec)),
                                "--out-dir", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert not out.exists(), "nothing may start before every run is checked"
    return err


def test_bad_key_in_one_run_is_refused_before_anything_runs(tmp_path, capsys):
    spec = two_arm_spec()
    spec["stages"][2]["arms"]["attn"]["model.weights_to_transfer"] = ["attention"]
    err = refusal(tmp_path, spec, capsys)
    assert "arms/attn__seed1" in err and "model.weights_to_transfer" in err
    spec = two_arm_spec(**{"train.max_stepz": 3})
    assert "train.max_stepz" in refusal(tmp_path, spec, capsys)


@pytest.mark.parametrize("change, needle", [
    (lambda s: s["stages"][1].update(recipe="configs/nope.yaml"), "configs/nope.yaml not found"),
    (lambda s: s["stages"][2].update({"from": "later"}), "'later' is not an earlier stage"),
    (lambda s: s["stages"][2].update({"from": "splits"}), "is a data stage"),
    (lambda s: s["stages"][2]["evaluate"].update(split="${nosuch}/test.jsonl"),
     "${nosuch} does not name an earlier stage"),
    (lambda s: s["stages"][1]["overrides"].update({"run.out_dir": "x"}), "set by the study"),
    (lambda s: s["stages"][2]["overrides"].update({"model.init_from": "x"}),
     "'model.init_from' is set by from: base"),
    (lambda s: s["stages"][1]["overrides"].update({
        "task.splits_dir": "${splits}", "task.max_input_size": 26,
        "task.natural_language": False, "task.max_lookahead": 4}),
     "'task.max_lookahead' is 4 but the splits of stage 'splits' were built with 3"),
    (lambda s: s["stages"].append({"name": "base", "recipe": QUICKSTART}), "defined twice"),
    (lambda s: s.update(colour="red"), "unknown key 'colour'"),
])
def test_bad_recipe_dependency_or_structure_is_refused(tmp_path, capsys, change, needle):
    spec = two_arm_spec()
    change(spec)
    assert needle in refusal(tmp_path, spec, capsys)


@pytest.mark.parametrize("spec_path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_dry_run_of_every_shipped_study(spec_path, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(study_main, [str(spec_path), "--out-dir", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    graph = expand(load_spec(spec_path), out)
    for node in graph.nodes:
        assert f"] {node.node_id}\n" in text
    assert not out.exists()
    # Every parent is trained once: a parent's id appears once as a node, and every run that
    # starts from it points at its directory.
    by_id = {n.node_id: n for n in graph.nodes}
    for node in graph.nodes:
        init = [o for o in node.overrides if o.startswith("model.init_from=latest:")]
        if init:
            assert init[0] == f"model.init_from=latest:{by_id[node.parents[0]].output}"


def test_shipped_studies_have_the_issue_s_arms():
    cpu = expand(load_spec(REPO / "configs" / "study" / "cpu.yaml"), "/tmp/x")
    runs = [n for n in cpu.nodes if n.kind == "train"]
    pptrain = [n for n in runs if n.stage == "pptrain"]
    assert len(pptrain) == 1 and pptrain[0].recipe.name == "pptrain_cpu.yaml"
    arms = {(n.label, n.seed) for n in runs if n.stage == "pretrain"}
    assert {a for a, _ in arms} == {"scratch", "everything", "attn"}
    assert len({s for _, s in arms}) == 2 and len(arms) == 6
    assert all(n.recipe.name == "pretrain_cpu.yaml" and n.target_val_loss for n in runs
               if n.stage == "pretrain")
    semantic = expand(load_spec(REPO / "configs" / "study" / "semantic_downstream.yaml"), "/x")
    stages = {n.stage for n in semantic.nodes}
    assert {"c4", "codeparrot", "deepmind_math"} <= stages
    pre = [n for n in semantic.nodes if n.recipe and n.recipe.name == "pptrain_gpt2.yaml"]
    assert len(pre) == 1
    mixin = expand(load_spec(REPO / "configs" / "study" / "mixin_forgetting.yaml"), "/x")
    keys = {k for n in mixin.nodes for k in n.point}
    assert {"data.mixin_percent", "data.mixin_loss"} <= keys


def test_study_error_is_a_user_error():
    with pytest.raises(StudyError):
        load_spec("/nonexistent/study.yaml")


def test_a_finished_run_whose_settings_changed_is_kept_with_a_warning(tmp_path, capsys):
    from megaproc.study_runner import write_node_file

    spec = two_arm_spec()
    graph = graph_of(tmp_path, spec)
    node = graph.node("arms/attn__seed1")
    node.directory.mkdir(parents=True)
    write_node_file(node)
    for name in ("DONE", "eval.json"):
        (node.directory / name).write_text("{}")
    spec["stages"][2]["overrides"]["optim.lr"] = 1e-4
    path = write_spec(tmp_path / "study.yaml", spec)
    assert run_cli(study_main, [str(path), "--out-dir", str(tmp_path / "out"), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "warning: arms/attn__seed1 was trained with other settings" in captured.err
    assert "[       done] arms/attn__seed1" in captured.out
    assert "arms/attn__seed2 was trained" not in captured.err
