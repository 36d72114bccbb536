"""Answer correctness: sample layout, teacher-forced checks equal real greedy decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megaproc.data.batch import IGNORE_INDEX
from megaproc.data.prompt_answer import PromptAnswerEncoder, collate_prompt_answer
from megaproc.eval.answer_correctness import (teacher_forced_correct, text_matches_answer,
                                              word_continuation_table)
from megaproc.eval.task_accuracy import HeldoutEvaluator


def test_sample_layout_matches_the_jsonl_mixin(tokenizer, tmp_path):
    import json

    from megaproc.data.prompt_answer import PromptAnswerDataset

    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"prompt": "If Ann is wumpy, then Ann is gorpy. Ann is",
                                "output_texts": [" gorpy.", " other."]}) + "\n")
    mixin = PromptAnswerDataset(str(path), tokenizer, seq_len=64)[0]
    sample = PromptAnswerEncoder(tokenizer).encode_pairs([("If Ann is wumpy, then Ann is gorpy. Ann is",
                                                   " gorpy.")])[0]
    assert np.array_equal(sample["tokens"], mixin["tokens"])
    assert np.array_equal(sample["answer_mask"], mixin["answer_mask"])
    answer_ids = tokenizer(" gorpy.", add_special_tokens=False)["input_ids"]
    assert sample["tokens"][sample["word_mask"]].tolist() == answer_ids
    assert not sample["boundary_mask"].any()            # "." closes the word
    symbolic = PromptAnswerEncoder(tokenizer).encode_pairs([("7 1 2 9 1 2 6 1", " 2")])[0]
    assert symbolic["boundary_mask"].sum() == 1 and symbolic["tokens"][symbolic["boundary_mask"]][0] == tokenizer.eos_token_id


def test_teacher_forced_check_needs_every_answer_token_and_a_word_boundary():
    vocab = 6
    labels = torch.tensor([[1, 2, 3, 0], [1, 2, 3, 0], [1, 2, 3, 0], [1, 2, IGNORE_INDEX, IGNORE_INDEX]])
    word = torch.tensor([[0, 1, 1, 0]] * 3 + [[0, 0, 0, 0]], dtype=torch.bool)
    boundary = torch.tensor([[0, 0, 0, 1]] * 4, dtype=torch.bool)
    predicted = torch.tensor([[9, 2, 3, 0], [9, 2, 4, 0], [9, 2, 3, 5], [1, 2, 0, 0]]) % vocab
    logits = torch.nn.functional.one_hot(predicted, vocab).float()
    continues = torch.tensor([False, False, False, False, False, True])   # token 5 extends a word
    result = teacher_forced_correct(logits, labels, word, boundary, continues)
    assert result.tolist() == [True, False, False, False]
    assert teacher_forced_correct(logits, labels, word).tolist() == [True, False, True, False]


def test_text_rule():
    assert text_matches_answer(" gorpy. Ann", " gorpy.")
    assert text_matches_answer(" 12", " 12") and text_matches_answer(" 12 5", " 12")
    assert not text_matches_answer(" 123", " 12") and not text_matches_answer(" 1", " 12")


@pytest.mark.parametrize("vocabulary", ["bpe", "symbolic"])
def test_heldout_accuracy_equals_free_running_greedy_decoding(tokenizer, vocabulary):
    """For a random model, the evaluator's verdict on every candidate answer equals greedy
    generation followed by the full-word text rule (on canonically tokenized candidates), with
    the built-in BPE and with the word-level task vocabulary (texts decoded after the prompt:
    the task vocabulary joins words with spaces)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from megaproc.task_vocab import symbolic_tokenizer

    tokenizer = symbolic_tokenizer(26) if vocabulary == "symbolic" else tokenizer
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_head=2, n_embd=32,
                                       n_positions=128)).eval()
    encoder = PromptAnswerEncoder(tokenizer)
    prompts = [f"7 {a} {b} 7 {b} {c} 9 {a} {c} 6 {a}" for a, b, c in
               [(1, 2, 3), (4, 5, 6), (3, 1, 2), (6, 4, 1), (2, 3, 5), (5, 6, 4), (1, 5, 2), (3, 6, 4)]]
    records, expected = [], []
    table = word_continuation_table(tokenizer)
    for prompt in prompts:
        head = [tokenizer.bos_token_id] * (tokenizer.bos_token_id is not None) + \
            encoder.encode_texts([prompt])[0]
        out = model.generate(torch.tensor([head]), max_new_tokens=4, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)[0, len(head):].tolist()

        def after_prompt(ids):
            return tokenizer.decode(head + ids)[len(tokenizer.decode(head)):]

        continuation = after_prompt(out)
        candidates = []
        for k in (1, 2, 3):
            text = after_prompt(out[:k])
            canonical = encoder.encode_texts([text])[0] == out[:k]
            if canonical and not set(out[:k]) & set(tokenizer.all_special_ids):
                candidates.append(text)
        candidates.append(" zzzq")
        for text in candidates:
            records.append({"prompt": prompt, "output_texts": [text]})
            expected.append(text_matches_answer(continuation, text))
    assert any(expected) and not all(expected)
    assert table.any() == (vocabulary == "bpe")  # no task token continues a word
    evaluator = HeldoutEvaluator(records, tokenizer, max_tokens=128, batch_size=5)
    result = evaluator.run(lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits)
    assert evaluator.last_correct.tolist() == expected
    assert result["num_examples"] == len(records)
    assert result["heldout_acc"] == sum(expected) / len(expected)
    # several valid answers: correct when any of them is the greedy answer
    multi = [{"prompt": r["prompt"], "output_texts": [" zzzq", r["output_texts"][0]]}
             for r, ok in zip(records, expected) if ok]
    evaluator = HeldoutEvaluator(multi, tokenizer, max_tokens=128, batch_size=3)
    assert evaluator.run(lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits)[
        "heldout_acc"] == 1.0


def test_collate_aligns_masks_with_labels(tokenizer):
    samples = PromptAnswerEncoder(tokenizer).encode_pairs([("7 1 2 6 1", " 2"), ("a longer prompt here", " 5")])
    batch = collate_prompt_answer(samples, tokenizer.pad_token_id)
    for row, sample in enumerate(samples):
        labels = batch["labels"][row]
        assert labels[batch["word_mask"][row]].tolist() == sample["tokens"][sample["word_mask"]].tolist()
        assert labels[batch["boundary_mask"][row]].tolist() == [tokenizer.eos_token_id]
