"""Graph-search generator: answers, lookahead, determinism, curriculum mapping, symbolic form.

Answers and lookaheads are re-derived here from ``example.edges`` alone, with code that does
not share anything with the generator.
"""

from __future__ import annotations

import random
import warnings
from collections import Counter, defaultdict, deque

import pytest

from megaproc.synthetic import GraphSearchGenerator, lookahead_depth


def quiet_generator(*args, **kwargs) -> GraphSearchGenerator:
    """A generator with the lookahead-cap warning silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GraphSearchGenerator(*args, **kwargs)


def adjacency(edges):
    out = {}
    for u, v in edges:
        out.setdefault(u, []).append(v)
    return out


def bfs_distances(adj, source):
    dist = {source: 0}
    queue = deque([source])
    while queue:
        u = queue.popleft()
        for v in adj.get(u, ()):
            if v not in dist:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def reaches(adj, source, target):
    return target in bfs_distances(adj, source)


def expected_answers(example):
    """Children of the current vertex from which the goal can be reached."""
    adj = adjacency(example.edges)
    return {c for c in adj.get(example.path[-1], ()) if reaches(adj, c, example.goal)}


def independent_lookahead(edges, current, correct, goal):
    """Level-by-level: level t holds the vertices first reached at distance t + 1 from
    ``current``; a vertex is marked iff a marked vertex of the previous level has an edge to it
    (level 0: the children in ``correct``; for an example that is the next vertex only).  The
    lookahead is the first t whose level is all marked, or t + 1 if level t contains the goal,
    whichever comes first."""
    adj = adjacency(edges)
    level = {c: c in correct for c in adj.get(current, ())}
    seen = set(level)
    t = 0
    while level:
        if all(level.values()):
            return t
        if goal in level:
            return t + 1
        nxt = {}
        for u, marked in level.items():
            for v in adj.get(u, ()):
                if v not in seen:
                    nxt[v] = nxt.get(v, False) or marked      # any marked parent marks it
        seen.update(nxt)
        level = nxt
        t += 1
    return t


def check_example(example, generator):
    """Every structural property of one example, recomputed from its edges."""
    adj = adjacency(example.edges)
    assert len(set(example.edges)) == len(example.edges)
    assert 3 * len(example.edges) + 4 + len(example.path) <= generator.max_input_size
    ids = {x for e in example.edges for x in e}
    assert all(1 <= x <= generator.num_vertex_ids for x in ids)
    # acyclic: every vertex fails to reach itself through its children
    for v in ids:
        assert not any(reaches(adj, c, v) for c in adj.get(v, ()))
    # the path so far starts at the start and is a prefix of a shortest start -> goal path
    assert example.path[0] == example.start
    for u, v in zip(example.path, example.path[1:]):
        assert v in adj[u]
    from_start = bfs_distances(adj, example.start)
    to_goal = bfs_distances(adj, example.path[-1])
    assert example.goal in from_start
    assert (len(example.path) - 1) + to_goal[example.goal] == from_start[example.goal]
    # answers: exactly the children that still reach the goal; the first is on a shortest path
    assert set(example.answers) == expected_answers(example)
    assert len(example.answers) == len(set(example.answers))
    first = example.answers[0]
    assert bfs_distances(adj, first).get(example.goal) == to_goal[example.goal] - 1
    assert len(example.output_texts) == len(example.answers)
    # lookahead: measured against the next vertex (answers[0]); other correct children are
    # branches the search must rule out, as in the authors' generator
    assert example.lookahead == independent_lookahead(
        example.edges, example.path[-1], {first}, example.goal)


# Hand-worked graphs: (edges, current, correct children, goal, lookahead).  "s" is the current
# vertex, "g" the goal.
HAND_CASES = [
    # goal chain of 3 and a distractor chain of 3: the goal is found after 3 steps
    ([("s", "a1"), ("a1", "a2"), ("a2", "g"), ("s", "b1"), ("b1", "b2"), ("b2", "b3")], "s", {"a1"}, "g", 3),
    # the distractor dies after 1 vertex: after 1 step only the correct branch is left
    ([("s", "a1"), ("a1", "a2"), ("a2", "g"), ("s", "b1")], "s", {"a1"}, "g", 1),
    # a single child needs no lookahead
    ([("s", "a1"), ("a1", "g")], "s", {"a1"}, "g", 0),
    # every child is correct
    ([("s", "a"), ("s", "b"), ("a", "g"), ("b", "g")], "s", {"a", "b"}, "g", 0),
    # the goal is a child, next to a distractor
    ([("s", "g"), ("s", "b"), ("b", "c")], "s", {"g"}, "g", 1),
    # c is reached by the distractor b first, then by the correct a in the same step: it counts
    # as descending from a correct child, so after 1 step the frontier {c, d} is all correct
    ([("s", "b"), ("s", "a"), ("b", "c"), ("a", "c"), ("a", "d"), ("d", "g")], "s", {"a"}, "g", 1),
]


@pytest.mark.parametrize("edges,current,correct,goal,expected", HAND_CASES)
def test_lookahead_on_hand_worked_graphs(edges, current, correct, goal, expected):
    children = defaultdict(list)
    for u, v in edges:
        children[u].append(v)
    assert lookahead_depth(children, current, correct, goal) == expected
    assert independent_lookahead(edges, current, correct, goal) == expected


@pytest.mark.parametrize("n,max_lookahead", [(64, 9), (32, 4), (14, 1)])
def test_answers_and_lookahead_match_independent_computation(n, max_lookahead):
    gen = quiet_generator(n, max_lookahead, seed=7)
    seen_lookaheads = Counter()
    for index in range(300):
        stage = 1 + index % max_lookahead
        example = gen.example(index, stage)
        assert example is not None
        check_example(example, gen)
        assert example.lookahead == gen.requested_lookahead(index, stage)
        assert 0 <= example.lookahead <= gen.max_lookahead_for_stage(stage)
        seen_lookaheads[example.lookahead] += 1
    assert set(seen_lookaheads) == set(range(gen.max_lookahead_for_stage(max_lookahead) + 1))


def test_large_input_examples_are_correct_at_every_lookahead():
    gen = quiet_generator(384, 62, seed=3)
    for lookahead in (0, 1, 2, 8, 31, 62):
        for index in range(4):
            example = gen.example_at_lookahead(index, lookahead)
            assert example is not None
            assert example.lookahead == lookahead
            check_example(example, gen)


def test_multiple_answers_are_all_listed():
    gen = quiet_generator(64, 9, seed=11)
    multi = [e for e in (gen.example(i, 9) for i in range(1500)) if e and len(e.answers) > 1]
    assert multi, "expected some examples with several correct next vertices"
    for example in multi[:20]:
        assert set(example.answers) == expected_answers(example)


def test_lookahead_is_uniform_over_the_stage_range():
    gen = quiet_generator(64, 9, seed=5)
    counts = Counter(gen.example(i, 4).lookahead for i in range(1000))
    assert set(counts) == {0, 1, 2, 3, 4}
    assert min(counts.values()) > 140          # ~200 each


def test_deterministic_per_seed_index_and_stage():
    a, b = quiet_generator(64, 9, seed=1), quiet_generator(64, 9, seed=1)
    for index in (0, 5, 123456789):
        for stage in (1, 9):
            ea, eb = a.example(index, stage), b.example(index, stage)
            assert ea.to_json() == eb.to_json()
    # order of calls does not matter: an example is a pure function of its index
    first = [a.example(i, 3).prompt for i in range(10)]
    assert [b.example(i, 3).prompt for i in reversed(range(10))][::-1] == first


def test_different_seeds_indices_and_stages_differ():
    a, b = quiet_generator(64, 9, seed=1), quiet_generator(64, 9, seed=2)
    assert [a.example(i, 9).prompt for i in range(20)] != [b.example(i, 9).prompt for i in range(20)]
    prompts = {a.example(i, 9).prompt for i in range(50)}
    assert len(prompts) == 50
    same_across_stages = sum(a.example(i, 8).prompt == a.example(i, 9).prompt for i in range(50))
    assert same_across_stages <= 2                # the stage is part of the example's seed
    other_stream = quiet_generator(64, 9, seed=1, stream_id=1)
    assert other_stream.example(0, 9).prompt != a.example(0, 9).prompt


def test_stage_mapping():
    gen = quiet_generator(384, 64, seed=0)
    assert gen.lookahead_cap == 62
    assert gen.num_stages == 64
    assert [gen.max_lookahead_for_stage(s) for s in (1, 2, 10, 62, 63, 64)] == [1, 2, 10, 62, 62, 62]
    assert gen.alpha_for_stage(64) == 1.0
    assert gen.alpha_for_stage(16) == 0.25
    small = quiet_generator(64, 4, seed=0)   # fewer stages than the cap: stage s allows s
    assert [small.max_lookahead_for_stage(s) for s in (1, 2, 3, 4)] == [1, 2, 3, 4]
    for bad in (0, 65):
        with pytest.raises(ValueError):
            gen.max_lookahead_for_stage(bad)


def test_max_lookahead_64_at_384_warns_once_and_caps():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gen = GraphSearchGenerator(384, 64, seed=12345)
        examples = [gen.example(i, stage) for stage in (1, 63, 64) for i in range(20)]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "62" in message and "64" in message
    assert all(e is not None and e.lookahead <= 62 for e in examples)
    assert max(e.lookahead for e in examples) > 20
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GraphSearchGenerator(384, 62, seed=0)
    assert caught == []


def test_lookahead_zero_and_cap_draws_do_not_fail():
    gen = quiet_generator(384, 64, seed=9)
    zero = gen.example_at_lookahead(0, 0)
    assert zero.lookahead == 0 and len(zero.answers) >= 1
    with pytest.raises(ValueError):
        gen.example_at_lookahead(0, 63)


def test_symbolic_token_layout():
    gen = quiet_generator(32, 4, seed=2, natural_language=False)
    v = gen.num_vertex_ids
    assert (gen.path_token, gen.edge_token, gen.pad_token, gen.query_token) == (v + 1, v + 2, v + 3, v + 4)
    for index in range(30):
        ex = gen.example(index, 4)
        tokens = ex.tokens
        assert len(tokens) == 32
        body = [t for t in tokens if t != gen.pad_token]
        assert tokens[:32 - len(body)] == [gen.pad_token] * (32 - len(body))     # left padding
        assert ex.prompt == " ".join(map(str, body))
        num_edges = len(ex.edges)
        assert body[:3 * num_edges:3] == [gen.edge_token] * num_edges
        assert [(body[3 * i + 1], body[3 * i + 2]) for i in range(num_edges)] == ex.edges
        assert body[3 * num_edges:3 * num_edges + 4] == [gen.query_token, ex.start, ex.goal, gen.path_token]
        assert body[3 * num_edges + 4:] == ex.path
        assert ex.output_texts == [f" {a}" for a in ex.answers]
        check_example(ex, gen)


def test_edges_are_shuffled():
    gen = quiet_generator(384, 62, seed=4)
    example = gen.example_at_lookahead(0, 20)
    # the goal chain would appear in order if edges were not shuffled
    sources = [u for u, _ in example.edges]
    assert sources[0] != example.start or sources[1] != example.start


def test_to_json_round_trip_fields():
    gen = quiet_generator(64, 9, seed=1)
    ex = gen.example(3, 9)
    record = ex.to_json()
    assert record["prompt"] == ex.prompt and record["output_texts"] == ex.output_texts
    assert record["lookahead"] == ex.lookahead and record["answers"] == ex.answers
    assert [tuple(e) for e in record["edges"]] == ex.edges
    assert "tokens" not in record


@pytest.mark.parametrize("kwargs", [
    dict(max_input_size=13, max_lookahead=4, seed=0),
    dict(max_input_size=64, max_lookahead=0, seed=0),
    dict(max_input_size=64, max_lookahead=4, seed=-1),
])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        GraphSearchGenerator(**kwargs)


def test_lookahead_zero_examples_are_mostly_partial_proofs():
    # Most lookahead-0 examples continue the previous example's graph a step further along
    # (usually path = [start, v1]); the others are graphs built for lookahead 0, path [start].
    generator = quiet_generator(96, 8, seed=11, natural_language=False)
    zero = [e for e in (generator.example_at_lookahead(i, 0) for i in range(300)) if e is not None]
    assert len(zero) == 300
    for example in zero:
        assert example.lookahead == 0
        check_example(example, generator)
    lengths = Counter(len(e.path) for e in zero)
    assert sum(count for length, count in lengths.items() if length > 1) >= 0.6 * len(zero)
    assert lengths[2] == max(lengths.values()), lengths


def test_paths_fit_the_stage_not_the_cap():
    # At stage s every graph is built for a lookahead <= s, so the start is at most s edges from
    # the goal and the path so far has at most s vertices (stage 1: always [start]).
    generator = quiet_generator(384, 62, seed=2, natural_language=False)
    for stage in (1, 2, 3):
        examples = [generator.example(i, stage) for i in range(400)]
        assert all(e is not None for e in examples)
        assert max(len(e.path) for e in examples) == stage
        for example in examples[:50]:
            check_example(example, generator)


def test_small_lookaheads_have_multiple_answers():
    # Several correct children do not make an example lookahead 0: the search still has to
    # rule out the other branches (the authors' definition), so they occur at lookahead >= 1.
    generator = quiet_generator(98, 8, seed=4, natural_language=False)
    multi = Counter()
    for index in range(3000):
        example = generator.example(index, 8)
        if len(example.answers) > 1:
            multi[example.lookahead] += 1
            check_example(example, generator)
    assert all(multi[lookahead] >= 3 for lookahead in range(1, 5)), multi


def test_attachment_draws_follow_their_weights():
    # weight of vertex v: 0.5 + (times v is in tokens); blocked vertices are never drawn
    from itertools import permutations

    from megaproc.synthetic.graph_construction import _draw_distinct

    tokens, blocked, new = [0, 0, 1, 3, 3, 3], {2}, 6
    weight = {v: 0.5 + tokens.count(v) for v in range(new) if v not in blocked}
    total = sum(weight.values())
    # probability that v is among k = 2 successive draws without replacement, enumerated
    pair = Counter()
    for a, b in permutations(weight, 2):
        probability = weight[a] / total * weight[b] / (total - weight[a])
        pair[a] += probability
        pair[b] += probability
    rng = random.Random(0)
    trials = 20000
    singles, pairs = Counter(), Counter()
    for _ in range(trials):
        singles.update(_draw_distinct(rng, new, tokens, 1, blocked))
        drawn = _draw_distinct(rng, new, tokens, 2, blocked)
        assert len(set(drawn)) == 2 and not set(drawn) & blocked
        pairs.update(drawn)
    for v, w in weight.items():
        for observed, expected in ((singles[v] / trials, w / total), (pairs[v] / trials, pair[v])):
            assert abs(observed - expected) < 5 * (expected * (1 - min(expected, 0.99)) / trials) ** 0.5 + 1e-3
    assert sorted(_draw_distinct(rng, new, tokens, 5, blocked)) == sorted(weight)   # k >= allowed


def test_shortest_paths_are_all_the_shortest_paths():
    from megaproc.synthetic.graph_construction import (build_lookahead_graph, distances_to,
                                                       shortest_paths)

    rng = random.Random(3)
    for trial in range(300):
        children, parents, goal = build_lookahead_graph(rng, trial % 6, 20, 20)
        distance, order = distances_to(goal, parents)
        found = shortest_paths(children, distance, order, 0, limit=10 ** 6)
        every, stack = [], [[0]]                      # brute force: every start -> goal path
        while stack:
            path = stack.pop()
            if path[-1] == goal:
                every.append(path)
                continue
            stack.extend(path + [c] for c in children[path[-1]])
        shortest = min(map(len, every))
        assert sorted(found) == sorted(p for p in every if len(p) == shortest)
        assert all(len(p) - 1 == distance[0] for p in found)
