"""Natural-language rendering: facts encode exactly the edges, attributes are unique per vertex,
answers are in output_texts, and the prompt ends with the proof so far and "<Name> is"."""

from __future__ import annotations

import random
import re
import warnings

from megaproc.synthetic import GraphSearchGenerator, render_search_prompt
from megaproc.synthetic.natural_language import (EDGE_TEMPLATES, FIRST_NAMES, RESERVED_WORDS,
                                                 random_attributes)

WORD = r"([a-z]+)"


def fact_patterns(name):
    """One regex per template, with the example's name filled in."""
    patterns = []
    for first, middle, last in EDGE_TEMPLATES:
        parts = [re.escape(p.replace("{n}", name)) for p in (first, middle, last)]
        patterns.append(re.compile(parts[0] + WORD + parts[1] + WORD + parts[2]))
    return patterns


def parse_prompt(prompt, name):
    """Split a prompt into (fact pairs, start word, goal word, proof words)."""
    facts_text, question = prompt.split(" Given that ", 1)
    sentences = re.findall(r"[^.]*\.", facts_text)
    pairs = []
    for sentence in sentences:
        sentence = sentence.strip()
        matches = [m for p in fact_patterns(name) if (m := p.fullmatch(sentence))]
        assert matches, f"unrecognised fact {sentence!r}"
        pairs.append(matches[0].groups())
    head = re.fullmatch(rf"{name} is {WORD}, and we want to prove {name} is {WORD}\. Proof:(.*)",
                        question, re.S)
    assert head, question[:200]
    start_word, goal_word, proof = head.groups()
    assert proof.endswith(f" {name} is")
    steps = re.findall(rf" {name} is {WORD}\.", proof)
    assert "".join(f" {name} is {w}." for w in steps) + f" {name} is" == proof
    return pairs, start_word, goal_word, steps


def make_generator(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GraphSearchGenerator(**kwargs)


def test_prompt_encodes_the_graph_with_unique_attributes():
    gen = make_generator(max_input_size=128, max_lookahead=20, seed=21)
    templates_used = set()
    for index in range(60):
        ex = gen.example(index, 20)
        assert ex.name in FIRST_NAMES
        attrs = ex.attributes
        vertices = {x for e in ex.edges for x in e}
        assert set(attrs) == vertices
        assert len(set(attrs.values())) == len(attrs)               # unique word per vertex
        assert not set(attrs.values()) & RESERVED_WORDS
        pairs, start_word, goal_word, steps = parse_prompt(ex.prompt, ex.name)
        assert pairs == [(attrs[u], attrs[v]) for u, v in ex.edges]   # facts == edges, in order
        assert (start_word, goal_word) == (attrs[ex.start], attrs[ex.goal])
        assert steps == [attrs[v] for v in ex.path]                  # "Proof: Alex is X." + path
        assert ex.output_texts == [f" {attrs[a]}." for a in ex.answers]
        for text in ex.output_texts:                                 # prompt + answer is a sentence
            assert re.fullmatch(rf"(.*) {ex.name} is {WORD}\.", ex.prompt + text, re.S)
        for sentence in re.findall(r"[^.]*\.", ex.prompt.split(" Given that ")[0]):
            templates_used.update(i for i, p in enumerate(fact_patterns(ex.name))
                                  if p.fullmatch(sentence.strip()))
    assert templates_used == set(range(len(EDGE_TEMPLATES)))


def test_render_longer_path_so_far():
    rng = random.Random(0)
    edges = [(1, 2), (2, 3), (3, 4), (1, 5)]
    prompt, outputs, name, attrs = render_search_prompt(rng, edges, [1, 2, 3, 4, 5], 1, 4, [1, 2, 3], [4])
    expected_tail = (f"Proof: {name} is {attrs[1]}. {name} is {attrs[2]}. {name} is {attrs[3]}."
                     f" {name} is")
    assert prompt.endswith(expected_tail)
    assert outputs == [f" {attrs[4]}."]
    assert parse_prompt(prompt, name)[3] == [attrs[1], attrs[2], attrs[3]]


def test_every_valid_answer_is_an_output_text():
    gen = make_generator(max_input_size=64, max_lookahead=9, seed=11)
    found_multi = False
    for index in range(1500):
        ex = gen.example(index, 9)
        if ex is None or len(ex.answers) < 2:
            continue
        found_multi = True
        assert sorted(ex.output_texts) == sorted(f" {ex.attributes[a]}." for a in ex.answers)
        assert len(set(ex.output_texts)) == len(ex.answers)
    assert found_multi


class ScriptedRandom(random.Random):
    """``random()`` returns the scripted values first, then those of a real generator."""

    def __init__(self, scripted, seed=0):
        super().__init__(seed)
        self.scripted = list(scripted)

    def random(self):
        return self.scripted.pop(0) if self.scripted else super().random()


def test_random_attributes_are_distinct_two_syllable_words():
    words = random_attributes(random.Random(1), 2000)
    assert len(set(words)) == 2000
    assert all(re.fullmatch(r"[a-z]{4,6}", w) for w in words)
    assert not set(words) & RESERVED_WORDS
    # the first 50 draws would all give the same word: duplicates must be redrawn
    forced = random_attributes(ScriptedRandom([0.5] * 100), 50)
    assert len(set(forced)) == 50


def test_names_vary_between_examples():
    gen = make_generator(max_input_size=64, max_lookahead=9, seed=3)
    names = {gen.example(i, 9).name for i in range(100)}
    assert len(names) > 20
