"""Distributed sampling over the blended dataset: a real 2-process gloo group, resume by
consumed-sample count, world-size independence, and the trainer-facing builder's errors."""

from __future__ import annotations

import os
import pickle
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megaproc.data.batch import collate, rank_sample_indices
from megaproc.data.build import build_train_valid
from tests.data.conftest import make_tokenizer, random_documents, write_indexed, write_jsonl

SEQ_LEN = 24
MICRO_BATCH, GRAD_ACCUM, STEPS = 2, 3, 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data_cfg(root) -> dict:
    """Two corpora at equal weight plus a 10% JSONL mixin, 5% of documents held out."""
    return {"train": [{"prefix": f"{root}/pubmed", "weight": 1.0},
                      {"prefix": f"{root}/uspto", "weight": 1.0}],
            "valid": [], "valid_fraction": 0.05, "blend_by": "samples",
            "mixin": f"{root}/mixin.jsonl", "mixin_percent": 0.1, "cache_dir": f"{root}/cache"}


def _make_data(root) -> dict:
    """Write the files of :func:`_data_cfg` and return it."""
    write_indexed(f"{root}/pubmed", random_documents(10, 80, min_len=5, vocab=300))
    write_indexed(f"{root}/uspto", random_documents(11, 50, min_len=5, vocab=300))
    write_jsonl(f"{root}/mixin.jsonl",
                [{"prompt": f"find {k} from {k % 5}:", "output_texts": [f" {k % 3}"]} for k in range(15)])
    return _data_cfg(root)


def _build(cfg, tokenizer, train_samples):
    return build_train_valid(cfg, tokenizer, SEQ_LEN, seed=7, train_samples=train_samples,
                             valid_samples=4)


def _rank_batches(dataset, world_size, rank, first_step, last_step, pad_id=0):
    """This rank's (indices, collated batch) for every micro-step of steps [first, last)."""
    out = []
    global_batch = MICRO_BATCH * GRAD_ACCUM * world_size
    for step in range(first_step, last_step):
        for micro in range(GRAD_ACCUM):
            idx = rank_sample_indices(step * global_batch, micro, MICRO_BATCH, world_size, rank)
            batch = collate([dataset[int(i)] for i in idx], pad_id, pad_to=SEQ_LEN + 1)
            out.append((step, micro, idx, {k: v.numpy() for k, v in batch.items()}))
    return out


def _worker(rank, world_size, port, root, result_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        cfg = _data_cfg(root)
        train, _, names = _build(cfg, make_tokenizer(), STEPS * MICRO_BATCH * GRAD_ACCUM * world_size)
        built = [bool(d.built_index) for d in train.datasets if hasattr(d, "built_index")]
        mine = _rank_batches(train, world_size, rank, 0, STEPS)
        gathered = [None] * world_size
        dist.all_gather_object(gathered, {"rank": rank, "built": built, "batches": mine, "names": names})
        if rank == 0:
            with open(result_file, "wb") as handle:
                pickle.dump(gathered, handle)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_cover_each_sample_once_in_the_single_process_order(tmp_path):
    root = str(tmp_path)
    _make_data(root)  # written once by the parent; the cache is built inside the group
    result_file = tmp_path / "result.pkl"
    mp.spawn(_worker, args=(2, _free_port(), root, str(result_file)), nprocs=2, join=True)
    with open(result_file, "rb") as handle:
        gathered = pickle.load(handle)

    # Local rank 0 built every index cache; rank 1 waited at the barrier and loaded it.
    assert all(gathered[0]["built"]) and not any(gathered[1]["built"])
    total = STEPS * MICRO_BATCH * GRAD_ACCUM * 2
    seen = np.concatenate([idx for g in gathered for (_, _, idx, _) in g["batches"]])
    assert sorted(seen.tolist()) == list(range(total))  # one epoch: every index exactly once

    # The single-process run (world size 1) sees the same samples in the same global order.
    train, _, names = _build(_data_cfg(root), make_tokenizer(), total)
    assert names == gathered[0]["names"] == ["pubmed", "uspto", "mixin"]
    by_index = {}
    for g in gathered:
        for _, _, idx, batch in g["batches"]:
            for row, i in enumerate(idx):
                by_index[int(i)] = (batch["input_ids"][row], batch["source"][row])
    single = _rank_batches(train, 1, 0, 0, 2 * STEPS)
    order = np.concatenate([idx for (_, _, idx, _) in single])
    assert order.tolist() == list(range(total))
    for _, _, idx, batch in single:
        for row, i in enumerate(idx):
            np.testing.assert_array_equal(batch["input_ids"][row], by_index[int(i)][0])
            assert batch["source"][row] == by_index[int(i)][1]


@pytest.fixture
def data_cfg(tmp_path):
    return _make_data(str(tmp_path))


def test_restored_consumed_count_yields_the_same_next_batches(data_cfg, tokenizer):
    world_size, steps, resume_at = 2, 8, 3
    total = steps * MICRO_BATCH * GRAD_ACCUM * world_size
    train, _, _ = _build(data_cfg, tokenizer, total)
    uninterrupted = {r: _rank_batches(train, world_size, r, 0, steps) for r in range(world_size)}

    # "Checkpoint" after resume_at steps: the loader state is the consumed-sample count.
    consumed = resume_at * MICRO_BATCH * GRAD_ACCUM * world_size
    state = {"consumed": consumed, "per_source": train.source_counts(consumed)}
    seen_sources = np.concatenate([b["source"] for r in range(world_size)
                                   for (step, _, _, b) in uninterrupted[r] if step < resume_at])
    assert state["per_source"] == np.bincount(seen_sources, minlength=3).tolist()

    restored, _, _ = _build(data_cfg, tokenizer, total)  # fresh objects, cache hits
    first_step = state["consumed"] // (MICRO_BATCH * GRAD_ACCUM * world_size)
    for r in range(world_size):
        resumed = _rank_batches(restored, world_size, r, first_step, steps)
        expected = [b for b in uninterrupted[r] if b[0] >= resume_at]
        assert len(resumed) == len(expected) > 0
        for (s1, m1, i1, b1), (s2, m2, i2, b2) in zip(resumed, expected):
            assert (s1, m1) == (s2, m2)
            np.testing.assert_array_equal(i1, i2)
            for key in b1:
                np.testing.assert_array_equal(b1[key], b2[key])

    # Resuming at a different world size continues from the same global position.
    after = sorted(np.concatenate([i for r in range(world_size)
                                   for (s, _, i, _) in uninterrupted[r] if s == resume_at]).tolist())
    one_rank = rank_sample_indices(consumed, 0, MICRO_BATCH * GRAD_ACCUM * world_size, 1, 0)
    assert after == one_rank.tolist()


def test_interleaved_corpora_without_mixin(tmp_path, tokenizer):
    # "PubMed interleaved with USPTO": two corpora at equal weight alternate sample by sample.
    cfg = _make_data(str(tmp_path))
    cfg.update(mixin=None, mixin_percent=0.0, valid_fraction=0.0)
    train, valid, names = _build(cfg, tokenizer, 100)
    assert names == ["pubmed", "uspto"] and valid is None
    assert np.asarray(train.dataset_index[:10]).tolist() == [0, 1] * 5
    assert {train[i]["source"] for i in range(10)} == {0, 1}


def test_builder_errors_name_the_problem(tmp_path, tokenizer):
    cfg = _make_data(str(tmp_path))
    cfg["train"].append({"prefix": str(tmp_path / "missing"), "weight": 1.0})
    with pytest.raises(FileNotFoundError, match="missing"):
        _build(cfg, tokenizer, 10)
    cfg = _make_data(str(tmp_path))
    cfg["valid"] = [str(tmp_path / "nowhere")]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _build(cfg, tokenizer, 10)
    cfg = _make_data(str(tmp_path))
    cfg["mixin"] = str(tmp_path / "absent.jsonl")
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        _build(cfg, tokenizer, 10)
    write_indexed(tmp_path / "onedoc", [np.arange(100)])
    cfg = {"train": [str(tmp_path / "onedoc")], "valid_fraction": 0.5}
    with pytest.raises(ValueError, match="onedoc"):
        _build(cfg, tokenizer, 10)
    cfg = _make_data(str(tmp_path))
    cfg["blend_by"] = "bytes"
    with pytest.raises(ValueError, match="blend_by"):
        _build(cfg, tokenizer, 10)


def test_separate_valid_prefixes(tmp_path, tokenizer):
    cfg = _make_data(str(tmp_path))
    write_indexed(tmp_path / "heldout", random_documents(12, 20, min_len=30, vocab=300))
    cfg["valid"] = [str(tmp_path / "heldout")]
    _, valid, _ = _build(cfg, tokenizer, 50)
    assert len(valid) == 4 and valid.source_names == ["heldout"]
    assert all(len(valid[i]["tokens"]) == SEQ_LEN + 1 for i in range(4))
    assert torch.is_tensor(collate([valid[i] for i in range(4)], 0)["source"])
