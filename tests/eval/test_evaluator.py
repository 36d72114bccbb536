"""The pieces every evaluator shares: lock-step sharding, the eval-mode switch, flat metric
names and the ``--batch-size auto`` search."""

from __future__ import annotations

import pytest
import torch

from megaproc.eval import sharding
from megaproc.eval.batch_size import (CPU_MAX_ROWS, AutoBatchSize, BatchSizeError,
                                      bytes_per_row, cpu_rows, largest_fitting_batch)
from megaproc.eval.evaluator import flat_metrics, rows_per_batch
from megaproc.eval.forward import ModelForward, eval_mode
from megaproc.eval.sharding import forwards_per_rank, run_in_lockstep


@pytest.mark.parametrize("batches,world", [(7, 1), (7, 2), (7, 3), (8, 4), (2, 4), (0, 2)])
def test_every_rank_makes_the_same_calls_and_gets_all_results(monkeypatch, batches, world):
    items = [f"batch{b}" for b in range(batches)]
    shares, calls = [], []
    # First pass: what each rank runs (the gather is stubbed: a real one needs a group).
    for rank in range(world):
        monkeypatch.setattr(sharding.dist_utils, "all_gather_objects", lambda mine, rank=rank: [
            mine if r == rank else [None] * len(items[r::world]) for r in range(world)])
        seen = []
        run_in_lockstep(items, lambda b: seen.append(b) or (b and b.upper()), rank, world)
        calls.append(seen)
        shares.append([b.upper() for b in seen if b is not None])
    expected_calls = forwards_per_rank(batches, world)
    assert all(len(seen) == expected_calls for seen in calls)  # the same number of forwards
    for rank, seen in enumerate(calls):
        real = [b for b in seen if b is not None]
        assert real == items[rank::world] and seen[len(real):] == [None] * (len(seen) - len(real))
    # Second pass: the gathered shares come back in batch order.
    if world > 1:
        monkeypatch.setattr(sharding.dist_utils, "all_gather_objects", lambda mine: shares)
    assert run_in_lockstep(items, str.upper if world == 1 else (lambda b: b and b.upper()), 0,
                           world) == [b.upper() for b in items]


def test_eval_mode_restores_every_module_mode():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5), torch.nn.Linear(2, 2))
    model.train()
    model[2].eval()  # a frozen part kept in eval mode by its owner
    with eval_mode(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, True, False]
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == [True, True, True, False]


def test_flat_metrics_join_breakdowns_with_slashes():
    metrics = {"heldout_acc": 0.5, "by_lookahead": {"1": {"heldout_acc": 1.0, "num_examples": 2}},
               "ewok_domain": {"physical": 0.25}}
    assert flat_metrics(metrics) == {"heldout_acc": 0.5, "by_lookahead/1/heldout_acc": 1.0,
                                     "by_lookahead/1/num_examples": 2,
                                     "ewok_domain/physical": 0.25}


def test_largest_fitting_batch_halves_on_out_of_memory():
    tried, emptied = [], []

    def fits_up_to_10(rows):
        tried.append(rows)
        if rows > 10:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")

    assert largest_fitting_batch(fits_up_to_10, 64, on_oom=lambda: emptied.append(1)) == 8
    assert tried == [64, 32, 16, 8] and len(emptied) == 3
    assert largest_fitting_batch(lambda rows: None, 64) == 64

    def never_fits(rows):
        raise torch.OutOfMemoryError("fake")

    with pytest.raises(BatchSizeError, match="single row"):
        largest_fitting_batch(never_fits, 4)
    with pytest.raises(ValueError):  # anything but an OOM is not swallowed
        largest_fitting_batch(lambda rows: int("x"), 4)


def test_cpu_rule_from_available_memory(model):
    config = model.config
    one_row = bytes_per_row(config, 128, 4, block_mask=False)
    assert one_row > 128 * config.vocab_size * 4  # at least the logits
    assert bytes_per_row(config, 128, 4, block_mask=True) > one_row
    assert bytes_per_row(config, 256, 4, block_mask=False) > 2 * one_row
    assert cpu_rows(config, 128, 4, False, available=10 * one_row) == 5   # half the memory
    assert cpu_rows(config, 128, 4, False, available=one_row) == 1        # never below one
    assert cpu_rows(config, 128, 4, False, available=10**15) == CPU_MAX_ROWS


def test_auto_batch_size_on_cpu_is_remembered_per_length(model):
    auto = AutoBatchSize(ModelForward(model), "cpu")
    rows = rows_per_batch(auto, 40)
    assert 1 <= rows <= CPU_MAX_ROWS and auto.chosen == {"64": rows}
    assert rows_per_batch(auto, 60) == rows and rows_per_batch(auto, 60, True) >= 1
    assert set(auto.chosen) == {"64", "64/block"}
    assert rows_per_batch(7, 1000) == 7


def test_device_and_dtype_defaults(monkeypatch):
    from megaproc.eval import model_loading
    from megaproc.eval.model_loading import ModelLoadError, resolve_device, resolve_dtype

    cpu = torch.device("cpu")
    monkeypatch.setattr(model_loading.torch.cuda, "is_available", lambda: False)
    assert resolve_device(None, 0) == cpu and resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("float16", cpu) == torch.float16
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        resolve_device("cuda", 0)
    # A CUDA machine with two GPUs (faked): the launcher's local rank picks the GPU.
    monkeypatch.setattr(model_loading.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(model_loading.torch.cuda, "device_count", lambda: 2)
    assert resolve_device(None, 1) == torch.device("cuda", 1)
    assert resolve_device("cuda", 1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", 1) == torch.device("cuda", 0)
    with pytest.raises(ModelLoadError, match="no CUDA device 5 .this machine has 2"):
        resolve_device("cuda:5", 0)
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(model_loading.torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype(None, gpu) == torch.bfloat16
    monkeypatch.setattr(model_loading.torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype(None, gpu) == torch.float16
    assert resolve_dtype("float32", gpu) == torch.float32


def test_auto_batch_size_on_cuda_probes_and_halves(model, monkeypatch):
    """The CUDA path, with the probe faked: it starts at 256 rows, halves on OOM, probes a
    block-masked batch when the plan packs, and remembers each answer."""
    auto = AutoBatchSize(ModelForward(model), "cpu")
    auto.device = torch.device("cuda", 0)  # only the probe would touch the GPU: faked below
    probes = []

    def probe(rows, tokens, block_mask):
        probes.append((rows, tokens, block_mask))
        if rows * tokens > 40 * 128:
            raise torch.OutOfMemoryError("fake")

    monkeypatch.setattr(auto, "_probe", probe)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    assert auto(100, True) == 32
    assert probes == [(256, 128, True), (128, 128, True), (64, 128, True), (32, 128, True)]
    assert auto(90, True) == 32 and len(probes) == 4  # remembered
    assert auto(20, False) == 128  # 32 tokens: 160 rows would fit, the first try (256) does not
