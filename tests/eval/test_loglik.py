"""Continuation log-likelihood: tokenization, truncation, batching, sharding over ranks."""

from __future__ import annotations

import json
import os

import pytest
import torch

from megaproc.distributed import free_port
from megaproc.eval.loglik import (LoglikScorer, Request, context_length, encode_pairs,
                                  hf_logits_fn, score_requests)
from tests.eval.conftest import continuation_logprob

PAIRS = [("The cup is on the table.", " The cup is above the table."),
         ("A man is sitting on a roof.", " He starts pulling up roofing."),
         ("", " The ice melted."),
         ("Two boys are playing soccer in the park while their dog runs after the ball.",
          " The dog is happy."),
         ("What is 12 + 30?", " 42"),
         ("The chef slices the onions.", " He adds them to the pan."),
         ("Ali is taller than Bo.", " Bo is shorter.")]


def test_parts_are_tokenized_separately_without_bos(tokenizer):
    requests = encode_pairs(tokenizer, PAIRS[:2])
    for (context, continuation), request in zip(PAIRS, requests):
        assert list(request.context) == tokenizer.encode(context, add_special_tokens=False)
        assert list(request.continuation) == tokenizer.encode(continuation, add_special_tokens=False)
    bos = tokenizer.bos_token_id
    with_bos = encode_pairs(tokenizer, PAIRS[:1], add_bos=True)[0]
    assert with_bos.context == (bos,) + requests[0].context
    assert encode_pairs(tokenizer, [PAIRS[2]])[0].context == (bos,)  # empty context: BOS alone
    with pytest.raises(ValueError, match="no tokens"):
        encode_pairs(tokenizer, [("context", "")])


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_scores_equal_unbatched_reference(model, tokenizer, batch_size):
    scorer = LoglikScorer(tokenizer, context_length(model), batch_size=batch_size)
    results = scorer.score_pairs(hf_logits_fn(model), PAIRS)
    for (context, continuation), result in zip(PAIRS, results):
        if not context:  # the reference conditions on the BOS token the scorer put there
            context = tokenizer.bos_token
        expected, count = continuation_logprob(model, tokenizer, context, continuation)
        assert result.logprob == pytest.approx(expected, rel=1e-5, abs=1e-4)
        assert result.num_tokens == count
        assert result.mean_logprob == pytest.approx(expected / count, rel=1e-5, abs=1e-4)


def test_greedy_flag(model, tokenizer):
    context = tokenizer.encode("The cup is on the table.", add_special_tokens=False)
    ids = list(context)
    with torch.no_grad():
        for _ in range(3):  # the model's own greedy continuation
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    greedy = Request(tuple(context), tuple(ids[len(context):]))
    other = Request(tuple(context), tuple(ids[len(context):-1]) + ((ids[-1] + 1) % len(tokenizer),))
    results = score_requests(hf_logits_fn(model), [greedy, other], max_length=128)
    assert [r.is_greedy for r in results] == [True, False]


def test_long_pairs_lose_context_from_the_left(model, tokenizer):
    context = " ".join(["The ball fell off the shelf and rolled under the bed."] * 3)
    continuation = " The cup is on the table."
    (request,) = encode_pairs(tokenizer, [(context, continuation)])
    assert len(request.context) + len(request.continuation) > 17
    (result,) = score_requests(hf_logits_fn(model), [request], max_length=16)
    expected, _ = continuation_logprob(model, tokenizer, context, continuation, max_length=16)
    assert result.logprob == pytest.approx(expected, rel=1e-5, abs=1e-4)
    with pytest.raises(ValueError, match="longer than the model's context"):
        score_requests(hf_logits_fn(model), [request], max_length=len(request.continuation) - 1)


def test_identical_requests_score_identically_across_batches(model, tokenizer):
    pairs = [PAIRS[0], PAIRS[1], PAIRS[3], PAIRS[0]]  # first and last in different batches
    results = LoglikScorer(tokenizer, 128, batch_size=1).score_pairs(hf_logits_fn(model), pairs)
    assert results[0] == results[3]


def _rank_worker(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from megaproc.eval.exact_match import ExactMatchEvaluator, PromptAnswer
    from megaproc.tokenizer import load_tokenizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    forwards = []

    def counting_logits_fn(ids, mask):
        forwards.append(ids.shape[0])
        return model(input_ids=ids, attention_mask=mask).logits

    scored = LoglikScorer(tokenizer, 128, batch_size=2).score_pairs(counting_logits_fn, PAIRS,
                                                                     rank, world)
    loglik_forwards = len(forwards)
    examples = [PromptAnswer(q, a, "m", None, "f", k) for k, (q, a) in enumerate(PAIRS) if q]
    summary, rows = ExactMatchEvaluator(tokenizer, 128, batch_size=2).run(counting_logits_fn,
                                                                          examples, rank, world)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump({"loglik": [[r.logprob, r.num_tokens] for r in scored],
                   "loglik_forwards": loglik_forwards,
                   "decode_forwards": len(forwards) - loglik_forwards,
                   "generated": [row["generated"] for row in rows]}, handle)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_share_the_work_and_gather(tmp_path, model_dir, model, tokenizer):
    """Each rank scores its share in the same number of forwards; both return every result."""
    import torch.multiprocessing as mp

    from megaproc.eval.exact_match import ExactMatchEvaluator, PromptAnswer

    mp.spawn(_rank_worker, args=(2, free_port(), str(model_dir), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    single = LoglikScorer(tokenizer, 128, batch_size=2).score_pairs(hf_logits_fn(model), PAIRS)
    examples = [PromptAnswer(q, a, "m", None, "f", k) for k, (q, a) in enumerate(PAIRS) if q]
    _, rows = ExactMatchEvaluator(tokenizer, 128, batch_size=2).run(hf_logits_fn(model), examples)
    for out in ranks:
        assert [n for _, n in out["loglik"]] == [r.num_tokens for r in single]
        assert [lp for lp, _ in out["loglik"]] == pytest.approx([r.logprob for r in single],
                                                                rel=1e-5, abs=1e-4)
        assert out["generated"] == [row["generated"] for row in rows]
    assert ranks[0]["loglik_forwards"] == ranks[1]["loglik_forwards"] == 2  # 7 pairs: 4 + 3
    assert ranks[0]["decode_forwards"] == ranks[1]["decode_forwards"] > 0
