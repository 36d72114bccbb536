"""SyntheticStream: reserved prompts excluded, skips counted, resume, stage changes, filters."""

from __future__ import annotations

import warnings

import pytest

from megaproc.data.synthetic import GraphSearchGenerator, SyntheticStream


def make_generator(n=32, max_lookahead=4, seed=0, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GraphSearchGenerator(n, max_lookahead, seed, **kwargs)


def test_reserved_prompts_are_never_produced():
    gen = make_generator(14, 1, seed=0, natural_language=False)   # tiny graphs: prompts repeat
    baseline = [gen.example(i, 1) for i in range(400)]
    reserved = frozenset(e.prompt for e in baseline[:40] if e is not None)
    stream = SyntheticStream(gen, stage=1, reserved=reserved)
    produced = stream.take(300)
    assert not {e.prompt for e in produced} & reserved
    assert stream.skip_counts["reserved"] > 40       # repeats of reserved prompts were skipped too
    assert stream.next_index == 300 + stream.skipped


def test_stream_is_the_generator_sequence_minus_skips():
    gen = make_generator()
    stream = SyntheticStream(gen, stage=3)
    got = [e.prompt for e in stream.take(25)]
    expected = [e.prompt for e in (gen.example(i, 3) for i in range(stream.next_index)) if e]
    assert got == expected


def test_resume_from_state_dict_continues_exactly():
    gen = make_generator()
    reference = SyntheticStream(gen, stage=2)
    full = [e.prompt for e in reference.take(30)]

    first = SyntheticStream(gen, stage=2)
    head = [e.prompt for e in first.take(12)]
    state = first.state_dict()
    resumed = SyntheticStream(make_generator(), stage=1)
    resumed.load_state_dict(state)
    assert resumed.stage == 2 and resumed.next_index == state["next_index"]
    assert head + [e.prompt for e in resumed.take(18)] == full


def test_resume_by_setting_next_index():
    gen = make_generator()
    a = SyntheticStream(gen, stage=4)
    a.take(7)
    b = SyntheticStream(gen, stage=4, start_index=a.next_index)
    assert [e.prompt for e in a.take(5)] == [e.prompt for e in b.take(5)]


def test_load_state_dict_refuses_other_generator_settings():
    state = SyntheticStream(make_generator(seed=0)).state_dict()
    with pytest.raises(ValueError, match="seed"):
        SyntheticStream(make_generator(seed=1)).load_state_dict(state)


def test_stage_is_settable_and_controls_lookahead():
    gen = make_generator(64, 9, seed=2)
    stream = SyntheticStream(gen, stage=1)
    assert max(e.lookahead for e in stream.take(40)) == 1
    stream.stage = 9
    assert stream.stage == 9
    assert max(e.lookahead for e in stream.take(60)) == 9
    with pytest.raises(ValueError):
        stream.stage = 10


def test_accept_predicate_filters_and_counts():
    gen = make_generator(64, 9, seed=3)
    stream = SyntheticStream(gen, stage=9, accept=lambda e: len(e.prompt) < 600)
    examples = stream.take(20)
    assert all(len(e.prompt) < 600 for e in examples)
    assert stream.skip_counts["filtered"] > 0
    assert stream.skipped == sum(stream.skip_counts.values())


def test_rejected_draws_are_skipped_and_counted():
    gen = make_generator(64, 9, seed=4, max_attempts=1)     # one graph per index: some rejects
    stream = SyntheticStream(gen, stage=9)
    examples = stream.take(60)
    assert len(examples) == 60 and all(e is not None for e in examples)
    assert stream.skip_counts["rejected"] > 0
    assert stream.next_index == 60 + stream.skip_counts["rejected"]
