"""megaproc's HellaSwag equals lm-evaluation-harness's own ``hellaswag`` task.

lm-eval runs in a subprocess, offline, on the tiny model directory (``save_pretrained`` of a
GPT-2 and its tokenizer, as ``megaproc.export`` writes it), with a task yaml that ``include``s
the installed ``lm_eval/tasks/hellaswag/hellaswag.yaml`` (its ``process_docs``, prompt and
metrics) and only points the dataset at a local jsonl file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval.conftest import CORPUS, HELLASWAG_ROWS, write_jsonl

LM_EVAL_SCRIPT = r"""
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager

model_dir, task_dir = sys.argv[1], sys.argv[2]
out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32",
                              tasks=["hellaswag_local"], task_manager=TaskManager(include_path=task_dir),
                              batch_size=4, device="cpu", log_samples=True)
samples = sorted(out["samples"]["hellaswag_local"], key=lambda s: s["doc_id"])
print("RESULT " + json.dumps({
    "acc": out["results"]["hellaswag_local"]["acc,none"],
    "acc_norm": out["results"]["hellaswag_local"]["acc_norm,none"],
    "items": [{"loglik": [r[0] for r in s["filtered_resps"]], "acc": s["acc"],
               "acc_norm": s["acc_norm"], "query": s["arguments"][0][0]} for s in samples]}))
"""


def _rows(count: int) -> list[dict]:
    """The fixture rows plus seeded ones built from the corpus (bracket tags, odd casing)."""
    rng = random.Random(1234)
    sentences = sorted(set(CORPUS))
    rows = list(HELLASWAG_ROWS)
    for k in range(count - len(rows)):
        first, second = rng.sample(sentences, 2)
        words = second.split()
        endings = [" ".join(rng.sample(words, rng.randint(2, len(words)))) + "."
                   for _ in range(4)]
        if k % 3 == 0:
            endings[k % 4] = "[step] " + endings[k % 4] + " [title] And  then."
        rows.append({"ind": 1000 + k, "activity_label": rng.choice(["Cooking", "Sports", "Home"]),
                     "ctx_a": first, "ctx_b": words[0].upper() + " " + " ".join(words[1:3]),
                     "ctx": first, "endings": endings, "label": rng.randrange(4)})
    return rows


@pytest.mark.slow  # lm-evaluation-harness scores in a process of its own
def test_hellaswag_acc_and_acc_norm_equal_lm_eval(tmp_path, model_dir, capsys):
    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        pytest.skip("lm-eval is not installed (pip install -e .[test])")
    data = write_jsonl(tmp_path / "hellaswag_val.jsonl", _rows(24))
    upstream = Path(spec.submodule_search_locations[0]) / "tasks" / "hellaswag" / "hellaswag.yaml"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hellaswag_local.yaml").write_text(
        f"include: {upstream}\ntask: hellaswag_local\ntag: []\ndataset_path: json\n"
        f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    validation: {data}\n"
        "training_split: null\nvalidation_split: validation\n")
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf_home"), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", LM_EVAL_SCRIPT, str(model_dir), str(tasks)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    theirs = json.loads(line[len("RESULT "):])

    from megaproc.eval.hellaswag import load_hellaswag
    from megaproc.evaluate import main

    assert [i.query for i in load_hellaswag(data)] == [t["query"] for t in theirs["items"]]

    items_out = tmp_path / "items.jsonl"
    assert main(["--model", str(model_dir), "--hellaswag", str(data), "--items-out",
                 str(items_out), "--batch-size", "5", "--no-progress"]) == 0
    section = json.loads(capsys.readouterr().out)["hellaswag"]
    ours = {"acc": section["hellaswag_acc"], "acc_norm": section["hellaswag_acc_norm"]}
    rows = [json.loads(x) for x in items_out.read_text().splitlines()]
    assert len(theirs["items"]) == len(rows) == section["hellaswag_num_examples"] == 24
    for mine, other in zip(rows, theirs["items"]):
        assert mine["loglik"] == pytest.approx(other["loglik"], rel=1e-5, abs=1e-4)
        assert (mine["acc"], mine["acc_norm"]) == (other["acc"], other["acc_norm"])
    assert (ours["acc"], ours["acc_norm"]) == (theirs["acc"], theirs["acc_norm"])
    assert 0 < ours["acc"] < 1 or 0 < ours["acc_norm"] < 1  # not a degenerate comparison
    print(f"lm-eval agreement on 24 items: acc {ours['acc']:.4f}, acc_norm {ours['acc_norm']:.4f}")
