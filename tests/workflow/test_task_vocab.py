"""The task vocabulary (``task.tokenizer: symbolic``, megaproc/task_vocab.py): one token per
symbol, saved and loaded like any tokenizer, the word-boundary rule, the config checks."""

from __future__ import annotations

import warnings

import pytest
import torch

from megaproc.config import ConfigError, load_config
from megaproc.data.prompt_answer import PromptAnswerEncoder, is_word_character
from megaproc.eval.answer_correctness import word_continuation_table
from megaproc.synthetic import GraphSearchGenerator
from megaproc.task_vocab import symbolic_tokenizer, task_tokenizer
from megaproc.tokenizer import load_tokenizer, pad_id

N = 26  # V = 7 vertex ids, specials PATH 8, EDGE 9, PAD 10, QUERY 11


def examples(count: int = 40, n: int = N):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generator = GraphSearchGenerator(n, 3, seed=5, natural_language=False)
    found = (generator.example(index, 3) for index in range(4 * count))
    return [e for e in found if e is not None][:count]


@pytest.mark.parametrize("n", [N, 98])
def test_one_token_per_symbol_with_the_generator_ids(n):
    tokenizer = symbolic_tokenizer(n)
    v = (n - 5) // 3
    assert len(tokenizer) == v + 5 + 3  # ids 0..V+4, then eos, pad, unk
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id) == \
        (v + 5, v + 6, None)
    encoder = PromptAnswerEncoder(tokenizer)
    for example in examples(n=n):
        sample = encoder.encode_pairs([(example.prompt, example.output_texts[0])])[0]
        # The generator's own symbolic input (left-padded with PAD = V+3), unpadded.
        unpadded = example.tokens[next(i for i, t in enumerate(example.tokens) if t != v + 3):]
        assert sample["tokens"].tolist() == unpadded + [example.answers[0], v + 5]
        assert sample["word_mask"].sum() == 1 and sample["boundary_mask"].sum() == 1
    assert tokenizer("2 999", add_special_tokens=False)["input_ids"] == [2, tokenizer.unk_token_id]


def test_saved_like_any_tokenizer_and_loaded_back(tmp_path):
    tokenizer = symbolic_tokenizer(N)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = load_tokenizer(tmp_path / "tokenizer")
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.eos_token_id, pad_id(loaded)) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    texts = [e.prompt for e in examples(8)] + [" 5", " 7"]
    assert PromptAnswerEncoder(loaded).encode_texts(texts) == PromptAnswerEncoder(tokenizer).encode_texts(texts)


def test_no_symbol_continues_the_previous_word(tokenizer):
    """Word-level tokens decode as separate words ("3 5"), so no task token extends an answer
    (each one alone decodes to digits, which the single-token rule took for a continuation); for
    the byte-level BPE, whose tokens decode to their own text anywhere, the table is unchanged."""
    symbolic = symbolic_tokenizer(N)
    assert not word_continuation_table(symbolic).any()
    assert symbolic.decode([3, 5]) == "3 5" and symbolic.decode([5]) == "5"
    table = word_continuation_table(tokenizer)
    special = set(tokenizer.all_special_ids)
    alone = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    expected = [i not in special and bool(t) and is_word_character(t[0]) for i, t in enumerate(alone)]
    assert table.tolist() == expected and table.any() and not table.all()


def test_config_selects_and_checks_the_task_vocabulary(tokenizer, tmp_path):
    from megaproc.runs import resolve, run_kind

    base = ["task.kind=graph_search", "task.natural_language=false", "task.max_input_size=26"]
    cfg = resolve(load_config(None, base + ["task.tokenizer=symbolic"]))
    kind = run_kind(cfg)
    assert kind.build_tokenizer().get_vocab() == symbolic_tokenizer(N).get_vocab()
    assert cfg.data.tokenizer is None  # the task vocabulary, not the built-in tokenizer
    assert task_tokenizer(load_config(None, base).task) is None
    # A resume across a tokenizer change is refused: the data fingerprint holds the vocabulary.
    assert kind.data_fingerprint(task_tokenizer(cfg.task)) != kind.data_fingerprint(tokenizer)
    with pytest.raises(ConfigError, match="'task.tokenizer'"):     # natural language
        resolve(load_config(None, ["task.kind=graph_search", "task.tokenizer=symbolic"]))
    with pytest.raises(ConfigError, match="'data.tokenizer'"):
        resolve(load_config(None, base + ["task.tokenizer=symbolic", f"data.tokenizer={tmp_path}"]))
    with pytest.raises(ConfigError, match="'task.tokenizer'"):     # an lm run
        resolve(load_config(None, ["task.tokenizer=symbolic"]))
    with pytest.raises(ConfigError, match="'task.tokenizer' must be one of"):
        load_config(None, base + ["task.tokenizer=bpe"])


def test_batch_of_the_task_vocabulary_is_shorter_than_bpe(tokenizer):
    """The point of the vocabulary: every vertex id is one token (the built-in BPE splits some)."""
    pairs = [(e.prompt, e.output_texts[0]) for e in examples()]
    symbolic = PromptAnswerEncoder(symbolic_tokenizer(N)).encode_pairs(pairs)
    bpe = PromptAnswerEncoder(tokenizer).encode_pairs(pairs)
    assert all(len(s["tokens"]) == len(p.split()) + 2 for s, (p, _) in zip(symbolic, pairs))
    assert sum(len(s["tokens"]) for s in symbolic) < sum(len(s["tokens"]) for s in bpe)
    assert torch.tensor([s["word_mask"].sum() for s in symbolic]).eq(1).all()
