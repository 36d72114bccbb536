"""Classification batch source: checkpointed order (torchtitan-style), epochs as permutations
independent of world size, batch format, and the sharded evaluation over a 2-rank gloo group."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megaproc.checkpoint import ResumeError
from megaproc.data.batch import rank_sample_indices
from megaproc.data.classify_source import ClassifyBatchSource
from megaproc.synthetic.boolean_data import make_splits

TRAIN, TEST = 30, 14
MICRO, ACCUM = 4, 2


def encoded_splits(length: int = 10):
    splits = make_splits("fn_a", length, TRAIN, TEST, seed=11)
    enc = lambda seq: [2] + [int(c) for c in seq]          # BOS + bits, as from scratch
    return ([(enc(s), y) for s, y in splits.train], [(enc(s), y) for s, y in splits.test])


def make_source(world_size=1, rank=0, seed=5, micro=MICRO, accum=ACCUM, data=None):
    train, test = data or encoded_splits()
    return ClassifyBatchSource(train, test, micro, accum, world_size, rank, seed, pad_id=2,
                               dataset_id="fn_a|test")


def take_steps(source, steps):
    """Every micro-batch of ``steps`` optimizer steps (advancing after each step)."""
    out = []
    for _ in range(steps):
        for micro_step in range(source.grad_accum):
            out.append(source.micro_batch_at(micro_step))
        source.advance()
    return out


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_checkpoint_resume_continues_the_order():
    # torchtitan's test_dataset_checkpointing: take 40 batches, save, rebuild, compare the next 8.
    source = make_source()
    take_steps(source, 40 // ACCUM)
    state = source.state_dict()
    expected = take_steps(source, 8 // ACCUM)
    rebuilt = make_source()
    rebuilt.load_state_dict(state)
    got = take_steps(rebuilt, 8 // ACCUM)
    assert len(got) == 8
    for a, b in zip(expected, got):
        assert_same(a, b)
    assert rebuilt.consumed == source.consumed == (40 + 8) * MICRO


def global_order(world_size, micro, accum, steps, seed=5):
    """Training examples in global order, assembled from every rank's batches."""
    sources = [make_source(world_size, r, seed, micro, accum) for r in range(world_size)]
    order = []
    for _ in range(steps):
        for micro_step in range(accum):
            for src in sources:
                batch = src.micro_batch_at(micro_step)
                order += [tuple(row.tolist()) for row in batch["input_ids"]]
        for src in sources:
            src.advance()
    return order


def test_epochs_are_permutations_independent_of_world_size_and_batch():
    train, _ = encoded_splits()
    everything = sorted(tuple(ids) for ids, _ in train)
    one = global_order(1, MICRO, ACCUM, steps=15)                 # 120 samples = 4 epochs
    for epoch in range(4):
        assert sorted(one[epoch * TRAIN:(epoch + 1) * TRAIN]) == everything
    assert one[:TRAIN] != one[TRAIN:2 * TRAIN]                    # a new order each epoch
    two = global_order(2, 3, 1, steps=20)                         # 120 samples
    three = global_order(3, 2, 2, steps=10)
    assert one == two == three
    assert global_order(1, MICRO, ACCUM, steps=15, seed=6) != one
    # the order of an epoch does not depend on how many epochs the run has (or had)
    later = make_source()
    later.load_state_dict({"consumed_samples": 2 * TRAIN, "train_size": TRAIN, "order_seed": 5,
                           "dataset": "fn_a|test"})
    assert later.example_index(2 * TRAIN) == make_source().example_index(2 * TRAIN)


def test_rank_slices_follow_rank_sample_indices():
    sources = [make_source(2, r) for r in range(2)]
    for src in sources:
        take_steps(src, 3)
    for r, src in enumerate(sources):
        batch = src.micro_batch_at(1)
        indices = rank_sample_indices(src.consumed, 1, MICRO, 2, r)
        train = src.examples["train"]
        expected = [train[src.example_index(i)] for i in indices]
        assert [row[:11].tolist() for row in batch["input_ids"]] == [ids for ids, _ in expected]
        assert batch["labels"].tolist() == [float(y) for _, y in expected]


def test_resume_with_another_world_size():
    two = [make_source(2, r) for r in range(2)]
    for src in two:
        take_steps(src, 4)
    state = two[0].state_dict()
    single = make_source(1, 0, micro=2 * MICRO)                  # same global batch
    single.load_state_dict(state)
    merged = []
    for micro_step in range(ACCUM):
        merged += [torch.cat([src.micro_batch_at(micro_step)["input_ids"] for src in two])]
    got = [single.micro_batch_at(m)["input_ids"] for m in range(ACCUM)]
    for a, b in zip(merged, got):
        assert torch.equal(a, b)


def test_batch_format_and_padding():
    train, test = encoded_splits()
    train = [(ids[:5], y) if i % 3 == 0 else (ids, y) for i, (ids, y) in enumerate(train)]
    source = make_source(data=(train, test))
    batch = source.micro_batch_at(0)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "source"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (MICRO, 11)
    assert batch["input_ids"].dtype == torch.int64 and batch["attention_mask"].dtype == torch.int64
    assert batch["labels"].dtype == torch.float32 and set(batch["labels"].tolist()) <= {0.0, 1.0}
    assert torch.equal(batch["source"], torch.zeros(MICRO, dtype=torch.int64))
    for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any() and (row[n:] == 2).all()   # right padding


def test_refuses_other_data_on_resume():
    state = make_source().state_dict()
    with pytest.raises(ResumeError, match="other classification data.*order_seed: 5 -> 6"):
        make_source(seed=6).load_state_dict(state)


def parity_logits(input_ids, attention_mask):
    """Perfect fn_a classifier on BOS + bits: +3 for odd parity, -3 for even."""
    bits = (input_ids == 1) & attention_mask.bool()
    return (bits.sum(dim=1) % 2).float() * 6 - 3


def counting_logits(calls):
    def fn(input_ids, attention_mask):
        calls.append(input_ids.shape[0])
        return torch.zeros(input_ids.shape[0])
    return fn


def test_evaluate_single_process():
    source = make_source()
    perfect = source.evaluate(parity_logits, "test", batch_size=4)
    assert perfect["accuracy"] == 1.0 and perfect["num_examples"] == TEST
    assert perfect["loss"] == pytest.approx(math.log1p(math.exp(-3)))
    calls = []
    chance = source.evaluate(counting_logits(calls), "train", batch_size=4)
    assert chance["accuracy"] == 0.5 and chance["loss"] == pytest.approx(math.log(2))
    assert calls == [4] * math.ceil(TRAIN / 4)
    assert set(source.evaluate_all(parity_logits, 8)) == {"train_loss", "train_acc", "test_loss",
                                                         "test_acc"}


def _eval_worker(rank, world_size, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        source = make_source(world_size, rank)
        calls = []
        chance = source.evaluate(counting_logits(calls), "test", batch_size=4)
        perfect = source.evaluate(parity_logits, "train", batch_size=4)
        queue.put((rank, calls, chance, perfect))
    finally:
        dist.destroy_process_group()


def test_evaluate_two_ranks_all_reduces_with_equal_forwards():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_eval_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # 14 test examples, 4 per rank per forward: 2 forwards on each rank (the last one padded)
    assert [calls for _, calls, _, _ in results] == [[4, 4], [4, 4]]
    for _, _, chance, perfect in results:
        assert chance["num_examples"] == TEST and chance["accuracy"] == 0.5
        assert perfect == make_source().evaluate(parity_logits, "train", batch_size=4)


def test_builder_uses_the_cached_splits(tmp_path):
    from megaproc.config import load_config
    from megaproc.runs import resolve, run_kind

    cfg = resolve(load_config(None, [
        "classify.target_func=fn_c", "classify.sequence_length=16", "classify.train_set_size=20",
        "classify.test_set_size=10", f"classify.cache_dir={tmp_path}", "train.micro_batch=5",
        "run.seed=3", "model.name=qwen0.6B-cpu"]))
    kind = run_kind(cfg)
    messages = []
    source, valid = kind.build_data(None, rank=0, world_size=1, pad_id=0, log_fn=messages.append)
    assert valid is None and source.names == ["boolean"] and source.width == 17
    again, _ = kind.build_data(None, rank=0, world_size=1, pad_id=0, log_fn=messages.append)
    assert "generated into" in messages[0] and "read from" in messages[1]
    assert source.examples == again.examples
    batch = source.micro_batch_at(0)
    assert (batch["input_ids"][:, 0] == 2).all()                  # BOS of the binary vocabulary
    assert source.steps_for_epochs(3) == 12
