"""Task batch source: global order, too-long drops, reserved prompts, stage changes, resume."""

from __future__ import annotations

import time
import warnings

import pytest
import torch

from megaproc.checkpoint import ResumeError
from megaproc.data.prompt_answer import PromptAnswerEncoder
from megaproc.data.task_source import ReservedPrompts, TaskBatchSource
from megaproc.synthetic import GraphSearchGenerator


def generator(**kwargs):
    settings = dict(max_input_size=26, max_lookahead=3, seed=7, natural_language=False)
    settings.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GraphSearchGenerator(**settings)


def source(tokenizer, micro_batch=2, grad_accum=2, world_size=1, rank=0, seq_len=64, prefetch=True,
           reserved=frozenset(), messages=None, **gen):
    return TaskBatchSource(generator(**gen), PromptAnswerEncoder(tokenizer), micro_batch, grad_accum,
                           world_size, rank, tokenizer.pad_token_id, seq_len, reserved=reserved,
                           prefetch=prefetch, log=(messages.append if messages is not None else None))


def steps(src, count):
    """Input ids of every micro-batch of ``count`` optimizer steps (rows as lists)."""
    rows = []
    for _ in range(count):
        for micro in range(src.grad_accum):
            batch = src.micro_batch_at(micro)
            mask = batch["attention_mask"].bool()
            primary = batch["primary"].tolist()  # rows of alternative answers come after
            rows.append([batch["input_ids"][r][mask[r]].tolist() for r in range(len(mask))
                         if primary[r]])
        src.advance()
    return rows


def accepted_indices(tokenizer, indices, stage=1, seq_len=64, reserved=frozenset()):
    """Independent reference: the indices whose example is produced, not reserved and fits."""
    gen, encoder, kept = generator(), PromptAnswerEncoder(tokenizer), []
    for index in indices:
        example = gen.example(index, stage)
        if example is None or example.prompt in reserved:
            continue
        rows = encoder.encode_pairs([(example.prompt, a) for a in example.output_texts])
        if max(len(r["tokens"]) for r in rows) <= seq_len + 1:  # every valid answer must fit
            kept.append(rows[0]["tokens"][:-1].tolist())
    return kept


def test_each_rank_walks_its_own_lane_of_the_stream(tokenizer):
    single = steps(source(tokenizer, micro_batch=2), 3)
    assert [row for micro in single for row in micro] == accepted_indices(tokenizer, range(40))[:12]
    for rank in range(2):
        rows = steps(source(tokenizer, micro_batch=2, world_size=2, rank=rank), 3)
        expected = accepted_indices(tokenizer, range(rank, 80, 2))[:12]
        assert [row for micro in rows for row in micro] == expected


def test_too_long_examples_are_dropped_and_counted(tokenizer):
    messages = []
    seq_len = 40
    src = source(tokenizer, seq_len=seq_len, messages=messages, prefetch=False)
    rows = steps(src, 10)
    assert all(len(row) + 1 <= seq_len + 1 for micro in rows for row in micro)
    # independent count over the same indices
    kept = accepted_indices(tokenizer, range(src.position), seq_len=seq_len)
    assert [row for micro in rows for row in micro] == kept
    too_long = len(accepted_indices(tokenizer, range(src.position), seq_len=10**6)) - len(kept)
    assert too_long > 0 and src.dropped_too_long == too_long
    state = src.state_dict()
    assert state["dropped_too_long"] == too_long and state["positions"] == [src.position]
    assert sum(src.skip_counts.values()) + src.consumed == src.position
    assert sum("dropping task examples longer than" in m for m in messages) == 1
    src.close()
    assert any(f"{too_long} task examples longer than" in m for m in messages)


def test_reserved_prompts_are_never_served(tokenizer, tmp_path):
    import json

    gen = generator()
    drawn = (gen.example(i, 1) for i in range(10_000))
    first = [e for e in drawn if e is not None][:12]
    split = tmp_path / "eval.jsonl"
    split.write_text("".join(json.dumps({"prompt": e.prompt, "output_texts": e.output_texts}) + "\n"
                             for e in first[::2]))
    reserved = ReservedPrompts.from_split_dir(str(tmp_path))
    assert first[0].prompt in reserved and first[1].prompt not in reserved
    src = source(tokenizer, reserved=reserved)
    _, examples, end, counts = src.lane_examples(0, 1, 12)
    assert not {e.prompt for e in examples} & {e.prompt for e in first[::2]}
    assert counts["reserved"] == 6 and end == 18


def test_stage_change_never_serves_prefetched_examples_of_the_old_stage(tokenizer):
    prefetching, plain = source(tokenizer), source(tokenizer, prefetch=False)
    for src in (prefetching, plain):
        steps(src, 2)
    start = prefetching.position
    deadline = time.time() + 60
    while (start, 1) not in prefetching._prefetcher._ready and time.time() < deadline:
        time.sleep(0.01)                                 # stage-1 batches are built ahead
    assert (start, 1) in prefetching._prefetcher._ready
    old_stage = [rows[0]["tokens"].tolist() for rows in prefetching.lane_examples(start, 1, 2)[0]]
    new_stage = [rows[0]["tokens"].tolist() for rows in prefetching.lane_examples(start, 3, 2)[0]]
    assert old_stage != new_stage
    for src in (prefetching, plain):
        src.set_stage(3)
    batch = prefetching.micro_batch_at(0)
    mask = batch["attention_mask"].bool()
    served = [batch["input_ids"][r][mask[r]].tolist() for r in range(2)]
    assert served == [tokens[:-1] for tokens in new_stage]
    prefetching.micro_batch_at(1)
    prefetching.advance()
    plain.micro_batch_at(0), plain.micro_batch_at(1), plain.advance()
    assert steps(prefetching, 2) == steps(plain, 2)
    prefetching.close()


def test_resume_continues_the_stream_exactly(tokenizer):
    straight = source(tokenizer)
    steps(straight, 2)
    straight.set_stage(2)
    state = straight.state_dict()
    expected = steps(straight, 3)
    resumed = source(tokenizer)
    resumed.load_state_dict(state)
    assert resumed.stage == 2 and resumed.position == state["positions"][0]
    assert steps(resumed, 3) == expected
    assert resumed.consumed == straight.consumed
    other_seed = source(tokenizer, seed=8)
    with pytest.raises(ResumeError, match="seed"):
        other_seed.load_state_dict(state)
    other_reserved = source(tokenizer, reserved=ReservedPrompts({b"x" * 16}))
    with pytest.raises(ResumeError, match="reserved"):
        other_reserved.load_state_dict(state)
    with pytest.raises(ResumeError, match="ranks"):
        source(tokenizer, world_size=2).load_state_dict(state)


def test_batches_carry_the_correctness_masks(tokenizer):
    batch = source(tokenizer).micro_batch_at(0)
    assert set(batch) >= {"input_ids", "labels", "attention_mask", "answer_mask", "word_mask",
                          "boundary_mask", "source"}
    assert torch.all(batch["word_mask"].sum(1) >= 1) and torch.all(batch["boundary_mask"].sum(1) == 1)
    assert torch.all(batch["answer_mask"] >= batch["word_mask"])


def test_task_run_fingerprint_never_builds_the_default_corpus(tmp_path, monkeypatch, symbolic_splits):
    from megaproc.config import load_config
    from megaproc.runs import resolve, run_kind

    def data_fingerprint(cfg, tokenizer):
        return run_kind(resolve(cfg)).data_fingerprint(tokenizer)

    cache = tmp_path / "cache"
    monkeypatch.setenv("MEGAPROC_CACHE", str(cache))
    tok_dir = tmp_path / "tok"
    _tiny_tokenizer().save_pretrained(str(tok_dir))
    from megaproc.tokenizer import load_tokenizer

    cfg = load_config(None, ["task.kind=graph_search", f"data.tokenizer={tok_dir}",
                             f"task.splits_dir={symbolic_splits}"])
    first = data_fingerprint(cfg, load_tokenizer(tok_dir))
    assert not cache.exists() or not any(cache.iterdir())  # nothing built or trained
    other = load_config(None, ["task.kind=graph_search", f"data.tokenizer={tok_dir}",
                               f"task.splits_dir={symbolic_splits}", "task.max_lookahead=2"])
    assert data_fingerprint(other, load_tokenizer(tok_dir)) != first


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["graph search edges 1 2 3 4 5 6 7 8 9 0 > = , ."],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>",
                                   unk_token="<unk>")


def test_batches_carry_a_row_per_alternative_answer(tokenizer):
    src = source(tokenizer, micro_batch=8, prefetch=False)
    seen_alternatives = 0
    for _ in range(6):
        for micro in range(src.grad_accum):
            start = src._cursor if micro else src.position
            batch = src.micro_batch_at(micro)
            examples = src.lane_examples(start, 1, 8)[1]
            assert batch["primary"].sum() == 8
            expected = [(k, 0) for k in range(8)] + [
                (k, i) for k, e in enumerate(examples) for i in range(1, len(e.output_texts))]
            assert len(batch["example_id"]) == len(expected)
            assert batch["example_id"].tolist() == [k for k, _ in expected]
            seen_alternatives += len(expected) - 8
        src.advance()
    assert seen_alternatives > 0  # the stream has multi-answer examples
