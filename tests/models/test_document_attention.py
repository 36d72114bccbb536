"""Document masking through each family's attention (megaproc/models/document_attention.py).

For GPT-2, GPT-NeoX/Pythia, Llama and Qwen3 (tiny sizes of the presets), with sdpa and eager
attention: the logits of packed rows (``reset_position_ids`` + ``reset_attention_mask``, one row
right-padded) equal, within 1e-5 in fp32, the logits of every document run alone; with the
sliced head they are the same logits at the kept positions; with ``reset_attention_mask`` alone
each document sees what it sees alone at its packed positions.  Flash attention's path (the batch
flattened into one row, explicit ``cu_seq_lens``) runs HF's real flash-attention glue with the
CUDA kernel replaced by a per-sequence reference, in float64, and gives the sdpa path's logits.
The same through DeepSpeed ZeRO-2/3 engines.  Without document inputs nothing is built.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
import transformers.modeling_flash_attention_utils as hf_flash

from megaproc.data.batch import IGNORE_INDEX
from megaproc.data.document_mask import DocumentMasking
from megaproc.models import build_model
from megaproc.models.document_attention import (document_attention_problem, model_inputs,
                                                varlen_kwargs)
from megaproc.models.sliced_head import forward_logits
from tests.models.test_sliced_head import FAMILIES, VOCAB
from tests.test_export import process_group  # noqa: F401  (the 1-rank gloo group fixture)

EOD = 7
# Documents per row (lengths include their EOD; a row's last document may be cut before its
# EOD, as in a packed sample); row 1 is right-padded.  A length-1 document is a lone EOD.
ROWS = [[5, 1, 7, 2, 1], [9, 4]]
WIDTH = 16


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread per test: these tiny models are all per-op overhead, and on shared
    cores two threads per op run many times slower (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def family_model(name: str, attention: str = "sdpa", seed: int = 0):
    torch.manual_seed(seed)
    overrides = ",".join(x for x in (FAMILIES[name], f"attn_implementation={attention}") if x)
    model = build_model({"name": name, "config_overrides": overrides, "dropout": 0.0},
                        vocab_size=VOCAB)
    assert model.config._attn_implementation == attention
    return model.eval()


def packed_batch(seed: int = 3) -> tuple[dict, list[list[tuple[int, int]]]]:
    """The packed rows (tokens never EOD but at document ends) and each row's document spans."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(EOD + 1, VOCAB, (len(ROWS), WIDTH), generator=g)
    attention = torch.zeros(len(ROWS), WIDTH, dtype=torch.long)
    spans = []
    for r, lengths in enumerate(ROWS):
        start, row = 0, []
        for k, length in enumerate(lengths):
            end = start + length
            cut = k == len(lengths) - 1 and end == WIDTH  # the last document runs off the row
            if not cut:
                ids[r, end - 1] = EOD
            row.append((start, end))
            start = end
        attention[r, :start] = 1
        ids[r, start:] = 0  # padding
        spans.append(row)
    labels = torch.where(attention.bool(), torch.roll(ids, -1, dims=1), IGNORE_INDEX)
    batch = {"input_ids": ids, "attention_mask": attention, "labels": labels}
    return DocumentMasking(EOD, True, True, False).apply(batch), spans


def documents_of(batch: dict, *, positions: bool = True) -> dict:
    keys = ("position_ids", "document_ids") if positions else ("document_ids",)
    return {key: batch[key] for key in keys}


def alone(model, ids: torch.Tensor, first_position: int = 0) -> torch.Tensor:
    """Logits of one document run by itself (positions from ``first_position``)."""
    position_ids = torch.arange(first_position, first_position + len(ids))[None]
    with torch.no_grad():
        return model(input_ids=ids[None], position_ids=position_ids).logits[0]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_packed_logits_equal_each_document_run_alone(name, attention):
    model = family_model(name, attention)
    batch, spans = packed_batch()
    with torch.no_grad():
        packed = forward_logits(model, batch["input_ids"], batch["attention_mask"],
                                **documents_of(batch))
        plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert packed.shape == (len(ROWS), WIDTH, VOCAB)
    for r, row in enumerate(spans):
        for start, end in row:
            single = alone(model, batch["input_ids"][r, start:end])
            assert torch.allclose(packed[r, start:end], single, atol=1e-5, rtol=0), (r, start)
        # The plain causal forward sees across EODs: the later documents differ.
        start, end = row[1]
        assert not torch.allclose(plain[r, start:end], packed[r, start:end], atol=1e-3)

    # The sliced head returns the same logits at the kept positions.
    g = torch.Generator().manual_seed(5)
    keep = (torch.rand(len(ROWS), WIDTH, generator=g) < 0.4) & batch["attention_mask"].bool()
    with torch.no_grad():
        sliced = forward_logits(model, batch["input_ids"], batch["attention_mask"], keep,
                                **documents_of(batch))
    assert torch.allclose(sliced, packed[keep], atol=1e-5, rtol=0)

    # reset_attention_mask alone: every document at its packed positions, seeing only itself.
    with torch.no_grad():
        blocked = forward_logits(model, batch["input_ids"], batch["attention_mask"],
                                 **documents_of(batch, positions=False))
    for r, row in enumerate(spans):
        for start, end in row:
            single = alone(model, batch["input_ids"][r, start:end], first_position=start)
            assert torch.allclose(blocked[r, start:end], single, atol=1e-5, rtol=0), (r, start)


def test_mask_format_per_implementation_and_nothing_without_documents():
    batch, _ = packed_batch()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    plain = model_inputs(family_model("tiny"), ids, mask)
    assert plain.kwargs == {"input_ids": ids, "attention_mask": mask} and plain.shape is None
    sdpa = model_inputs(family_model("tiny"), ids, mask, **documents_of(batch)).kwargs
    eager = model_inputs(family_model("tiny", "eager"), ids, mask, **documents_of(batch)).kwargs
    assert sdpa["attention_mask"].dtype == torch.bool
    assert sdpa["attention_mask"].shape == (len(ROWS), 1, WIDTH, WIDTH)
    assert eager["attention_mask"].dtype == torch.float32
    # eager adds its mask to the scores: 0 where sdpa may attend, the float minimum elsewhere.
    assert torch.equal(eager["attention_mask"] == 0, sdpa["attention_mask"])
    assert eager["attention_mask"].min() == torch.finfo(torch.float32).min
    # Pads see only pads; no row of the mask is empty.
    allowed = sdpa["attention_mask"][:, 0]
    pads = ~mask.bool()
    assert not (allowed & pads[:, None, :] & ~pads[:, :, None]).any()
    assert not (allowed & ~pads[:, None, :] & pads[:, :, None]).any()
    assert allowed.any(dim=-1).all()


def test_varlen_offsets_cover_rows_documents_and_padding():
    batch, spans = packed_batch()
    segments = batch["document_ids"]
    got = varlen_kwargs(segments)
    expected = []
    for r, row in enumerate(spans):  # each document, then the row's padding if any
        expected += [r * WIDTH + start for start, _ in row]
        if row[-1][1] < WIDTH:
            expected.append(r * WIDTH + row[-1][1])
    expected.append(len(spans) * WIDTH)
    assert got["cu_seq_lens_q"].tolist() == expected and got["cu_seq_lens_q"].dtype == torch.int32
    assert got["cu_seq_lens_k"] is got["cu_seq_lens_q"]
    longest = max(b - a for a, b in itertools.pairwise(expected))
    assert got["max_length_q"] == got["max_length_k"] == longest
    # Without documents every row (and its padding) is one sequence.
    rows = varlen_kwargs(torch.where(batch["attention_mask"].bool(), 0, -1))
    assert rows["cu_seq_lens_q"].tolist() == [0, WIDTH, WIDTH + 13, 2 * WIDTH]


def reference_varlen(calls):
    """flash_attn_varlen_func's contract on CPU: causal attention within each packed sequence."""
    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None,
                               max_seqlen_k=None, dropout_p=0.0, softmax_scale=None,
                               causal=False, **_):
        calls.append(cu_seqlens_q.tolist())
        assert torch.equal(cu_seqlens_q, cu_seqlens_k) and causal
        out = torch.empty_like(q)
        for start, end in zip(cu_seqlens_q[:-1].tolist(), cu_seqlens_q[1:].tolist()):
            part = [x[start:end].transpose(0, 1)[None] for x in (q, k, v)]
            out[start:end] = F.scaled_dot_product_attention(
                *part, is_causal=True, scale=softmax_scale, enable_gqa=True)[0].transpose(0, 1)
        return out
    return flash_attn_varlen_func


@pytest.mark.parametrize("name", list(FAMILIES))
def test_flash_attention_path_equals_the_block_mask(name, monkeypatch):
    calls = []
    monkeypatch.setattr(hf_flash, "_lazy_imports",
                        lambda *a, **k: (None, reference_varlen(calls), None, None, None))
    monkeypatch.setattr(hf_flash, "_loaded_implementation", None)
    model = family_model(name).double()
    batch, _ = packed_batch()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    keep = batch["labels"] != IGNORE_INDEX
    with torch.no_grad():
        expected = forward_logits(model, ids, mask, **documents_of(batch))
        model.config._attn_implementation = "flash_attention_2"
        inputs = model_inputs(model, ids, mask, **documents_of(batch))
        got = forward_logits(model, ids, mask, **documents_of(batch))
        got_sliced = forward_logits(model, ids, mask, keep, **documents_of(batch))
        blocked = forward_logits(model, ids, mask, **documents_of(batch, positions=False))
        model.config._attn_implementation = "sdpa"
        expected_blocked = forward_logits(model, ids, mask, **documents_of(batch, positions=False))
    assert inputs.kwargs["attention_mask"] is None and inputs.shape == (len(ROWS), WIDTH)
    assert inputs.kwargs["input_ids"].shape == (1, len(ROWS) * WIDTH)
    assert calls and all(c == calls[0] for c in calls)  # every layer got the packed sequences
    assert calls[0] == varlen_kwargs(batch["document_ids"])["cu_seq_lens_q"].tolist()
    assert torch.allclose(got, expected, atol=1e-10, rtol=0)
    assert torch.allclose(got_sliced, expected[keep], atol=1e-10, rtol=0)
    assert torch.allclose(blocked, expected_blocked, atol=1e-10, rtol=0)  # positions per row


def test_unsupported_models_are_named():
    config = family_model("tiny").config
    assert document_attention_problem(config, True) is None
    config._attn_implementation = "flex_attention"
    assert "flex_attention" in document_attention_problem(config, True)
    assert document_attention_problem(config, False) is None  # positions need no mask
    config._attn_implementation = "flash_attention_2"
    assert document_attention_problem(config, True) is None
    qwen = family_model("qwen3-0.6b").config
    qwen.use_sliding_window, qwen.sliding_window = True, 4
    assert "sliding-window" in document_attention_problem(qwen, True)
    config.model_type = "opt"
    assert "not 'opt'" in document_attention_problem(config, False)


def ds_engine(name: str, stage: int):
    import deepspeed

    model = family_model(name)
    config = {"train_micro_batch_size_per_gpu": len(ROWS), "gradient_accumulation_steps": 1,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
              "zero_optimization": {"stage": stage}, "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                      config=config)
    return engine


@pytest.mark.parametrize("stage", [2, 3])
def test_document_masks_through_deepspeed_engines(process_group, stage):  # noqa: F811
    batch, _ = packed_batch()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        expected = forward_logits(family_model("pythia-14m"), ids, mask, **documents_of(batch))
    engine = ds_engine("pythia-14m", stage)
    keep = batch["labels"] != IGNORE_INDEX
    logits = forward_logits(engine, ids, mask, keep, **documents_of(batch))
    assert torch.allclose(logits.detach(), expected[keep], atol=1e-5, rtol=0)
    engine.backward(F.cross_entropy(logits, batch["labels"][keep]))  # trains through the mask
