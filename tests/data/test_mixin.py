"""PromptAnswerDataset: too-long examples dropped with a count, answer masks, deterministic cycling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from megaproc.data.build import build_train_valid
from megaproc.data.prompt_answer import PromptAnswerDataset
from tests.data.conftest import random_documents, write_indexed, write_jsonl


def graph_records(count: int, long_every: int = 0):
    out = []
    for k in range(count):
        words = " ".join(["alpha beta gamma"] * (40 if long_every and k % long_every == 0 else 1))
        out.append({"prompt": f"graph {k}: {words} find the path from 1 to {k % 7}.",
                    "output_texts": ["", f" {k % 10}", " other"], "lookahead": 1})
    return out


def test_drops_too_long_examples_with_count_and_warning(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "mixin.jsonl", graph_records(30, long_every=5))
    with pytest.warns(UserWarning, match="dropped 6 examples"):
        ds = PromptAnswerDataset(path, tokenizer, seq_len=40)
    assert ds.num_dropped == 6 and ds.num_examples == 24 and len(ds) == 24
    assert isinstance(ds.offsets, np.ndarray) and ds.offsets.dtype == np.int64
    for i in range(len(ds)):
        assert len(ds[i]["tokens"]) <= 41


def test_answer_mask_marks_first_valid_answer_and_eos(tmp_path, tokenizer):
    records = graph_records(5)
    path = write_jsonl(tmp_path / "mixin.jsonl", records)
    ds = PromptAnswerDataset(path, tokenizer, seq_len=64)
    for i in range(5):
        item = ds[i]
        k = ds.example_index(i)
        tokens, mask = item["tokens"], item["answer_mask"]
        assert tokens.dtype == np.int64 and mask.dtype == bool and mask.shape == tokens.shape
        assert item["length"] == len(tokens)
        assert tokens[0] == tokenizer.bos_token_id and tokens[-1] == tokenizer.eos_token_id
        answer = tokenizer.decode(tokens[mask][:-1].tolist())
        prompt = tokenizer.decode(tokens[1:][~mask[1:]].tolist())
        assert answer == records[k]["output_texts"][1]  # first non-empty answer
        assert prompt == records[k]["prompt"]
        assert mask[-1] and not mask[0]
        assert np.all(np.diff(mask.astype(int)) >= 0)  # prompt first, then answer


def test_prompt_answer_records_and_invalid_lines(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "qa.jsonl", [
        {"prompt": "1 + 1 =", "answer": " 2"},
        {"prompt": "no answer here"},
        {"prompt": "2 + 2 =", "answer": " 4"},
    ])
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = PromptAnswerDataset(path, tokenizer, seq_len=32)
    assert ds.num_examples == 2 and ds.num_invalid == 1
    answers = sorted(tokenizer.decode(ds[i]["tokens"][ds[i]["answer_mask"]][:-1].tolist()) for i in range(2))
    assert answers == [" 2", " 4"]


def test_cycles_with_a_fresh_seeded_permutation_each_pass(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "mixin.jsonl", graph_records(12))
    ds = PromptAnswerDataset(path, tokenizer, seq_len=64, seed=3, num_samples=48)
    assert len(ds) == 48
    passes = [[ds.example_index(e * 12 + k) for k in range(12)] for e in range(4)]
    for order in passes:
        assert sorted(order) == list(range(12))
    assert len({tuple(p) for p in passes}) == 4
    again = PromptAnswerDataset(path, tokenizer, seq_len=64, seed=3)
    other = PromptAnswerDataset(path, tokenizer, seq_len=64, seed=4)
    assert [again.example_index(i) for i in range(48)] == [p for order in passes for p in order]
    assert [other.example_index(i) for i in range(12)] != passes[0]
    np.testing.assert_array_equal(ds[30]["tokens"], again[30]["tokens"])
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[17]["tokens"], ds[17]["tokens"])


def test_missing_or_empty_file_is_a_clear_error(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        PromptAnswerDataset(tmp_path / "nope.jsonl", tokenizer, seq_len=16)
    path = write_jsonl(tmp_path / "long.jsonl", graph_records(3, long_every=1))
    with pytest.raises(ValueError, match="no usable examples"):
        with pytest.warns(UserWarning):
            PromptAnswerDataset(path, tokenizer, seq_len=8)


def test_mixin_is_one_blend_source_at_its_percent(tmp_path, tokenizer):
    prefix = tmp_path / "corpus"
    write_indexed(prefix, random_documents(0, 60, min_len=10, vocab=300))
    mixin = write_jsonl(tmp_path / "mixin.jsonl", graph_records(20))
    cfg = {"train": [str(prefix)], "valid": [], "valid_fraction": 0.1, "blend_by": "samples",
           "mixin": str(mixin), "mixin_percent": 0.05, "cache_dir": str(tmp_path / "cache")}
    train, valid, names = build_train_valid(cfg, tokenizer, seq_len=48, seed=1,
                                            train_samples=400, valid_samples=8)
    assert names == ["corpus", "mixin"]
    assert train.source_counts(400) == [380, 20]
    mixed = [train[i] for i in range(400) if train[i]["source"] == 1]
    assert len(mixed) == 20 and all("answer_mask" in s and s["answer_mask"].any() for s in mixed)
    assert [i for i in range(40) if train.dataset_index[i] == 1] == [10, 30]
    assert valid is not None and len(valid) == 8
    assert {valid[i]["source"] for i in range(8)} == {0}


def test_indexed_prefix_mixin(tmp_path, tokenizer):
    corpus, synth = tmp_path / "corpus", tmp_path / "synth"
    write_indexed(corpus, random_documents(1, 40, min_len=10))
    write_indexed(synth, random_documents(2, 40, min_len=10))
    cfg = {"train": [{"prefix": str(corpus), "weight": 1.0}], "mixin": str(synth),
           "mixin_percent": 0.25, "valid_fraction": 0.0}
    train, valid, names = build_train_valid(cfg, tokenizer, 16, 0, 100, 4)
    assert names == ["corpus", "mixin"] and valid is None
    assert train.source_counts(100) == [75, 25]
    assert len(train[3]["tokens"]) == 17


def test_concurrent_reads_from_prefetch_threads(tmp_path, tokenizer):
    # The trainer's loader prefetches on a thread while the main thread may also read.
    from concurrent.futures import ThreadPoolExecutor

    path = write_jsonl(tmp_path / "mixin.jsonl", graph_records(40))
    ds = PromptAnswerDataset(path, tokenizer, seq_len=64, num_samples=400)
    expected = [PromptAnswerDataset(path, tokenizer, seq_len=64)[i % 40]["tokens"] for i in range(40)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: ds[i]["tokens"], range(400)))
    for i in range(40):
        np.testing.assert_array_equal(results[i], expected[i])
    assert all(len(r) == ds.lengths[ds.example_index(i)] for i, r in enumerate(results))
