"""HellaSwag as lm-eval's task defines it: preprocessing, scoring, malformed rows."""

from __future__ import annotations

import pytest

from megaproc.eval.hellaswag import (evaluate_hellaswag, load_hellaswag, parse_row, preprocess,
                                     requests)
from megaproc.eval.loglik import LoglikScorer
from tests.eval.conftest import HELLASWAG_ROWS, continuation_logprob, write_jsonl


def test_preprocess_and_query_as_lm_eval_spells_them():
    # " [title]" -> ". ", bracket tags removed, double spaces collapsed once, stripped.
    assert preprocess("  a [title] b [step] c  ") == "a. b c"
    assert preprocess("[header] How to x [title] Do y.") == " How to x. Do y."
    item = parse_row(HELLASWAG_ROWS[1], "f:2", 2)
    assert item.query == ("Home and Garden: How to clean a window. Fill a bucket with warm water. "
                          "Add a few drops of soap.")  # ctx_b.capitalize() lower-cases the rest
    assert item.choices == (" Stir the water until it foams.", "Throw the bucket at the window.",
                            " Dip a sponge in the water and wipe the glass. Dry it with a cloth.",
                            "Eat the soap.")
    assert item.gold == 2
    first = parse_row(HELLASWAG_ROWS[0], "f:1", 1)
    assert first.query.endswith("smiles. Then") and first.gold == 3  # label "3" -> 3
    assert requests([first])[0] == (first.query, " " + first.choices[0])


def test_scores_match_a_hand_computation(tmp_path, model, tokenizer):
    path = write_jsonl(tmp_path / "hs.jsonl", HELLASWAG_ROWS)
    items = load_hellaswag(path)
    scorer = LoglikScorer(tokenizer, max_length=128, batch_size=5)
    summary, rows = evaluate_hellaswag(scorer, lambda i, m: model(input_ids=i, attention_mask=m).logits,
                                       items)
    acc = acc_norm = 0
    for item, row in zip(items, rows):
        expected = [continuation_logprob(model, tokenizer, item.query, " " + c)[0]
                    for c in item.choices]
        assert row["loglik"] == pytest.approx(expected, rel=1e-5, abs=1e-4)
        best = max(range(len(expected)), key=lambda k: expected[k])
        norm = [ll / len(c) for ll, c in zip(expected, item.choices)]
        best_norm = max(range(len(norm)), key=lambda k: norm[k])
        for values in (expected, norm):  # the verdicts must not hinge on float rounding
            ordered = sorted(values)
            assert ordered[-1] - ordered[-2] > 1e-3
        assert (row["pred"], row["pred_norm"]) == (best, best_norm)
        acc += best == item.gold
        acc_norm += best_norm == item.gold
        assert row["ind"] == HELLASWAG_ROWS[item.line - 1]["ind"] and row["label"] == item.gold
    assert summary == {"acc": acc / len(items), "acc_norm": acc_norm / len(items),
                       "num_examples": len(items)}
    assert summary["acc"] != summary["acc_norm"]  # the fixture exercises the length norm


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("ctx_b"), "missing field 'ctx_b'"),
    (lambda r: r.update(label=7), "'label' 7 is out of range for 4 endings"),
    (lambda r: r.update(label="x"), "'label' must be an integer"),
    (lambda r: r.update(endings="abc"), "'endings' must be a non-empty list of strings"),
    (lambda r: r.update(endings=["ok", "[step]"]), "ending 1 is empty after preprocessing"),
])
def test_malformed_rows_name_file_and_line(tmp_path, mutate, message):
    bad = dict(HELLASWAG_ROWS[2])
    bad["endings"] = list(bad["endings"])
    mutate(bad)
    path = write_jsonl(tmp_path / "hs.jsonl", [HELLASWAG_ROWS[0], "", bad])
    with pytest.raises(ValueError) as info:
        load_hellaswag(path)
    assert str(info.value).startswith(f"{path}:3: ") and message in str(info.value)


def test_invalid_json_and_missing_file(tmp_path):
    path = write_jsonl(tmp_path / "hs.jsonl", [HELLASWAG_ROWS[0], "{not json"])
    with pytest.raises(ValueError, match=r"hs.jsonl:2: invalid JSON"):
        load_hellaswag(path)
    with pytest.raises(ValueError, match="not found"):
        load_hellaswag(tmp_path / "absent.jsonl")
    assert len(load_hellaswag(write_jsonl(tmp_path / "ok.jsonl", HELLASWAG_ROWS), 2)) == 2
