"""Data order is a function of the seed and the data alone, never of the planned run length.

A resume with a larger ``train.max_steps`` rebuilds the datasets for more samples; the samples
already planned must not change.  So a GPTDataset, a blend (with and without the JSONL mixin,
weighted by samples or by tokens) and the trainer-facing ``build_train_valid`` built for ``N``
samples and for ``2N`` agree exactly on their first ``N`` samples, and no source wraps around
before the blend has used all of it.
"""

from __future__ import annotations

import numpy as np
import pytest

from megaproc.data.build import build_train_valid
from megaproc.data.gpt_dataset import GPTDataset
from tests.data.conftest import random_documents, write_indexed, write_jsonl

# A realistic global batch: micro batch 8 x grad accum 4 x 2 ranks.
GLOBAL_BATCH = 8 * 4 * 2
SEQ_LEN = 32


def naive_stream(indexed, document_index) -> np.ndarray:
    """All tokens of the documents concatenated in ``document_index`` order."""
    return np.concatenate([np.asarray(indexed.get(s), dtype=np.int64)
                           for doc in document_index
                           for s in range(int(indexed.document_indices[doc]),
                                          int(indexed.document_indices[doc + 1]))])


def same_samples(a, b, count: int) -> None:
    """Samples ``0..count-1`` of ``a`` and ``b`` are identical, every field."""
    for i in range(count):
        left, right = a[i], b[i]
        assert left.keys() == right.keys(), i
        for key in left:
            np.testing.assert_array_equal(left[key], right[key], err_msg=f"sample {i}, {key}")


# ----------------------------------------------------------------------------- GPTDataset
@pytest.mark.parametrize("docs", [120, 400])  # 600 samples end in epoch 2 / inside epoch 1
@pytest.mark.parametrize("add_extra_token", [True, False])
def test_gpt_dataset_for_300_and_600_samples_share_the_first_300(tmp_path, docs, add_extra_token):
    indexed = write_indexed(tmp_path / "d", random_documents(0, docs, min_len=5))
    kwargs = dict(seed=11, add_extra_token=add_extra_token)
    small = GPTDataset(indexed, 8, 300, cache_dir=str(tmp_path / "c"), **kwargs)
    large = GPTDataset(indexed, 8, 600, cache_dir=str(tmp_path / "c"), **kwargs)
    fresh = GPTDataset(indexed, 8, 600, cache_dir=str(tmp_path / "fresh"), **kwargs)
    assert len(small) == 300 and len(large) == 600
    same_samples(small, large, 300)
    same_samples(large, fresh, 600)
    # The small one rebuilt after the large one (same cache directory) still agrees.
    again = GPTDataset(indexed, 8, 300, cache_dir=str(tmp_path / "c"), **kwargs)
    same_samples(again, large, 300)


@pytest.mark.parametrize("add_extra_token", [True, False])
def test_epochs_are_served_whole_and_in_order(tmp_path, add_extra_token):
    """Sample ``s`` of the token stream is its ``seq_len`` tokens from ``s * seq_len`` (plus the
    extra token); it belongs to the epoch holding its last token.  The dataset serves epoch 0's
    samples (a permutation of them), then epoch 1's, ... whatever number was requested."""
    seq_len = 8
    length = seq_len + int(add_extra_token)
    documents = random_documents(1, 60, min_len=3)
    indexed = write_indexed(tmp_path / "d", documents)
    tokens_per_epoch = sum(len(d) for d in documents)
    ends = np.arange(1, 100) * tokens_per_epoch  # where each epoch's tokens end
    bounds = np.concatenate([[0], (ends - int(add_extra_token)) // seq_len])  # samples before epoch e
    for requested in (50, 130, 333, None):
        ds = GPTDataset(indexed, seq_len, requested, seed=2, cache_dir=str(tmp_path / "c"),
                        add_extra_token=add_extra_token)
        stream = naive_stream(indexed, ds.document_index)
        where: dict[tuple, list[int]] = {}  # sample tokens -> stream sample positions
        for s in range(int(bounds[ds.num_epochs])):
            where.setdefault(tuple(stream[s * seq_len:s * seq_len + length].tolist()), []).append(s)
        # A window inside one document can recur in a later epoch at the same offset; taking
        # the earliest unused position is then the right match when epochs are served in order.
        positions = [where[tuple(ds[i]["tokens"].tolist())].pop(0) for i in range(len(ds))]
        epochs = np.searchsorted(bounds, positions, side="right") - 1
        assert np.all(np.diff(epochs) >= 0), "an epoch started before the previous one ended"
        for e in range(int(epochs[-1])):  # every completed epoch was served exactly once
            served = sorted(p for p, pe in zip(positions, epochs) if pe == e)
            assert served == list(range(int(bounds[e]), int(bounds[e + 1])))
        if requested is None:
            assert len(ds) == bounds[1]


def test_more_epochs_in_the_same_cache_directory_get_fresh_arrays(tmp_path):
    indexed = write_indexed(tmp_path / "d", random_documents(2, 30, min_len=5))
    cache = str(tmp_path / "c")
    per_epoch = len(GPTDataset(indexed, 8, None, seed=0, cache_dir=cache))
    one = GPTDataset(indexed, 8, per_epoch // 2, seed=0, cache_dir=cache)
    many = GPTDataset(indexed, 8, 5 * per_epoch + 3, seed=0, cache_dir=cache)
    # As few whole epochs as hold the requested samples (samples may span epoch ends).
    tokens = int(indexed.sequence_lengths.sum())
    epochs = next(e for e in range(1, 10) if (e * tokens - 1) // 8 >= 5 * per_epoch + 3)
    assert many.built_index and many.num_epochs == epochs and one.num_epochs == 1
    assert len(many) == 5 * per_epoch + 3
    stream = naive_stream(indexed, many.document_index)
    windows = {tuple(stream[s * 8:s * 8 + 9].tolist()) for s in range(len(stream) // 8)}
    assert all(tuple(many[i]["tokens"].tolist()) in windows for i in range(len(many)))
    same_samples(one, many, len(one))
    back = GPTDataset(indexed, 8, per_epoch // 2, seed=0, cache_dir=cache)
    assert not back.built_index and back.num_epochs == 1
    same_samples(back, one, len(one))


# ----------------------------------------------------------------------------- build_train_valid
def _corpora(root, mixin_examples: int = 150) -> dict:
    write_indexed(f"{root}/web", random_documents(20, 300, min_len=5, vocab=300))
    write_indexed(f"{root}/code", random_documents(21, 120, min_len=5, vocab=300))
    write_jsonl(f"{root}/mixin.jsonl",
                [{"prompt": f"path {k} from {k % 7} to {k % 5}:", "output_texts": [f" {k % 3}"]}
                 for k in range(mixin_examples)])
    return {"train": [{"prefix": f"{root}/web", "weight": 0.7}, {"prefix": f"{root}/code", "weight": 0.3}],
            "valid": [], "valid_fraction": 0.05}


@pytest.mark.parametrize("blend_by", ["samples", "tokens"])
@pytest.mark.parametrize("with_mixin", [False, True])
def test_eight_and_sixteen_steps_share_the_first_eight(tmp_path, tokenizer, blend_by, with_mixin):
    cfg = _corpora(tmp_path)
    cfg.update(blend_by=blend_by, cache_dir=str(tmp_path / "cache"))
    if with_mixin:
        cfg.update(mixin=str(tmp_path / "mixin.jsonl"), mixin_percent=0.1)
    short, short_valid, names = build_train_valid(cfg, tokenizer, SEQ_LEN, 5, 8 * GLOBAL_BATCH, 32)
    long, long_valid, long_names = build_train_valid(cfg, tokenizer, SEQ_LEN, 5, 16 * GLOBAL_BATCH, 32)
    assert names == long_names == ["web", "code"] + (["mixin"] if with_mixin else [])
    assert len(short) == 8 * GLOBAL_BATCH and len(long) == 16 * GLOBAL_BATCH
    same_samples(short, long, len(short))
    same_samples(short_valid, long_valid, 32)
    assert short.source_counts(len(short)) == long.source_counts(len(short))
    if with_mixin:
        assert 0 < short.source_counts(len(short))[2]


@pytest.mark.parametrize("blend_by", ["samples", "tokens"])
@pytest.mark.parametrize("weights", [(0.7, 0.3), (1.0, 0.001), (0.01, 1.0)])
def test_no_source_wraps_before_the_blend_ends(tmp_path, tokenizer, blend_by, weights):
    cfg = _corpora(tmp_path, mixin_examples=30)
    cfg["train"] = [dict(entry, weight=w) for entry, w in zip(cfg["train"], weights)]
    cfg.update(blend_by=blend_by, mixin=str(tmp_path / "mixin.jsonl"), mixin_percent=0.2,
               cache_dir=str(tmp_path / "cache"))
    train, _, _ = build_train_valid(cfg, tokenizer, SEQ_LEN, 5, 16 * GLOBAL_BATCH, 32)
    counts = train.source_counts(len(train))
    for j, source in enumerate(train.datasets):
        assert counts[j] <= len(source), (train.source_names[j], counts[j], len(source))


# ----------------------------------------------------------------------------- token-weighted mixin
def test_token_weighted_mixin_walks_the_whole_file_before_repeating(tmp_path, tokenizer):
    examples = 80
    cfg = _corpora(tmp_path, mixin_examples=examples)
    cfg.update(blend_by="tokens", mixin=str(tmp_path / "mixin.jsonl"), mixin_percent=0.1,
               cache_dir=str(tmp_path / "cache"))
    train_samples = 8 * GLOBAL_BATCH
    train, _, _ = build_train_valid(cfg, tokenizer, SEQ_LEN, 5, train_samples, 8)
    served = [train[i] for i in range(train_samples)]
    mixin = [tuple(s["tokens"].tolist()) for s in served if s["source"] == 2]
    # Mixin examples are much shorter than a corpus sample, so by tokens the mixin gets far
    # more than 10% of the samples: more than one pass over the file.
    assert len(mixin) > examples
    assert len(set(mixin[:examples])) == examples  # the first pass: every example, once each
    tokens = np.array([len(s["tokens"]) for s in served], dtype=np.float64)
    is_mixin = np.array([s["source"] == 2 for s in served])
    assert tokens[is_mixin].sum() / tokens.sum() == pytest.approx(0.1, abs=0.01)


def test_token_weighted_mixin_distinct_for_any_prefix_of_the_first_pass(tmp_path, tokenizer):
    examples = 200  # more than the mixin gets: every served mixin example is new
    cfg = _corpora(tmp_path, mixin_examples=examples)
    cfg.update(blend_by="tokens", mixin=str(tmp_path / "mixin.jsonl"), mixin_percent=0.05,
               cache_dir=str(tmp_path / "cache"))
    train, _, _ = build_train_valid(cfg, tokenizer, SEQ_LEN, 5, 4 * GLOBAL_BATCH, 8)
    mixin = [tuple(train[i]["tokens"].tolist()) for i in range(len(train)) if train[i]["source"] == 2]
    assert 0 < len(mixin) <= examples
    assert len(set(mixin)) == len(mixin)
