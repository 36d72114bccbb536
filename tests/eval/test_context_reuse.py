"""Context reuse: the packed scorer (one row per context, block mask, per-continuation position
ids) gives every choice's log-likelihood of the per-choice computation, for GPT-2, GPT-NeoX
(Pythia) and Llama/Qwen3 models with sdpa and eager attention - against both megaproc's
per-pair rows and an independent unbatched reference - and the same HellaSwag / EWoK verdicts.

The context (96 positions) makes the fixture a mix of every row kind: packed rows, a context
whose continuations need two packed rows, single-continuation rows and left-truncated pairs.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from megaproc.eval.ewok import EwokEvaluator, evaluate_ewok, load_ewok
from megaproc.eval.ewok import requests as ewok_requests
from megaproc.eval.evaluator import EvalContext
from megaproc.eval.forward import ModelForward
from megaproc.eval.hellaswag import HellaswagEvaluator, evaluate_hellaswag, parse_row
from megaproc.eval.hellaswag import requests as hellaswag_requests
from megaproc.eval.loglik import LoglikScorer
from megaproc.eval.packing import build_rows
from megaproc.models import model_config
from tests.eval.conftest import EWOK_ROWS, HELLASWAG_ROWS, continuation_logprob, write_jsonl

CONTEXT = 96
SMALL = "hidden_size=64,num_hidden_layers=2,intermediate_size=128,num_attention_heads=4"
FAMILIES = {
    "gpt2": ("tiny", "initializer_range=0.2"),
    "gpt_neox": ("pythia-14m", SMALL + ",initializer_range=0.2"),
    "llama": ("llama3-1b", SMALL + ",num_key_value_heads=2,initializer_range=0.2"),
    "qwen3": ("qwen3-0.6b", SMALL + ",num_key_value_heads=2,head_dim=16,initializer_range=0.2"),
}


class CountingForward(ModelForward):
    """A ModelForward that records how many tokens each forward was given and its mask rank."""

    def __init__(self, model):
        super().__init__(model)
        self.calls: list[tuple[int, int]] = []

    def __call__(self, input_ids, attention_mask, position_ids=None):
        self.calls.append((int(input_ids.numel()), attention_mask.dim()))
        return super().__call__(input_ids, attention_mask, position_ids)


def _model(tokenizer, family: str, attention: str):
    name, overrides = FAMILIES[family]
    config = model_config(name, len(tokenizer), overrides, max_position_embeddings=CONTEXT,
                          bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    config._attn_implementation = attention
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def test_the_fixture_mixes_every_row_kind(tokenizer):
    items = [parse_row(r, "x", k) for k, r in enumerate(HELLASWAG_ROWS)]
    scorer = LoglikScorer(tokenizer, CONTEXT)
    pairs = [(r.context, r.continuation) for r in scorer.encode(hellaswag_requests(items))]
    rows = build_rows(pairs, CONTEXT, reuse_context=True)
    packed = [row for row in rows if row.segments is not None]
    contexts = [tuple(row.tokens[:row.segments.count(0)]) for row in packed]
    assert any(len(row.spans) == 4 for row in packed)            # a whole item in one row
    assert len(contexts) > len(set(contexts))                   # a context over two rows
    assert any(len(c) + len(t) - 1 > CONTEXT for c, t in pairs)  # truncated pairs
    assert all(len(row.tokens) <= CONTEXT for row in rows)
    assert sorted(s.request for row in rows for s in row.spans) == list(range(len(pairs)))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_scores_equal_per_choice_scores(tmp_path, tokenizer, family, attention):
    model = _model(tokenizer, family, attention)
    forward = CountingForward(model)
    assert forward.supports_block_mask
    items = [parse_row(r, "x", k) for k, r in enumerate(HELLASWAG_ROWS)]
    ewok_items = load_ewok(write_jsonl(tmp_path / "ewok" / "items.jsonl", EWOK_ROWS).parent)
    packed_scorer = LoglikScorer(tokenizer, CONTEXT, batch_size=3)
    per_pair_scorer = LoglikScorer(tokenizer, CONTEXT, batch_size=3, reuse_context=False)

    for pairs in (hellaswag_requests(items), ewok_requests(ewok_items)):
        forward.calls.clear()
        packed = packed_scorer.score_pairs(forward, pairs)
        packed_calls = list(forward.calls)
        forward.calls.clear()
        per_pair = per_pair_scorer.score_pairs(forward, pairs)
        assert any(rank == 4 for _, rank in packed_calls)             # block masks were used
        assert all(rank == 2 for _, rank in forward.calls)            # per-pair: padding masks
        assert sum(n for n, _ in packed_calls) < sum(n for n, _ in forward.calls)
        for (context, continuation), a, b in zip(pairs, packed, per_pair):
            reference, count = continuation_logprob(model, tokenizer, context, continuation,
                                                    max_length=CONTEXT)
            assert a.num_tokens == b.num_tokens == count
            assert abs(a.logprob - b.logprob) < 1e-4
            assert abs(a.logprob - reference) < 1e-4
            assert a.is_greedy == b.is_greedy

    summary, rows = evaluate_hellaswag(packed_scorer, forward, items)
    expected, expected_rows = evaluate_hellaswag(per_pair_scorer, forward, items)
    assert (summary["acc"], summary["acc_norm"]) == (expected["acc"], expected["acc_norm"])
    assert [(r["pred"], r["pred_norm"]) for r in rows] == \
        [(r["pred"], r["pred_norm"]) for r in expected_rows]
    summary, rows = evaluate_ewok(packed_scorer, forward, ewok_items)
    expected, expected_rows = evaluate_ewok(per_pair_scorer, forward, ewok_items)
    assert summary == expected
    assert [r["sum_score"] for r in rows] == [r["sum_score"] for r in expected_rows]


def test_evaluators_run_packed_through_the_context(tmp_path, tokenizer):
    """The Evaluator classes reach the packed scorer through an EvalContext."""
    model = _model(tokenizer, "gpt2", "sdpa")
    forward = CountingForward(model)
    ctx = EvalContext(forward, tokenizer, CONTEXT, batch_size=4)
    hellaswag = HellaswagEvaluator([parse_row(r, "x", k) for k, r in enumerate(HELLASWAG_ROWS)])
    ewok = EwokEvaluator(load_ewok(write_jsonl(tmp_path / "e" / "i.jsonl", EWOK_ROWS).parent))
    for evaluator in (hellaswag, ewok):
        forward.calls.clear()
        result = evaluator.run(ctx)
        assert any(rank == 4 for _, rank in forward.calls)
        assert all(row["task"] == evaluator.name for row in result.rows)
    assert set(result.metrics) >= {"ewok_sum_accuracy", "ewok_domain", "ewok_num_items"}
