"""results.csv, results.md and plots/ from run folders whose logs and eval.json are written
here (no training): values equal each eval.json, tokens_to_target joins eval steps to train
tokens, mean ± std over seeds."""

from __future__ import annotations

import json
import statistics

from megaproc.study_graph import expand
from megaproc.study_results import write_results
from megaproc.study_runner import node_status
from megaproc.study_spec import load_spec
from tests.study import flat_numbers, read_csv, two_arm_spec, write_spec

TOKENS_PER_STEP = 64
TARGET = 2.5
# val_loss at eval steps 2, 4, ..., 12 and the eval.json of each arm run; train.jsonl is
# logged every 3 steps, so the step where the target is reached is sometimes between records.
CURVES = {
    "arms/everything__seed1": [4.0, 3.0, 2.4, 2.0, 1.9, 1.8],     # reached at step 6
    "arms/everything__seed2": [4.0, 2.5, 2.2, 2.0, 1.9, 1.8],     # step 4: between 3 and 6
    "arms/attn__seed1": [4.0, 3.5, 3.2, 3.0, 2.9, 2.8],           # never
    "arms/attn__seed2": [4.0, 3.5, 3.2, 3.0, 2.9, 2.6],           # never
    "base/run": [5.0, 4.0, 3.0, 2.9, 2.8, 2.7],
}
REACHED_AT = {"arms/everything__seed1": 6, "arms/everything__seed2": 4}
ACCURACY = {"arms/everything__seed1": 0.5, "arms/everything__seed2": 0.7,
            "arms/attn__seed1": 0.25, "arms/attn__seed2": 0.25, "base/run": 0.125}


def fake_run(node) -> dict:
    """Logs, eval.json and the DONE marker of a finished run; returns its eval.json."""
    logs = node.directory / "logs"
    logs.mkdir(parents=True)
    with open(logs / "train.jsonl", "w") as handle:
        for step in range(3, 13, 3):
            handle.write(json.dumps({"step": step, "loss": 9.0 / step,
                                     "tokens": TOKENS_PER_STEP * step}) + "\n")
    with open(logs / "eval.jsonl", "w") as handle:
        for step, loss in zip(range(2, 13, 2), CURVES[node.node_id]):
            handle.write(json.dumps({"step": step, "val_loss": loss, "num_tokens": 99,
                                     "timestamp": 1.0}) + "\n")
        handle.write(json.dumps({"step": 12, "heldout_acc": 0.375, "stage": 3}) + "\n")
    result = {"checkpoint": str(node.directory), "accuracy": ACCURACY[node.node_id],
              "answer_loss": 1.0 + ACCURACY[node.node_id], "num_examples": 8,
              "hellaswag": {"acc_norm": ACCURACY[node.node_id] / 2, "ok": True},
              "by_lookahead": [1, 2]}
    (node.directory / "eval.json").write_text(json.dumps(result))
    (node.directory / "DONE").write_text("{}")
    return result


def test_results_table_markdown_and_plots(tmp_path):
    graph = expand(load_spec(write_spec(tmp_path / "s.yaml", two_arm_spec(target=TARGET))),
                   tmp_path / "out")
    (graph.node("splits").output).mkdir(parents=True)
    (graph.node("splits").output / "meta.json").write_text("{}")
    (graph.node("splits").directory / "DONE").write_text("{}")
    evals = {n.node_id: fake_run(n) for n in graph.nodes if n.kind == "train"}
    status = {n.node_id: node_status(n) for n in graph.nodes}
    assert set(status.values()) == {"done"}
    paths, _, _ = write_results(graph, status)

    rows = {r["run"]: r for r in read_csv(tmp_path / "out" / "results.csv")}
    assert list(rows) == [n.node_id for n in graph.nodes if n.kind == "train"]
    columns = list(next(iter(rows.values())))
    assert columns[:8] == ["run", "stage", "arm", "run_dir", "seed", "status",
                           "model.weights_to_transfer", "from"]
    for run, result in evals.items():
        row = rows[run]
        expected = flat_numbers(result)
        assert expected == {"accuracy": ACCURACY[run], "answer_loss": 1.0 + ACCURACY[run],
                            "num_examples": 8, "hellaswag.acc_norm": ACCURACY[run] / 2}
        for key, value in expected.items():
            assert float(row[key]) == value, (run, key)
        assert "hellaswag.ok" not in row and "by_lookahead" not in row and "checkpoint" not in row
        assert float(row["final.val_loss"]) == CURVES[run][-1]
        assert float(row["final.heldout_acc"]) == 0.375
        assert row["status"] == "done" and row["run_dir"] == str(tmp_path / "out" / run)
        reached = REACHED_AT.get(run)
        assert row["tokens_to_target"] == ("" if reached is None
                                           else str(TOKENS_PER_STEP * reached)), run
    assert rows["arms/attn__seed2"]["seed"] == "2"
    assert rows["arms/attn__seed2"]["model.weights_to_transfer"] == "[attn]"
    assert rows["arms/attn__seed2"]["from"] == "base/run"
    assert rows["base/run"]["from"] == ""

    md = (tmp_path / "out" / "results.md").read_text()
    lines = {line.split("|")[1].strip(): line for line in md.splitlines()
             if line.startswith("| ") and not line.startswith("| arm")}
    mean = statistics.fmean([0.5, 0.7])
    std = statistics.stdev([0.5, 0.7])
    assert f"{mean:.4g} ± {std:.2g}" == "0.6 ± 0.14"
    assert "| 2/2 | " in lines["everything"] and "0.6 ± 0.14" in lines["everything"]
    assert "0.25 ± 0" in lines["attn"]
    assert "320 ± 91 " in lines["everything"]       # tokens 384 and 256
    assert "not reached (0/2)" in lines["attn"]
    assert "| run | 1/1 | 0.125 |" in lines["run"]  # one seed: no spread
    assert "## arms" in md and "## base" in md
    assert "num_examples" not in md and "final.stage" not in md
    plots = sorted(p.name for p in (tmp_path / "out" / "plots").iterdir())
    assert plots == ["arms_heldout_acc.png", "arms_metrics.png", "arms_val_loss.png",
                     "base_heldout_acc.png", "base_metrics.png", "base_val_loss.png"]
    for path in paths[2:]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unfinished_and_skipped_runs_have_empty_metrics(tmp_path):
    graph = expand(load_spec(write_spec(tmp_path / "s.yaml", two_arm_spec())), tmp_path / "out")
    base = graph.node("base/run")
    base.directory.mkdir(parents=True)
    (base.directory / "FAILED").write_text("{}")
    status = {n.node_id: node_status(n) for n in graph.nodes}
    write_results(graph, status, plots=False)
    rows = {r["run"]: r for r in read_csv(tmp_path / "out" / "results.csv")}
    assert rows["base/run"]["status"] == "failed"
    assert {rows[k]["status"] for k in rows if k != "base/run"} == {"skipped"}
    assert "accuracy" not in rows["base/run"]
