"""Greedy exact match (DeepMind Mathematics): decoding vs HF generate, answer-only training on
converted data, per-module accuracy, loaders and bad input."""

from __future__ import annotations

import pytest
import torch

from data_tools.deepmind_math import convert
from megaproc.eval.exact_match import (ExactMatchEvaluator, PromptAnswer, greedy_decode,
                                       load_examples)
from megaproc.eval.loglik import hf_logits_fn
from tests.data_tools.test_deepmind_math import make_raw
from tests.eval.conftest import make_model, write_jsonl


def _generate_text(model, tokenizer, prompt_ids: list[int], max_new: int) -> str:
    """Reference: HF generate (greedy), decoded, cut at the first newline."""
    out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids),
                                                                                dtype=torch.long),
                         max_new_tokens=max_new, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(prompt_ids):], skip_special_tokens=True).split("\n", 1)[0]


def test_greedy_decode_equals_hf_generate(model, tokenizer):
    prompts = [tokenizer.encode(t) for t in ("What is 12 + 30?", "The cup", "Solve 3*x = 9 for x.\n")]
    ours = greedy_decode(hf_logits_fn(model), prompts, lambda i, ids: False, [6, 6, 6],
                         max_length=128, pad_id=tokenizer.pad_token_id, batch_size=2)
    eos = tokenizer.eos_token_id

    def through_eos(ids: list[int]) -> list[int]:
        return ids[:ids.index(eos) + 1] if eos in ids else ids

    for prompt, generated in zip(prompts, ours):
        reference = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                   eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        assert through_eos(generated) == through_eos(reference[0, len(prompt):].tolist())


def _train_answer_only(model, tokenizer, path, steps: int = 300) -> float:
    """Fit the model on the converted file through the mixin reader and the answer-only loss."""
    from megaproc.data.batch import collate
    from megaproc.data.prompt_answer import PromptAnswerDataset
    from megaproc.loss import token_cross_entropy, training_loss

    dataset = PromptAnswerDataset(str(path), tokenizer, seq_len=64, seed=0)
    batch = collate([dataset[i] for i in range(dataset.num_examples)], tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    # Dropout off: the fit must not depend on the dropout draws (they differ with the number of
    # threads), only on the data and the answer-only loss.
    model.eval()
    for _ in range(steps):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = training_loss("answer_only", token_cross_entropy(logits, batch["labels"]),
                             batch["labels"], batch["answer_mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def test_answer_only_training_then_exact_match_per_module(tmp_path, tokenizer):
    raw = make_raw(tmp_path / "mathematics_dataset-v1.0")
    convert(raw, tmp_path / "dm", splits=["train-easy", "interpolate", "extrapolate"])
    torch.manual_seed(0)
    model = make_model(tokenizer, seed=1)
    assert _train_answer_only(model, tokenizer, tmp_path / "dm" / "train-easy.jsonl") < 0.05
    examples = load_examples(tmp_path / "dm")  # interpolate.jsonl + extrapolate.jsonl
    assert len(examples) == 10 and {e.split for e in examples} == {"interpolate", "extrapolate"}
    # One answer the model cannot produce, one with whitespace around the true answer.
    examples[1] = PromptAnswer(examples[1].prompt, "17", examples[1].module, "interpolate", "x", 2)
    examples[3] = PromptAnswer(examples[3].prompt, "  " + examples[3].answer + " ",
                               examples[3].module, "interpolate", "x", 4)
    evaluator = ExactMatchEvaluator(tokenizer, 128, batch_size=3)
    summary, rows = evaluator.run(hf_logits_fn(model), examples)
    prompts = evaluator.encode_prompts(examples)
    expected = []
    for example, prompt in zip(examples, prompts):
        answer_tokens = len(tokenizer.encode(example.answer.strip(), add_special_tokens=False))
        text = _generate_text(model, tokenizer, prompt, 2 * answer_tokens + 8)
        expected.append(text.strip() == example.answer.strip())
    assert [r["correct"] for r in rows] == expected
    assert expected == [True, False] + [True] * 8  # memorized, except the changed answer
    assert summary["accuracy"] == pytest.approx(0.9) and summary["num_examples"] == 10
    assert summary["by_module"] == {"extrapolate/algebra__linear_1d": 1.0,
                                    "extrapolate/arithmetic__add_or_sub": 1.0,
                                    "interpolate/algebra__linear_1d": pytest.approx(2 / 3),
                                    "interpolate/arithmetic__add_or_sub": 1.0}
    assert summary["by_split"] == {"extrapolate": 1.0, "interpolate": pytest.approx(0.8)}
    # The raw directory gives the same examples as the converted one.
    assert [(e.prompt, e.answer, e.group) for e in load_examples(raw)] == \
        [(e.prompt, e.answer, e.group) for e in load_examples(tmp_path / "dm")]


def test_prompt_layout_is_the_mixins(tmp_path, tokenizer):
    from megaproc.data.prompt_answer import PromptAnswerDataset

    convert(make_raw(tmp_path / "raw", splits=("interpolate",)), tmp_path / "dm")
    path = tmp_path / "dm" / "interpolate.jsonl"
    dataset = PromptAnswerDataset(str(path), tokenizer, seq_len=64, seed=0)
    examples = load_examples(path)
    prompts = ExactMatchEvaluator(tokenizer, 128).encode_prompts(examples)
    by_prompt = {tuple(p): e for p, e in zip(prompts, examples)}
    for i in range(dataset.num_examples):
        item = dataset[i]
        assert tuple(item["tokens"][~item["answer_mask"]].tolist()) in by_prompt


def test_loader_limits_and_errors(tmp_path):
    convert(make_raw(tmp_path / "raw", splits=("interpolate",)), tmp_path / "dm")
    limited = load_examples(tmp_path / "dm" / "interpolate.jsonl", per_module=1)
    assert [e.group for e in limited] == ["interpolate/algebra__linear_1d",
                                          "interpolate/arithmetic__add_or_sub"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'answer'"):
        load_examples(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no interpolate/extrapolate"):
        load_examples(tmp_path / "empty")
    with pytest.raises(ValueError, match="not found"):
        load_examples(tmp_path / "absent")
    odd = make_raw(tmp_path / "odd", splits=("extrapolate",))
    (odd / "extrapolate" / "algebra__linear_1d.txt").write_text("q\na\nq2\n")
    with pytest.raises(ValueError, match="odd number of lines"):
        load_examples(odd)
